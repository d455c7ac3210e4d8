"""Worker drain: SIGTERM (what `docker stop` and Kubernetes send at scale-in) in the middle of a batch.

A real `hark worker` on the real Redis takes a batch that runs for seconds; SIGTERM goes to its main process
only, as a container runtime sends it. Celery's warm shutdown must finish that batch and acknowledge it, leave
the batch it had not started in the queue, and exit; nothing waits for the visibility timeout, no delivery is
counted twice (the poison limit), and a second worker finishes the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hark.settings import Settings
from hark.workers.app import QUEUE
from hark.workers.ingest import Item
from hark.workers.submit import submit_job, wait_for

redis = pytest.importorskip("redis")
sf = pytest.importorskip("soundfile")

BROKER = "redis://127.0.0.1:6379/10"
# kombu's Redis transport keeps every delivered, unacknowledged message in this hash (Channel.unacked_key).
UNACKED = "unacked"
FILES_PER_BATCH = 4
SECONDS_PER_FILE = 240.0


@pytest.fixture
def broker() -> redis.Redis:
    client = redis.Redis.from_url(BROKER)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (start it: redis-server --daemonize yes)")
    yield client
    client.flushdb()


@pytest.fixture
def long_files(tmp_path) -> list[str]:
    """Two batches of distinct long recordings: the first keeps a worker busy for seconds."""
    rng = np.random.default_rng(16)
    sr = 32000
    paths = []
    for i in range(2 * FILES_PER_BATCH):
        wave = (0.1 * rng.standard_normal(int(SECONDS_PER_FILE * sr))).astype(np.float32)
        path = tmp_path / "audio" / f"long-{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, wave, sr, subtype="PCM_16")
        paths.append(str(path))
    return paths


def _settings(tmp_path: Path) -> Settings:
    env = {"HARK_BROKER_URL": BROKER, "HARK_QDRANT_PATH": str(tmp_path / "qdrant"),
           "HARK_STATE_DIR": str(tmp_path / "state"), "HARK_DEVICE": "cpu",
           "HARK_BATCH_FILES": str(FILES_PER_BATCH), "HARK_MAX_DELIVERIES": "1"}
    return Settings.load(toml_path=tmp_path / "none.toml", env=env)


def _start_worker(settings: Settings, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HARK_BROKER_URL": BROKER, "HARK_QDRANT_PATH": settings.qdrant_path,
           "HARK_STATE_DIR": settings.state_dir, "HARK_DEVICE": "cpu", "HARK_ORT_THREADS": "1",
           # A long visibility timeout: a batch handed back only after it would make this test time out.
           "HARK_VISIBILITY_TIMEOUT": "3600", "HARK_MAX_DELIVERIES": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "hark.cli", "worker", "--loglevel", "INFO"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_sigterm_mid_batch_finishes_the_batch_and_hands_back_the_rest(bundle_dir, broker, long_files, tmp_path):
    settings = _settings(tmp_path)
    log = tmp_path / "worker.log"
    first = _start_worker(settings, log)
    try:
        job, store = submit_job(settings, [Item(p) for p in long_files], "audio", str(bundle_dir))
        # The worker has taken the first batch once its message is in the unacked hash.
        _wait(lambda: broker.hlen(UNACKED) == 1, 120, "the worker to take a batch")
        taken = time.monotonic()
        time.sleep(0.5)  # inside the batch: loading the bundle and embedding 4 x 4 min of audio takes seconds
        assert store.status(job)["pending"] == len(long_files), "the batch ended before SIGTERM: make it longer"
        signalled = time.monotonic()
        first.send_signal(signal.SIGTERM)  # the main process only, as docker stop / the kubelet do
        code = first.wait(timeout=300)
        drained_in = time.monotonic() - signalled
    finally:
        _stop(first)
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "warm shutdown" in text.lower(), text[-3000:]
    status = store.status(job)
    # The batch that was running finished and was acknowledged: its files are stored, nothing is in flight.
    assert status["ingested"] == FILES_PER_BATCH and status["failed"] == 0, status
    assert broker.hlen(UNACKED) == 0, "a message is left unacknowledged: it would wait for the visibility timeout"
    # The batch it had not started is still queued, for the next worker, at once.
    assert broker.llen(QUEUE) == 1
    assert drained_in < 300
    print(f"SIGTERM {signalled - taken:.1f} s after the batch was taken; the worker finished it and exited "
          f"{drained_in:.1f} s later")

    # A new worker finishes the job; no message was delivered twice, so none is poison (max deliveries is 1).
    second = _start_worker(settings, log)
    try:
        final = wait_for(store, job, timeout=300)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(timeout=60)
        finally:
            _stop(second)
    assert final["ingested"] == len(long_files) and final["failed"] == 0, final
    assert store.dead_letters() == []
    deliveries = [int(broker.get(k)) for k in broker.scan_iter("hark:deliveries:*")]
    assert deliveries == [1, 1], deliveries
