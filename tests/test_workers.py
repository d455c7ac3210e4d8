"""Ingestion: embedded mode, a real Celery worker on the real Redis, crash safety, Qdrant outages."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hark.demo.synth import make_clip, write_audio
from hark.settings import Settings
from hark.workers.ingest import Item, collect_files, split_windows
from hark.workers.jobs import FileJobStore, RedisJobStore
from hark.workers.submit import submit_job, wait_for

REDIS = "redis://127.0.0.1:6379"


def _redis_db(n: int) -> str:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(f"{REDIS}/{n}").flushdb()
    except redis.exceptions.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (start it: redis-server --daemonize yes)")
    return f"{REDIS}/{n}"


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory):
    """Valid clips in several formats/rates/channels, one long recording, and every kind of broken file."""
    root = tmp_path_factory.mktemp("incoming")
    rng = np.random.default_rng(5)
    valid = {}
    specs = [("wav", 32000, 1, 4.0), ("flac", 44100, 2, 12.0), ("ogg", 22050, 1, 7.5), ("mp3", 48000, 2, 9.0),
             ("wav", 8000, 2, 3.0), ("flac", 16000, 1, 14.0), ("mp3", 44100, 1, 11.0), ("ogg", 48000, 2, 5.0)]
    for i, (fmt, sr, ch, dur) in enumerate(specs):
        audio, _ = make_clip(rng, dur, 32000)
        path = write_audio(root / f"clip {i:02d}.{fmt}", audio, 32000, ch)
        if sr != 32000:
            import soxr

            path = write_audio(root / f"clip {i:02d}.{fmt}", soxr.resample(audio, 32000, sr).astype(np.float32), sr,
                               ch)
        valid[path.name] = dur
    long_audio, _ = make_clip(rng, 75.0, 32000)
    valid[write_audio(root / "field recording.flac", long_audio, 32000, 1).name] = 75.0
    sub = root / "nested"
    sub.mkdir()
    audio, _ = make_clip(rng, 6.0, 32000)
    nested = write_audio(sub / "deep.wav", audio, 32000, 1)
    # Broken files: each must be reported with a reason, none may crash a batch.
    (root / "empty.wav").write_bytes(b"")
    (root / "corrupt.flac").write_bytes(rng.bytes(5000))
    (root / "notes.wav").write_text("this is a text file, not audio\n" * 20)
    write_audio(root / "silence0.wav", np.zeros(0, np.float32), 32000, 1)
    full = write_audio(root / "to-truncate.mp3", make_clip(rng, 8.0, 32000)[0], 32000, 1)
    data = full.read_bytes()
    (root / "truncated.mp3").write_bytes(data[: len(data) // 3])
    full.unlink()
    broken = {"empty.wav", "corrupt.flac", "notes.wav", "silence0.wav", "truncated.mp3"}
    return {"root": root, "valid": valid, "broken": broken, "nested": nested}


def expected_windows(duration: float, window: float = 30.0) -> int:
    samples, win = round(duration * 32000), round(window * 32000)
    return len(split_windows(np.zeros(samples, np.float32), win, 32000))


def settings_for(tmp_path: Path, **extra) -> Settings:
    env = {"HARK_QDRANT_PATH": str(tmp_path / "qdrant"), "HARK_STATE_DIR": str(tmp_path / "state"),
           "HARK_DEVICE": "cpu", "HARK_BATCH_FILES": "3", "HARK_RETRY_BACKOFF": "0.2", "HARK_MAX_RETRIES": "6"}
    env.update({k: str(v) for k, v in extra.items()})
    return Settings.load(toml_path=tmp_path / "none.toml", env=env)


def read_points(settings: Settings, collection: str = "audio") -> dict[str, dict]:
    from hark.store import connect, resolve_collection

    client = connect(settings)
    try:
        physical = resolve_collection(client, collection)
        points, offset = [], None
        while True:
            batch, offset = client.scroll(physical, limit=256, offset=offset, with_payload=True, with_vectors=True)
            points.extend(batch)
            if offset is None:
                break
        return {str(p.id): {"payload": p.payload, "vector": p.vector} for p in points}
    finally:
        client.close()


def ingest_embedded(settings: Settings, folder: Path, bundle: Path, recursive: bool = True, meta=None):
    files = collect_files([folder], recursive=recursive)
    job, store = submit_job(settings, [Item(f, meta or {}) for f in files], "audio", str(bundle))
    return wait_for(store, job, timeout=5)


def test_collect_files_and_windows(audio_folder):
    flat = collect_files([audio_folder["root"]])
    deep = collect_files([audio_folder["root"]], recursive=True)
    assert str(audio_folder["nested"]) in deep and str(audio_folder["nested"]) not in flat
    # A missing name is kept (it becomes a failed file with its reason), it no longer aborts the listing.
    missing = audio_folder["root"] / "missing.wav"
    assert collect_files([missing, audio_folder["nested"]]) == [str(missing), str(audio_folder["nested"])]
    # 75 s in 30 s windows: 0-30, 30-60, 60-75; a tail under a second is dropped, a short file is kept.
    assert [o for o, _ in split_windows(np.zeros(75 * 10), 300, 10)] == [0, 300, 600]
    assert len(split_windows(np.zeros(605), 300, 10)) == 2
    assert len(split_windows(np.zeros(5), 300, 10)) == 1


def test_embedded_ingest_stores_every_valid_file_once(audio_folder, bundle_dir, tmp_path):
    settings = settings_for(tmp_path)
    status = ingest_embedded(settings, audio_folder["root"], bundle_dir, meta={"batch": "first", "n": 3})
    valid, broken = audio_folder["valid"], audio_folder["broken"]
    assert status["ingested"] == len(valid) + 1  # plus the nested clip
    assert status["failed"] == len(broken) and status["pending"] == 0
    assert {Path(p).name for p in status["failures"]} == broken
    reasons = {Path(p).name: r for p, r in status["failures"].items()}
    assert "empty" in reasons["empty.wav"]
    assert "text" in reasons["notes.wav"]
    assert "truncated" in reasons["truncated.mp3"] or "short" in reasons["truncated.mp3"]
    points = read_points(settings)
    expected = sum(expected_windows(d) for d in valid.values()) + 1
    assert len(points) == expected
    by_file: dict[str, list[dict]] = {}
    for point in points.values():
        by_file.setdefault(point["payload"]["file_name"], []).append(point["payload"])
    long_windows = sorted(by_file["field recording.flac"], key=lambda p: p["window_index"])
    assert [p["window_offset"] for p in long_windows] == [0.0, 30.0, 60.0]
    assert long_windows[-1]["window_duration"] == pytest.approx(15.0, abs=0.01)
    for name, duration in valid.items():
        payload = by_file[name][0]
        assert payload["duration"] == pytest.approx(duration, abs=0.05), name
        assert payload["meta"] == {"batch": "first", "n": 3}
        assert payload["model_version"] == json.loads((bundle_dir / "manifest.json").read_text())["model"]["version"]
        assert Path(payload["source_uri"]).is_absolute() and len(payload["content_hash"]) == 64
    vector = next(iter(points.values()))["vector"]
    assert set(vector) == {"global", "tokens", "moments"} and abs(np.linalg.norm(vector["global"]) - 1) < 1e-3
    # Moments: one stored row per 2 s sub-window of the window, one byte per value (uint8 storage).
    for point in points.values():
        rows = np.asarray(point["vector"]["moments"])
        assert len(rows) == math.ceil(point["payload"]["window_duration"] / 2.0 - 1e-6)
        assert rows.min() >= 0 and rows.max() <= 255 and np.array_equal(rows, np.rint(rows))
    # Every failure is in the dead-letter list with its reason.
    dead = FileJobStore(settings.state_dir).dead_letters()
    assert {Path(e["path"]).name for e in dead} == broken

    # Re-ingesting leaves the points untouched and reports duplicates.
    again = ingest_embedded(settings, audio_folder["root"], bundle_dir)
    assert again["duplicate"] == len(valid) + 1 and again["ingested"] == 0
    assert read_points(settings).keys() == points.keys()
    assert len(FileJobStore(settings.state_dir).dead_letters()) == len(broken)


class Worker:
    """A real `hark worker` subprocess in its own process group."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "hark.cli", "worker", "--loglevel", "INFO"],
                                     env={**os.environ, **env}, stdout=open(log, "ab"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def worker_env(settings: Settings, broker: str, **extra) -> dict[str, str]:
    env = {"HARK_BROKER_URL": broker, "HARK_QDRANT_PATH": settings.qdrant_path, "HARK_DEVICE": "cpu",
           "HARK_BATCH_FILES": str(settings.batch_files), "HARK_RETRY_BACKOFF": "0.3", "HARK_MAX_RETRIES": "8",
           "HARK_VISIBILITY_TIMEOUT": "5", "PYTHONUNBUFFERED": "1"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def test_celery_worker_on_redis_matches_embedded_mode(audio_folder, bundle_dir, tmp_path):
    broker = _redis_db(11)
    embedded = settings_for(tmp_path / "embedded")
    ingest_embedded(embedded, audio_folder["root"], bundle_dir)
    reference = read_points(embedded)

    settings = settings_for(tmp_path / "celery", HARK_BROKER_URL=broker)
    worker = Worker(worker_env(settings, broker), tmp_path / "worker.log")
    try:
        files = collect_files([audio_folder["root"]], recursive=True)
        job, store = submit_job(settings, [Item(f) for f in files], "audio", str(bundle_dir))
        assert isinstance(store, RedisJobStore)
        status = wait_for(store, job, timeout=120)
    finally:
        worker.stop()
    assert status["ingested"] == len(audio_folder["valid"]) + 1 and status["failed"] == len(audio_folder["broken"])
    points = read_points(settings)
    assert points.keys() == reference.keys()
    for pid, point in points.items():
        ref = reference[pid]
        strip = lambda p: {k: v for k, v in p.items() if k not in {"ingested_at", "job"}}  # noqa: E731
        assert strip(point["payload"]) == strip(ref["payload"])
        np.testing.assert_allclose(point["vector"]["global"], ref["vector"]["global"], atol=1e-5)
    assert {Path(e["path"]).name for e in store.dead_letters()} == audio_folder["broken"]


def test_sigkilled_worker_loses_nothing(audio_folder, bundle_dir, tmp_path):
    broker = _redis_db(12)
    settings = settings_for(tmp_path, HARK_BROKER_URL=broker, HARK_BATCH_FILES=2)
    files = [f for f in collect_files([audio_folder["root"]], recursive=True)
             if Path(f).name not in audio_folder["broken"]]
    log = tmp_path / "worker.log"
    first = Worker(worker_env(settings, broker, HARK_BATCH_FILES=2), log)
    job, store = submit_job(settings, [Item(f) for f in files], "audio", str(bundle_dir))
    deadline = time.monotonic() + 120
    while True:  # kill as soon as one batch is through, i.e. in the middle of a later one
        status = store.status(job)
        if status["ingested"] >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    first.kill()
    killed_at = store.status(job)
    assert 0 < killed_at["ingested"] < len(files), killed_at
    second = Worker(worker_env(settings, broker, HARK_BATCH_FILES=2), log)
    try:
        status = wait_for(store, job, timeout=120)
    finally:
        second.stop()
    assert status["ingested"] == len(files) and status["failed"] == 0
    points = read_points(settings)
    expected = sum(expected_windows(d) for d in audio_folder["valid"].values()) + 1
    assert len(points) == expected
    per_file = {}
    for point in points.values():
        key = (point["payload"]["content_hash"], point["payload"]["window_index"])
        assert key not in per_file, "a window stored twice"
        per_file[key] = point
    assert len({p["payload"]["source_uri"] for p in points.values()}) == len(files)


def test_qdrant_outage_is_retried_until_it_returns(audio_folder, bundle_dir, tmp_path):
    from hark.store import StoreUnavailableError, connect

    broker = _redis_db(13)
    settings = settings_for(tmp_path, HARK_BROKER_URL=broker)
    files = collect_files([audio_folder["root"]])[:4]
    # Holding the embedded folder makes Qdrant unavailable to the worker.
    holder = connect(settings)
    with pytest.raises(StoreUnavailableError, match="in use by another process"):
        connect(settings)
    log = tmp_path / "worker.log"
    worker = Worker(worker_env(settings, broker), log)
    try:
        job, store = submit_job(settings, [Item(f) for f in files], "audio", str(bundle_dir))
        deadline = time.monotonic() + 60
        while "retry" not in log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.status(job)["pending"] == len(files)
        holder.close()
        status = wait_for(store, job, timeout=120)
    finally:
        worker.stop()
    assert "Qdrant" in log.read_text(errors="replace") or "in use" in log.read_text(errors="replace")
    assert status["pending"] == 0 and status["ingested"] + status["failed"] == len(files)
    assert status["ingested"] == sum(Path(f).name not in audio_folder["broken"] for f in files)


def test_poison_messages_are_dead_lettered(bundle_dir, tmp_path):
    """A message that keeps dying is dead-lettered after max deliveries instead of looping forever."""
    from hark.workers.app import make_app

    broker = _redis_db(14)
    settings = settings_for(tmp_path, HARK_BROKER_URL=broker, HARK_MAX_DELIVERIES=2)
    app = make_app(settings)
    store = RedisJobStore(broker)
    store.create("poisonjob", "audio", 1, str(bundle_dir))
    task = app.ingest_batch
    items = [{"path": str(tmp_path / "whatever.wav"), "meta": {}}]
    # Simulate two earlier deliveries of the same attempt that never finished (the worker died each time).
    store.count_delivery("tid-1:0")
    store.count_delivery("tid-1:0")
    result = task.apply(args=("poisonjob", items, "audio", str(bundle_dir)), task_id="tid-1")
    assert result.get()["poison"] is True
    status = store.status("poisonjob")
    assert status["failed"] == 1 and "poison" in next(iter(status["failures"].values()))
    assert any("poison" in e["reason"] for e in store.dead_letters())


def test_a_batch_past_its_time_limit_is_dead_lettered_before_redis_redelivers_it(bundle_dir, tmp_path, monkeypatch):
    """Without a time limit a batch running past the visibility timeout was delivered again while it ran, and
    dead-lettered as poison at the count. The soft limit (90% of the timeout) ends it first: its files are
    dead-lettered with the reason, not retried."""
    from billiard.exceptions import SoftTimeLimitExceeded

    from hark.workers import app as worker_app

    broker = _redis_db(14)
    settings = settings_for(tmp_path, HARK_BROKER_URL=broker, HARK_VISIBILITY_TIMEOUT=600)
    app = worker_app.make_app(settings)
    assert (app.conf.task_soft_time_limit, app.conf.task_time_limit) == (540, 595)

    def too_long(*_args, **_kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(worker_app, "process_batch", too_long)
    store = RedisJobStore(broker)
    store.create("slowjob", "audio", 1, str(bundle_dir))
    items = [{"path": str(tmp_path / "long.wav"), "meta": {}}]
    result = app.ingest_batch.apply(args=("slowjob", items, "audio", str(bundle_dir)), task_id="tid-slow")
    assert result.get()["failed"] is True and app.ingest_batch.request.retries == 0
    status = store.status("slowjob")
    assert status["state"] == "done" and "SoftTimeLimitExceeded" in status["failures"][str(tmp_path / "long.wav")]
    assert any("SoftTimeLimitExceeded" in e["reason"] for e in store.dead_letters())


def test_second_process_on_the_embedded_folder_gets_a_clear_error(audio_folder, bundle_dir, tmp_path, capsys,
                                                                  monkeypatch):
    from hark.cli import main
    from hark.store import connect

    settings = settings_for(tmp_path)
    for key, value in {"HARK_QDRANT_PATH": settings.qdrant_path, "HARK_STATE_DIR": settings.state_dir}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HARK_BROKER_URL", raising=False)
    holder = connect(settings)
    try:
        code = main(["ingest", str(audio_folder["nested"]), "--bundle", str(bundle_dir), "--quiet"])
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "in use by another process" in err and "Traceback" not in err
    # Without a broker there is nothing for `hark worker` to consume.
    assert main(["worker"]) == 2
    assert "HARK_BROKER_URL is not set" in capsys.readouterr().err


def test_a_broker_that_refuses_a_batch_midway_leaves_a_job_that_finishes(tmp_path, monkeypatch):
    """Files of batches never queued get a failed outcome and a dead letter: the job used to count them and wait
    for them forever (a re-index never finished)."""
    from celery import Celery

    from hark.workers.submit import submit_job

    broker = _redis_db(14)
    settings = settings_for(tmp_path, HARK_BROKER_URL=broker, HARK_BATCH_FILES=2)
    sent = []

    def flaky(self, name, args=None, **_kwargs):
        if sent:
            raise ConnectionError("broker went away")
        sent.append(args)

    monkeypatch.setattr(Celery, "send_task", flaky)
    created = []
    items = [Item(str(tmp_path / f"f{i}.wav")) for i in range(5)]
    with pytest.raises(ConnectionError):
        submit_job(settings, items, "audio", "bundle", on_created=created.append)
    store = RedisJobStore(broker)
    status = store.status(created[0])
    assert len(sent) == 1 and status["total"] == 5 and status["failed"] == 3 and status["pending"] == 2
    assert all("not queued" in reason for reason in status["failures"].values())
    assert sorted(e["path"] for e in store.dead_letters()) == [str(tmp_path / f"f{i}.wav") for i in (2, 3, 4)]


def test_a_file_rewritten_while_it_is_ingested_is_not_stored_under_the_old_bytes_ids(audio_folder, bundle_dir,
                                                                                   tmp_path):
    """Point ids come from the bytes hashed before decoding; a file replaced (or still growing) by the time it is
    decoded used to be stored with the new audio's vectors under the old bytes' ids."""
    import shutil

    from hark.sources import local_copy
    from hark.store import connect
    from hark.workers.ingest import ingestor_for

    settings = settings_for(tmp_path)
    ingestor = ingestor_for(str(bundle_dir), settings)
    path = tmp_path / "growing.wav"
    shutil.copy(audio_folder["root"] / "clip 00.wav", path)
    client = connect(settings)
    try:
        physical = ingestor.target(client, "audio")
        with local_copy(path) as copy:
            shutil.copy(audio_folder["nested"], path)  # another recording lands on the same name
            outcome = ingestor.write_file(Item(str(path)), copy, client, physical)
        assert outcome.status == "failed" and "changed while it was ingested" in outcome.reason
        assert client.count(physical, exact=True).count == 0
        with local_copy(path) as copy:
            assert ingestor.write_file(Item(str(path)), copy, client, physical).status == "ingested"
    finally:
        client.close()
