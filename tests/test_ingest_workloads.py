"""Ingestion for real workloads (issue 13): remote sources, broken names, truncation, duplicates, bounded
memory, sticky rollbacks. Uses an untrained tiny bundle (exported in ~20 s, no training run)."""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hark.demo.synth import make_clip, write_audio
from hark.settings import Settings
from hark.workers.ingest import Item, collect_files
from hark.workers.submit import submit_job, wait_for

ROOT = Path(__file__).resolve().parents[1]


def export_untrained(out: Path, seed: int) -> Path:
    """A tiny bundle with random weights (in a subprocess: torch stays out of this process)."""
    code = f"""
import torch
from pathlib import Path
from hark.exporters.onnx_export import export_bundle
from hark.text import train_bpe_tokenizer
from hark.training.config import load_config
from hark.training.model import RetrievalModel
torch.manual_seed({seed})
model = RetrievalModel(load_config("tiny", []), train_bpe_tokenizer(["a dog barks", "rain on a roof"] * 10, 300))
out = Path({str(out)!r}); out.mkdir(parents=True, exist_ok=True)
torch.save(model.eval().checkpoint_payload(), out / "model.pt")
export_bundle(out / "model.pt", out / "bundle", precision="fp32")
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    return out / "bundle"


@pytest.fixture(scope="session")
def fast_bundle(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    return export_untrained(tmp_path_factory.mktemp("fast-bundle"), seed=0)


def settings_for(tmp: Path, **extra) -> Settings:
    env = {"HARK_QDRANT_PATH": str(tmp / "qdrant"), "HARK_STATE_DIR": str(tmp / "state"), "HARK_DEVICE": "cpu",
           "HARK_MODELS_DIR": str(tmp / "models"), "HARK_BATCH_FILES": "4"}
    env.update({k: str(v) for k, v in extra.items()})
    return Settings.load(toml_path=tmp / "none.toml", env=env)


def ingest(settings: Settings, sources, bundle: Path, collection: str = "audio") -> dict:
    job, store = submit_job(settings, [Item(str(s)) for s in sources], collection, str(bundle))
    return wait_for(store, job, timeout=10)


def points(settings: Settings, collection: str = "audio") -> list:
    from hark.store import connect, resolve_collection

    client = connect(settings)
    try:
        found, _ = client.scroll(resolve_collection(client, collection), limit=1000, with_payload=True)
        return found
    finally:
        client.close()


def clip(path: Path, seconds: float, seed: int, rate: int = 32000) -> Path:
    audio, _ = make_clip(np.random.default_rng(seed), seconds, rate)
    return write_audio(path, audio, rate, 1)


# -- sources --------------------------------------------------------------------------------------------------

@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_sources_are_ingested_and_a_missing_one_fails_alone(http_root, fast_bundle, tmp_path):
    pytest.importorskip("aiohttp")
    root, base = http_root
    clip(root / "a.wav", 4.0, 1)
    clip(root / "b.flac", 6.0, 2)
    settings = settings_for(tmp_path)
    status = ingest(settings, [f"{base}/a.wav", f"{base}/b.flac", f"{base}/gone.wav"], fast_bundle)
    assert status["ingested"] == 2 and status["failed"] == 1, status
    assert "not found" in status["failures"][f"{base}/gone.wav"].lower()
    stored = {p.payload["source_uri"]: p.payload for p in points(settings)}
    assert set(stored) == {f"{base}/a.wav", f"{base}/b.flac"}
    assert stored[f"{base}/b.flac"]["file_name"] == "b.flac"
    assert stored[f"{base}/b.flac"]["duration"] == pytest.approx(6.0, abs=0.01)
    # The same bytes from a local path are a duplicate of the URI (ids come from the content).
    again = ingest(settings, [root / "a.wav"], fast_bundle)
    assert again["duplicate"] == 1
    assert again["duplicates"][str((root / "a.wav").resolve())] == f"duplicate of {base}/a.wav"


def test_remote_source_over_the_spool_limit_fails_alone_and_leaves_no_copy(http_root, fast_bundle, tmp_path,
                                                                          monkeypatch):
    pytest.importorskip("aiohttp")
    import tempfile

    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    root, base = http_root
    clip(root / "short.wav", 2.0, 1)  # 128 KB
    clip(root / "long.wav", 20.0, 2)  # 1.28 MB
    settings = settings_for(tmp_path, HARK_MAX_SPOOL_MB=0.5)
    status = ingest(settings, [f"{base}/short.wav", f"{base}/long.wav"], fast_bundle)
    assert status["ingested"] == 1 and status["failed"] == 1, status
    assert "spool limit" in status["failures"][f"{base}/long.wav"]
    assert list(spool.iterdir()) == []


def test_sweep_removes_only_this_hosts_copies_of_processes_that_are_gone(tmp_path):
    from hark.sources import SPOOL_PREFIX, _host, sweep_spool

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = _host()
        dead_copy = tmp_path / f"{SPOOL_PREFIX}{host}-{gone.stdout.strip()}-abc.wav"
        live_copy = tmp_path / f"{SPOOL_PREFIX}{host}-{alive.pid}-def.wav"
        own_copy = tmp_path / f"{SPOOL_PREFIX}{host}-{os.getpid()}-ghi.wav"
        other_host = tmp_path / f"{SPOOL_PREFIX}elsewhere-{gone.stdout.strip()}-jkl.wav"
        unrelated = tmp_path / "hark-notes.txt"
        for path in (dead_copy, live_copy, own_copy, other_host, unrelated):
            path.write_bytes(b"x")
        assert sweep_spool(str(tmp_path)) == [dead_copy]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            p.name for p in (live_copy, own_copy, other_host, unrelated))
    finally:
        alive.kill()
        alive.wait()


@pytest.fixture
def s3_bucket(monkeypatch):
    """moto's standalone S3 server on 127.0.0.1 with a bucket; credentials from the standard environment."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                       "AWS_ENDPOINT_URL_S3": endpoint}.items():
        monkeypatch.setenv(key, value)
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="sounds")
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    yield s3
    server.stop()


def test_s3_prefix_is_listed_and_ingested(s3_bucket, fast_bundle, tmp_path):
    local = tmp_path / "up"
    local.mkdir()
    for i, name in enumerate(["field/a.wav", "field/deep/b.ogg", "field/notes.txt"]):
        path = local / name.replace("/", "_")
        if name.endswith(".txt"):
            path.write_text("not audio")
        else:
            clip(path, 3.0 + i, 10 + i)
        s3_bucket.upload_file(str(path), "sounds", name)
    assert collect_files(["s3://sounds/field"]) == ["s3://sounds/field/a.wav"]
    listed = collect_files(["s3://sounds/field"], recursive=True)
    assert listed == ["s3://sounds/field/a.wav", "s3://sounds/field/deep/b.ogg"]
    settings = settings_for(tmp_path)
    status = ingest(settings, [*listed, "s3://sounds/field/missing.wav", "s3://nobucket/x.wav"], fast_bundle)
    assert status["ingested"] == 2 and status["failed"] == 2, status
    assert {p.payload["source_uri"] for p in points(settings)} == set(listed)


def test_broken_symlink_is_a_failed_file_and_the_rest_go_on(fast_bundle, tmp_path, capsys, monkeypatch):
    from hark.cli import main

    good = clip(tmp_path / "good.wav", 3.0, 3)
    link = tmp_path / "link.wav"
    link.symlink_to(tmp_path / "vanished.wav")
    settings = settings_for(tmp_path)
    for key in ("HARK_QDRANT_PATH", "HARK_STATE_DIR", "HARK_MODELS_DIR"):
        monkeypatch.setenv(key, getattr(settings, key[5:].lower()))
    monkeypatch.delenv("HARK_BROKER_URL", raising=False)
    code = main(["ingest", str(good), str(link), "--bundle", str(fast_bundle), "--quiet", "--json"])
    assert code == 1  # a failed file is an exit status a script can see (it was 0)
    status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status["ingested"] == 1 and status["failed"] == 1
    assert "broken symbolic link" in status["failures"][str(link)]
    # Inside a folder too: the link is listed and reported, not silently skipped.
    assert str(link) in collect_files([tmp_path])


def test_a_window_longer_than_the_bundle_takes_is_refused_before_queueing(fast_bundle, tmp_path, capsys,
                                                                          monkeypatch):
    """Every file of the job failed with it, one by one, onto the dead-letter list."""
    from hark.cli import main
    from hark.workers.jobs import job_store

    good = clip(tmp_path / "good.wav", 3.0, 3)
    settings = settings_for(tmp_path)
    for key in ("HARK_QDRANT_PATH", "HARK_STATE_DIR", "HARK_MODELS_DIR"):
        monkeypatch.setenv(key, getattr(settings, key[5:].lower()))
    monkeypatch.delenv("HARK_BROKER_URL", raising=False)
    monkeypatch.setenv("HARK_WINDOW_SECONDS", "3600")
    code = main(["ingest", str(good), "--bundle", str(fast_bundle), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "HARK_WINDOW_SECONDS=3600 is longer than the bundle's window" in err, err
    assert job_store(settings).jobs() == [] and job_store(settings).dead_letters() == []


def test_pipes_and_devices_fail_at_once_and_the_rest_go_on(fast_bundle, tmp_path):
    """A named pipe (no writer) and /dev/zero hung `hark ingest`: hashing the file never ended."""
    import os
    import threading

    good = clip(tmp_path / "good.wav", 3.0, 3)
    fifo = tmp_path / "live.wav"
    os.mkfifo(fifo)
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(
        ingest(settings_for(tmp_path), [good, fifo, "/dev/zero"], fast_bundle)), daemon=True)
    worker.start()
    worker.join(120)
    assert outcome, "ingest still running after 120 s"
    status = outcome[0]
    assert status["ingested"] == 1 and status["failed"] == 2, status
    assert "named pipe" in status["failures"][str(fifo)] and "device" in status["failures"]["/dev/zero"]


# -- decoding -------------------------------------------------------------------------------------------------

def _write_opus(path: Path, seconds: float) -> Path:
    import av

    rate = 48000
    audio, _ = make_clip(np.random.default_rng(4), seconds, rate)
    with av.open(str(path), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=rate, layout="mono")
        for start in range(0, len(audio), 960):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, start:start + 960]),
                                               format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.mark.parametrize("kind", ["ogg", "opus", "flac", "mp3", "wav"])
def test_truncated_files_are_reported_as_truncated(kind, fast_bundle, tmp_path):
    from hark.audio import AudioDecodeError, decode_audio

    full = tmp_path / f"full.{kind}"
    if kind == "opus":
        _write_opus(full, 11.0)
    else:
        audio, _ = make_clip(np.random.default_rng(5), 11.0, 32000)
        sf.write(full, audio, 32000, format=kind.upper())
    assert len(decode_audio(full)) == pytest.approx(11.0 * 32000, rel=0.02)
    cut = tmp_path / f"cut.{kind}"
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.3)])
    with pytest.raises(AudioDecodeError, match="truncated"):
        decode_audio(cut)
    settings = settings_for(tmp_path)
    status = ingest(settings, [cut, full], fast_bundle)
    assert status["ingested"] == 1 and "truncated" in status["failures"][str(cut)]
    # Nothing of the truncated file is stored (its first windows were written before the cut was found).
    assert {p.payload["file_name"] for p in points(settings)} == {full.name}


def test_ogg_cut_at_a_page_boundary_is_truncated(tmp_path):
    from hark.audio import AudioDecodeError, decode_audio

    full = tmp_path / "full.ogg"
    sf.write(full, make_clip(np.random.default_rng(6), 8.0, 32000)[0], 32000, format="OGG")
    data = full.read_bytes()
    last_page = data.rfind(b"OggS")
    (tmp_path / "cut.ogg").write_bytes(data[:last_page])  # whole pages, but no end-of-stream page
    with pytest.raises(AudioDecodeError, match="end-of-stream"):
        decode_audio(tmp_path / "cut.ogg")


# -- duplicates -----------------------------------------------------------------------------------------------

def test_second_name_is_a_duplicate_of_the_first_and_recorded(fast_bundle, tmp_path):
    first = clip(tmp_path / "first.wav", 40.0, 7)
    second = tmp_path / "second.wav"
    second.write_bytes(first.read_bytes())
    settings = settings_for(tmp_path)
    status = ingest(settings, [first, second], fast_bundle)
    assert status["ingested"] == 1 and status["duplicate"] == 1
    assert status["duplicates"] == {str(second): f"duplicate of {first}"}
    third = tmp_path / "third.wav"
    third.write_bytes(first.read_bytes())
    ingest(settings, [third, first], fast_bundle)  # the first name again adds nothing
    stored = points(settings)
    assert len(stored) == 2  # 40 s: two windows
    for p in stored:
        assert p.payload["source_uri"] == str(first)
        assert p.payload["sources"] == [str(first), str(second), str(third)]
        assert p.payload["windows"] == 2 and p.payload["duration"] == pytest.approx(40.0)


def test_names_recorded_at_the_same_moment_are_all_kept(fast_bundle, tmp_path, monkeypatch):
    """Two duplicates of stored content, each read before the other wrote: the second list written replaced the
    first, and one name was lost."""
    from hark.workers.ingest import Ingestor, names_of

    first = clip(tmp_path / "first.wav", 12.0, 8)
    settings = settings_for(tmp_path)
    ingest(settings, [first], fast_bundle)
    copies = []
    for name in ("second.wav", "third.wav"):
        copies.append(tmp_path / name)
        copies[-1].write_bytes(first.read_bytes())
    real = Ingestor._stored
    seen: dict = {}

    def stale(client, physical, digest):  # every caller gets the payload as it was before either wrote
        if digest not in seen:
            seen[digest] = real(client, physical, digest)
        return seen[digest]

    monkeypatch.setattr(Ingestor, "_stored", staticmethod(stale))
    status = ingest(settings, copies, fast_bundle)
    assert status["duplicate"] == 2
    monkeypatch.setattr(Ingestor, "_stored", staticmethod(real))
    for p in points(settings):
        assert names_of(p.payload) == [str(first), *map(str, copies)]
        assert p.payload["sources"] == [str(first), *map(str, copies)]


def test_same_bytes_written_twice_at_once_keep_both_names(fast_bundle, tmp_path, monkeypatch):
    """Two workers that both found the content absent write it twice: the later upserts replaced the earlier
    writer's payload, and its name was gone although both files reported "ingested"."""
    from hark.workers.ingest import Ingestor, names_of

    first = clip(tmp_path / "a.wav", 40.0, 9)
    other = tmp_path / "b.wav"
    other.write_bytes(first.read_bytes())
    settings = settings_for(tmp_path)
    assert ingest(settings, [first], fast_bundle)["ingested"] == 1
    # The second worker checked before the first had finished: it saw nothing stored.
    monkeypatch.setattr(Ingestor, "_stored", staticmethod(lambda client, physical, digest: None))
    assert ingest(settings, [other], fast_bundle)["ingested"] == 1
    stored = points(settings)
    assert len(stored) == 2
    for p in stored:
        assert sorted(names_of(p.payload)) == sorted([str(first), str(other)])
        assert sorted(p.payload["sources"]) == sorted([str(first), str(other)])


# -- files whose ingestion never finished ---------------------------------------------------------------------

def test_windows_left_by_a_dead_ingestion_are_removed_by_the_next_embedded_job(fast_bundle, tmp_path, monkeypatch):
    """A process killed mid-file leaves windows without `windows`; they stayed searchable for good."""
    import time

    from hark.workers.ingest import Ingestor

    settings = settings_for(tmp_path)
    done = clip(tmp_path / "done.wav", 4.0, 3)
    ingest(settings, [done], fast_bundle)
    # Killed after writing the windows of a 40 s file, before marking it complete: nothing removed them.
    with monkeypatch.context() as patch:
        patch.setattr(Ingestor, "_discard", staticmethod(lambda *a, **k: None))
        patch.setattr("hark.sources.LocalCopy.changed", lambda self: True)
        ingest(settings, [clip(tmp_path / "killed.wav", 40.0, 4)], fast_bundle)
    left = [p for p in points(settings) if p.payload["file_name"] == "killed.wav"]
    assert len(left) == 2 and all("windows" not in p.payload for p in left)
    _user_point(settings)
    time.sleep(1.1)  # `ingested_at` has whole seconds: the next job begins a second later
    status = ingest(settings, [clip(tmp_path / "next.wav", 4.0, 5)], fast_bundle)
    assert status["ingested"] == 1
    names = sorted(p.payload.get("file_name", "user") for p in points(settings))
    assert names == ["done.wav", "next.wav", "user"]


def test_beat_tick_removes_windows_older_than_any_running_attempt(fast_bundle, tmp_path, monkeypatch):
    from qdrant_client import models

    from hark.store import connect, resolve_collection
    from hark.workers.ingest import Ingestor
    from hark.workers.reindex import run_tick

    settings = settings_for(tmp_path, HARK_VISIBILITY_TIMEOUT=600)
    ingest(settings, [clip(tmp_path / "done.wav", 4.0, 3)], fast_bundle)
    with monkeypatch.context() as patch:
        patch.setattr(Ingestor, "_discard", staticmethod(lambda *a, **k: None))
        patch.setattr("hark.sources.LocalCopy.changed", lambda self: True)
        ingest(settings, [clip(tmp_path / "killed.wav", 40.0, 4)], fast_bundle)
    client = connect(settings)
    try:
        physical = resolve_collection(client, "audio")
        name = models.FieldCondition(key="file_name", match=models.MatchValue(value="killed.wav"))
        killed = models.Filter(must=[name])
        # Written 14 minutes ago: within the visibility timeout and its grace (15 min), an attempt may still run.
        stamp = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=14)).isoformat(timespec="seconds")
        client.set_payload(physical, {"ingested_at": stamp}, points=killed, wait=True)
    finally:
        client.close()
    assert "swept" not in run_tick(settings)
    client = connect(settings)
    try:
        stamp = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=16)).isoformat(timespec="seconds")
        client.set_payload(physical, {"ingested_at": stamp}, points=killed, wait=True)
    finally:
        client.close()
    assert run_tick(settings)["swept"] == [f"{physical}: 2 windows"]
    assert sorted(p.payload["file_name"] for p in points(settings)) == ["done.wav"]


def test_a_batch_past_its_deadline_starts_no_further_file(fast_bundle, tmp_path, monkeypatch):
    """Celery's time limits hold only in the prefork pool: in the GPU worker's solo pool a slow batch ran past its
    visibility timeout, was delivered again to another worker and ran twice."""
    import time

    from hark.workers import ingest as ingesting
    from hark.workers.jobs import job_store

    class Clock:  # each file takes one second of this module's monotonic clock
        now = 0.0

        def monotonic(self) -> float:
            return self.now

        def __getattr__(self, name):
            return getattr(time, name)

    clock = Clock()
    real = ingesting.ingest_item

    def one_second(*args, **kwargs):
        clock.now += 1.0
        return real(*args, **kwargs)

    monkeypatch.setattr(ingesting, "time", clock)
    monkeypatch.setattr(ingesting, "ingest_item", one_second)
    settings = settings_for(tmp_path)
    files = [clip(tmp_path / f"{i}.wav", 2.0, 20 + i) for i in range(3)]
    store = job_store(settings)
    store.create("late", "audio", 3, str(fast_bundle))
    outcomes = ingesting.process_batch("late", [Item(str(f)) for f in files], "audio", str(fast_bundle), store,
                                       settings, deadline=0.5)
    assert [o.status for o in outcomes] == ["ingested", "failed", "failed"]
    status = store.status("late")
    assert status["ingested"] == 1 and status["failed"] == 2
    assert "time limit" in status["failures"][str(files[2])]
    assert sorted(e["path"] for e in store.dead_letters()) == [str(files[1]), str(files[2])]


def _user_point(settings: Settings) -> None:
    """A point written through the Qdrant API, without hark's payload: not hark's to remove."""
    from qdrant_client import models

    from hark.store import connect, resolve_collection

    client = connect(settings)
    try:
        physical = resolve_collection(client, "audio")
        found, _ = client.scroll(physical, limit=1, with_vectors=True)
        mine = models.PointStruct(id=424242, vector=found[0].vector, payload={"note": "mine"})
        client.upsert(physical, points=[mine])
    finally:
        client.close()


@pytest.mark.parametrize("backend", ["edge", "local"])
def test_sweep_removes_only_old_incomplete_hark_windows(backend, fast_bundle, tmp_path):
    from qdrant_client import QdrantClient, models

    from hark.bundle import Bundle
    from hark.store import ensure_collection
    from hark.store.edge import EdgeStore
    from hark.workers.ingest import sweep_all_incomplete

    client = EdgeStore(tmp_path / "edge") if backend == "edge" else QdrantClient(":memory:")
    try:
        bundle = Bundle.load(fast_bundle)
        physical = ensure_collection(client, "audio", bundle)
        info = client.get_collection(physical).config.params.vectors
        rng = np.random.default_rng(0)

        def vector() -> dict:
            out = {}
            for name, params in info.items():
                row = rng.standard_normal(params.size).tolist()
                out[name] = [row] if params.multivector_config is not None else row
            return out

        old, new = "2026-01-01T00:00:00+00:00", dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        hark = {"content_hash": "ab" * 32, "window_index": 0, "file_name": "x.wav"}
        payloads = {1: {**hark, "ingested_at": old},  # left by a dead worker: removed
                    2: {**hark, "ingested_at": new},  # being written now: kept
                    3: {**hark, "ingested_at": old, "windows": 1},  # complete: kept
                    4: {"ingested_at": old, "note": "a user's own point"},  # not hark's: kept
                    5: {**hark, "ingested_at": old, "job": "live"}}  # its job still runs (a long file): kept
        client.upsert(physical, points=[models.PointStruct(id=i, vector=vector(), payload=p)
                                        for i, p in payloads.items()])
        # Another application's collection on the same server: not hark's to sweep.
        client.create_collection("theirs", vectors_config=client.get_collection(physical).config.params.vectors)
        client.upsert("theirs", points=[models.PointStruct(id=1, vector=vector(), payload=payloads[1])])
        before = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        assert sweep_all_incomplete(client, before, running=lambda job: job == "live") == {physical: 1}
        found, _ = client.scroll(physical, limit=10)
        assert sorted(p.id for p in found) == [2, 3, 4, 5]
        assert client.count("theirs").count == 1
        assert sweep_all_incomplete(client, before, running=lambda job: job == "live") == {}
        assert sweep_all_incomplete(client, before) == {physical: 1}  # once that job is over
    finally:
        client.close()


# -- bounded memory -------------------------------------------------------------------------------------------

RSS_SCRIPT = """
import re, sys, time
from hark.settings import Settings
from hark.workers.ingest import Ingestor, Item
from hark.bundle import Bundle
path, bundle, qdrant = sys.argv[1:4]


def hwm():  # peak RSS of this process in KiB; unlike ru_maxrss it does not inherit the parent's peak at exec
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))


settings = Settings.load(toml_path=qdrant + '/none.toml', env={"HARK_QDRANT_PATH": qdrant, "HARK_DEVICE": "cpu"})
ingestor = Ingestor(Bundle.load(bundle), settings)
ingestor.ingest([Item("/dev/null")], "warm", settings)  # sessions loaded: the baseline
base = hwm()
t = time.time()
out = ingestor.ingest([Item(path)], "audio", settings)
assert out[0].status == "ingested", out
print(base, hwm(), out[0].points, time.time() - t)
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_recording(fast_bundle, tmp_path):
    """A 32-minute WAV costs what an 8-minute one does (the old path held ~1.6 GB per hour of audio)."""
    rss = {}
    for minutes in (8, 32):
        path = tmp_path / f"long{minutes}.wav"
        with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as out:
            rng = np.random.default_rng(minutes)
            for _ in range(minutes):
                out.write((0.1 * rng.standard_normal(16000 * 60)).astype(np.float32))
        result = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path), str(fast_bundle),
                                 str(tmp_path / f"q{minutes}")], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        base, peak, windows, _ = result.stdout.split()
        assert int(windows) == minutes * 2
        rss[minutes] = (int(base), int(peak))
    growth_short = rss[8][1] - rss[8][0]
    growth_long = rss[32][1] - rss[32][0]
    # 24 more minutes decoded whole would be 24 * 60 * 32000 * 4 bytes = 184 MB of float32 alone.
    assert growth_long - growth_short < 40_000, rss  # KiB
    assert rss[32][1] < 600 * 1024, rss  # the bound, for any length


# -- recovery -------------------------------------------------------------------------------------------------

def test_sigkilled_worker_batch_is_redelivered_within_a_minute(fast_bundle, tmp_path):
    """Default visibility timeout (an hour): the batch comes back through the heartbeat reaper, and `hark jobs`
    says it waits for redelivery meanwhile."""
    redis = pytest.importorskip("redis")
    from test_workers import Worker

    broker = "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(broker).flushdb()
    except redis.exceptions.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379")
    files = [clip(tmp_path / f"c{i}.wav", 35.0, 20 + i) for i in range(4)]
    settings = settings_for(tmp_path, HARK_BROKER_URL=broker, HARK_BATCH_FILES=4)
    env = {"HARK_BROKER_URL": broker, "HARK_QDRANT_PATH": settings.qdrant_path, "HARK_DEVICE": "cpu",
           "HARK_BATCH_FILES": "4", "HARK_WORKER_HEARTBEAT": "2", "HARK_STATE_DIR": settings.state_dir,
           "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "worker.log"
    first = Worker(env, log)
    job, store = submit_job(settings, [Item(str(f)) for f in files], "audio", str(fast_bundle))
    deadline = time.monotonic() + 120
    while not store.status(job)["batches"] and time.monotonic() < deadline:
        time.sleep(0.05)
    taken = store.status(job)["batches"]
    assert taken and taken[0]["state"] == "running", store.status(job)
    first.kill()
    killed = time.monotonic()
    while store.status(job)["state"] != "waiting for redelivery" and time.monotonic() - killed < 30:
        time.sleep(0.2)
    status = store.status(job)
    assert status["state"] == "waiting for redelivery" and status["pending"] > 0, status
    second = Worker(env, log)
    try:
        done = wait_for(store, job, timeout=120)
    finally:
        second.stop()
    took = time.monotonic() - killed
    assert done["ingested"] == len(files) and not done["batches"]
    assert took < 90, f"redelivered after {took:.0f} s"
    assert "put back on the queue" in log.read_text(errors="replace")
    # The finished job's keys expire (HARK_JOB_TTL_DAYS).
    client = redis.Redis.from_url(broker)
    assert 0 < client.ttl(f"hark:job:{job}") <= 30 * 86400


# -- sticky rollback ------------------------------------------------------------------------------------------

def test_rollback_is_sticky_through_a_beat_tick_and_ingestion_follows_it(fast_bundle, tmp_path):
    from hark.bundle import Bundle
    from hark.registry import active_pin, bundle_for_collection, register, unpin
    from hark.store import connect, live_version
    from hark.workers.jobs import FileJobStore
    from hark.workers.reindex import reindex, rollback, run_tick

    second = export_untrained(tmp_path / "v2", seed=1)
    settings = settings_for(tmp_path, HARK_REINDEX_INTERVAL=1)
    old = register(settings, fast_bundle)
    time.sleep(1.1)  # registry order is by creation time, in seconds
    new = register(settings, second)
    old_v, new_v = Bundle.load(old).version, Bundle.load(new).version
    ingest(settings, [clip(tmp_path / "a.wav", 3.0, 30), clip(tmp_path / "b.wav", 4.0, 31)], old)
    store = FileJobStore(settings.state_dir)
    assert reindex(settings, store, "audio", new_v, timeout=30)["live"] == f"audio__{new_v}"

    client = connect(settings)
    try:
        assert rollback(settings, client, "audio")["pinned"] == old_v
    finally:
        client.close()
    assert active_pin(settings, "audio") == old_v
    assert run_tick(settings)["started"] == []  # the beat leaves the rollback alone
    client = connect(settings)
    try:
        assert live_version(client, "audio") == old_v
        assert bundle_for_collection(settings, "audio", client=client) == old
    finally:
        client.close()
    # Submitted with the newest bundle (e.g. by a submitter that could not read the alias): the worker writes
    # the live collection with the live bundle, so the file is found through the alias.
    status = ingest(settings, [clip(tmp_path / "c.wav", 5.0, 32)], new)
    assert status["ingested"] == 1
    assert {p.payload["file_name"] for p in points(settings)} == {"a.wav", "b.wav", "c.wav"}
    assert {p.payload["model_version"] for p in points(settings)} == {old_v}

    # Lifting the pin lets the beat move forward again.
    assert unpin(settings, "audio")
    assert run_tick(settings)["started"] == [f"audio__{new_v}"]


# -- the GPU check script -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_gpu_script_dry_run_prints_one_json_line_and_fails_fast_without_cuda():
    pytest.importorskip("torch")
    script = ROOT / "benchmarks" / "gpu.sh"
    env = {**os.environ, "PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}  # no nvidia-smi on this PATH
    start = time.monotonic()
    refused = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 3 and time.monotonic() - start < 30
    assert "no CUDA GPU" in json.loads(refused.stdout.strip().splitlines()[-1])["error"]
    dry = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, env=env, timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]
    report = json.loads(dry.stdout.strip().splitlines()[-1])
    assert report["mode"] == "dry-run" and report["ingest"]["clips_per_s"] > 0
    assert report["rerank"]["k"] == 64 and report["text_encoder"]["texts_per_s"] > 0
