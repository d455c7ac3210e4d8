"""Re-indexing: queries keep answering through the switch, rollback, crash safety, the beat tick."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hark.bundle import Bundle  # noqa: E402
from hark.plugin.search import AudioSearch  # noqa: E402
from hark.registry import register  # noqa: E402
from hark.settings import Settings  # noqa: E402
from hark.store import connect, resolve_collection  # noqa: E402
from hark.workers.ingest import Item, collect_files  # noqa: E402
from hark.workers.jobs import FileJobStore  # noqa: E402
from hark.workers.reindex import ReindexError, reindex, rollback  # noqa: E402
from hark.workers.submit import submit_job, wait_for  # noqa: E402


class Serialized:
    """One client shared by threads: the embedded engine takes one call at a time."""

    def __init__(self, client) -> None:
        self._client, self._lock = client, threading.Lock()

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with self._lock:
                return attr(*args, **kwargs)
        return call


@pytest.fixture(scope="module")
def second_bundle(trained_run, tmp_path_factory):
    """Another model version: the trained model with its projections nudged."""
    from hark.exporters.onnx_export import export_bundle
    from hark.training.model import load_checkpoint

    model, payload = load_checkpoint(trained_run[0] / "best.pt")
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.cosine.parameters():
            p.add_(0.01 * torch.randn_like(p))
    payload["model"] = model.state_dict()
    tmp = tmp_path_factory.mktemp("v2")
    torch.save(payload, tmp / "v2.pt")
    return export_bundle(tmp / "v2.pt", tmp / "bundle")


class AliasMovesAfterFirstLookup:
    """A client whose alias `name` answers `first` once, then the truth: a re-index switch that lands between a
    query's choice of model and its reads of the store."""

    def __init__(self, client, name: str, first: str) -> None:
        self._client, self._name, self._first = client, name, first

    def alias_map(self) -> dict[str, str]:
        aliases = dict(self._client.alias_map())
        if self._first is not None:
            aliases[self._name], self._first = self._first, None
        return aliases

    def __getattr__(self, name):
        return getattr(self._client, name)


def _setup(tmp: Path, corpus: Path, first: Path, second: Path) -> tuple[Settings, str, str]:
    settings = Settings.load(tmp / "none.toml", env={
        "HARK_QDRANT_PATH": str(tmp / "qdrant"), "HARK_STATE_DIR": str(tmp / "state"), "HARK_DEVICE": "cpu",
        "HARK_MODELS_DIR": str(tmp / "models"), "HARK_COLLECTION": "sounds", "HARK_BATCH_FILES": "3"})
    old = register(settings, first)
    time.sleep(1.1)  # registry order is by creation time, in seconds
    new = register(settings, second)
    return settings, str(old), str(new)


def test_reindex_while_queries_run_then_rollback(bundle_dir, second_bundle, corpus, tmp_path):
    settings, old, new = _setup(tmp_path, corpus, bundle_dir, second_bundle)
    old_v, new_v = Bundle.load(old).version, Bundle.load(new).version
    client = Serialized(connect(settings))
    store = FileJobStore(settings.state_dir)
    files = collect_files([corpus / "evaluation"])
    job, _ = submit_job(settings, [Item(f) for f in files], "sounds", old, client=client)
    assert wait_for(store, job, timeout=5)["ingested"] == len(files) - 0
    search = AudioSearch(client, old, "sounds", "cpu", registry=settings)
    answered, errors, stop = [], [], threading.Event()

    def ask():
        while not stop.is_set():
            try:
                hits = search.search("a dog barks while rain falls", limit=5)
                answered.append({h.payload["model_version"] for h in hits})
            except Exception as exc:  # any failure is what this test looks for
                errors.append(exc)

    thread = threading.Thread(target=ask)
    thread.start()
    try:
        report = reindex(settings, store, "sounds", new_v, client=client, timeout=300)
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors[:3]
    assert len(answered) >= 3 and all(len(v) == 1 and v <= {old_v, new_v} for v in answered)
    assert report["live"] == f"sounds__{new_v}" and report["stored"] == report["expected"] == len(files)
    assert report["recomputed"] >= 1
    assert resolve_collection(client, "sounds") == f"sounds__{new_v}"
    after = search.search("a bell rings", limit=10)
    assert {h.payload["model_version"] for h in after} == {new_v}
    assert search.bundle.version == new_v  # the facade followed the alias to the new model

    # One alias lookup per query: a switch between choosing the model and reading the vectors leaves the query
    # on the collection of the model it chose (it used to encode with the old model and search the new vectors).
    moved = AudioSearch(AliasMovesAfterFirstLookup(client, "sounds", f"sounds__{old_v}"), new, "sounds", "cpu",
                        registry=settings)
    hits = moved.search("a bell rings", limit=5)
    assert moved.bundle.version == old_v and {h.payload["model_version"] for h in hits} == {old_v}
    assert {h.payload["model_version"] for h in moved.search("a bell rings", limit=5)} == {new_v}

    back = rollback(settings, client, "sounds")
    assert back["live"] == f"sounds__{old_v}"
    # The inference protocol embeds with the model the collection serves now, not the one loaded first (the new
    # one here); Qdrant then searches the old vectors with it.
    from fastapi.testclient import TestClient

    from hark.plugin.serve import create_app

    with TestClient(create_app(settings, new, client)) as api:
        served = api.post("/infer", json={"inputs": [{"data": "a bell rings", "data_type": "text",
                                                       "model": "hark"}], "inference": "search"})
    assert served.status_code == 200, served.text
    live_bundle, live_text, _ = search.engine_for("sounds")
    expected = live_text.encode(["a bell rings"]).sentence[0]
    newer = search._engine(Bundle.load(new))[1].encode(["a bell rings"]).sentence[0]
    assert live_bundle.version == old_v and np.abs(expected - newer).max() > 1e-3
    np.testing.assert_allclose(served.json()["embeddings"][0], expected, atol=1e-4)
    assert {h.payload["model_version"] for h in search.search("a bell rings", limit=5)} == {old_v}
    with pytest.raises(ReindexError, match="already serves"):
        reindex(settings, store, "sounds", old_v, client=client)
    client.close()


def test_killed_reindex_leaves_the_alias_and_a_rerun_completes(bundle_dir, second_bundle, corpus, tmp_path):
    settings, old, new = _setup(tmp_path, corpus, bundle_dir, second_bundle)
    old_v, new_v = Bundle.load(old).version, Bundle.load(new).version
    store = FileJobStore(settings.state_dir)
    files = collect_files([corpus / "evaluation"])
    job, _ = submit_job(settings, [Item(f) for f in files], "sounds", old)
    wait_for(store, job, timeout=5)
    env = {**os.environ, "HARK_QDRANT_PATH": settings.qdrant_path, "HARK_STATE_DIR": settings.state_dir,
           "HARK_MODELS_DIR": settings.models_dir, "HARK_DEVICE": "cpu", "HARK_BATCH_FILES": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "hark.cli", "reindex", "--collection", "sounds", "--bundle", new_v],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = store.reindex_state("sounds")
        if state and state.get("job"):
            try:
                if store.status(state["job"])["ingested"] >= 2:
                    break
            except (KeyError, ValueError):
                pass
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    client = connect(settings)
    try:
        assert resolve_collection(client, "sounds") == f"sounds__{old_v}"
    finally:
        client.close()
    report = reindex(settings, store, "sounds", new_v, timeout=300)
    assert report["live"] == f"sounds__{new_v}" and report["stored"] == len(files)
    assert store.reindex_state("sounds") is None


def test_beat_tick_starts_and_finishes_a_reindex(bundle_dir, second_bundle, corpus, tmp_path):
    from hark.workers.app import make_app, run_tick

    settings, old, new = _setup(tmp_path, corpus, bundle_dir, second_bundle)
    new_v = Bundle.load(new).version
    store = FileJobStore(settings.state_dir)
    job, _ = submit_job(settings, [Item(f) for f in collect_files([corpus / "evaluation"])[:6]], "sounds", old)
    wait_for(store, job, timeout=5)
    first = run_tick(settings)  # no broker: the started job runs in this process
    assert first["started"] == [f"sounds__{new_v}"], first
    second = run_tick(settings)
    assert second["finished"] == [f"sounds__{new_v}"]
    assert run_tick(settings) == {"finished": [], "started": [], "running": []}
    # The schedule's entries expire after one interval, so missed ticks never pile up.
    entry = make_app(settings).conf.beat_schedule["hark-reindex"]
    assert entry["options"]["expires"] == entry["schedule"] == float(settings.reindex_interval)
    assert store.lock("reindex-tick", 60) and not store.lock("reindex-tick", 60)


# -- the re-index state machine on hand-made collections (no model needed) ------------------------------------

def _small_store(tmp: Path) -> tuple[Settings, object, FileJobStore]:
    from qdrant_client.http import models

    settings = Settings.load(tmp / "none.toml", env={
        "HARK_QDRANT_PATH": str(tmp / "qdrant"), "HARK_STATE_DIR": str(tmp / "state"),
        "HARK_MODELS_DIR": str(tmp / "models")})
    client = connect(settings)
    for name in ("sounds__v1", "sounds__v2"):
        client.create_collection(name, vectors_config={
            "global": models.VectorParams(size=4, distance=models.Distance.COSINE)})
    return settings, client, FileJobStore(settings.state_dir)


def _file_points(uri: str, windows: int, extra_names: tuple[str, ...] = ()) -> list:
    import uuid

    from qdrant_client.http import models

    return [models.PointStruct(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{uri}:{i}")), vector={"global": [1, 0, 0, i]},
                               payload={"source_uri": uri, "sources": [uri, *extra_names], "window_index": i,
                                        "windows": windows})
            for i in range(windows)]


def _state(store: FileJobStore, outcomes: dict[str, tuple[str, str]]) -> dict:
    job = f"job-{len(outcomes)}-{time.time_ns()}"
    store.create(job, "sounds", len(outcomes), "bundle")
    for path, (status, reason) in outcomes.items():
        store.record(job, path, status, reason)
    return {"collection": "sounds", "job": job, "from": "sounds__v1", "target": "sounds__v2", "version": "v2",
            "bundle": "bundle", "started": time.time()}


def test_verify_compares_files_not_window_ids_and_refuses_to_drop_failed_files(tmp_path, monkeypatch):
    """A new model may cut a recording into other windows (the old version stored two for a.wav, the new one
    one): verify asks that every file be stored complete, not that the old point ids exist. A file that failed
    to re-ingest refuses the switch unless allowed: the switch (and the prune after it) used to drop it, and
    with every file failed (an unmounted share) it switched to an empty collection."""
    from hark.workers import reindex as reindexing
    from hark.workers.reindex import verify

    settings, client, store = _small_store(tmp_path)
    monkeypatch.setattr(reindexing, "_recompute_sample", lambda *_args: 0)
    try:
        client.upsert("sounds__v1", _file_points("a.wav", 2, ("copy-of-a.wav",)) + _file_points("b.wav", 1))
        client.upsert("sounds__v2", _file_points("a.wav", 1, ("copy-of-a.wav",)) + _file_points("b.wav", 1))
        done = _state(store, {"a.wav": ("ingested", ""), "copy-of-a.wav": ("duplicate", ""),
                              "b.wav": ("ingested", "")})
        report = verify(settings, client, store, done)
        assert (report["files"], report["expected"], report["stored"], report["failed_files"]) == (3, 3, 2, 0)

        failed = _state(store, {"a.wav": ("ingested", ""), "b.wav": ("failed", "unreadable: gone")})
        with pytest.raises(ReindexError, match=r"1 of 2 files of sounds__v1 failed to re-ingest \(b.wav: unread"):
            verify(settings, client, store, failed)
        assert verify(settings, client, store, failed, allow_failures=True)["failed_files"] == 1

        client.delete("sounds__v2", [_file_points("b.wav", 1)[0].id])
        with pytest.raises(ReindexError, match="1 files of sounds__v1 are missing from sounds__v2"):
            verify(settings, client, store, done)
    finally:
        client.close()


def test_the_beat_tick_reports_one_collections_trouble_and_goes_on(tmp_path, monkeypatch):
    """A re-index whose files failed is an error of that collection only; one recorded without a job (its start
    died before submitting) is resumed once stale; one rolled back (pinned) while running is abandoned."""
    from hark.registry import pin
    from hark.workers import reindex as reindexing
    from hark.workers.reindex import STALE_START_S, run_tick, switch_alias

    settings, client, store = _small_store(tmp_path)
    resumed = []
    monkeypatch.setattr(reindexing, "resume", lambda _s, _c, _st, state, only=None: resumed.append(
        (state["collection"], only)))
    monkeypatch.setattr(reindexing, "TICK_RETRIES", 0)
    try:
        for alias in ("failing", "stale", "pinned"):
            switch_alias(client, alias, "sounds__v1")
        for alias, outcomes in (("failing", {"a.wav": ("failed", "unreadable")}), ("pinned", {})):
            store.set_reindex(alias, {**_state(store, outcomes), "collection": alias})
        store.set_reindex("stale", {**_state(store, {}), "collection": "stale", "job": None,
                                    "started": time.time() - STALE_START_S - 1})
        pin(settings, "pinned", "v1")
    finally:
        client.close()
    actions = run_tick(settings)
    [error] = actions["errors"]
    assert error.startswith("failing: 1 of 1 files of sounds__v1 failed to re-ingest (a.wav: unreadable)")
    assert resumed == [("stale", None)] and actions["running"] == ["stale"]
    assert actions["abandoned"] == ["sounds__v2"] and store.reindex_state("pinned") is None
    assert store.reindex_state("failing")["job"]  # kept: `hark reindex` retries its files


def test_the_beat_tick_retries_failed_files_a_few_times_before_it_reports_them(tmp_path, monkeypatch):
    """A finished re-index with failed files was refused at every tick until an operator ran `hark reindex`:
    a failure that had passed (a storage hiccup) still needed one."""
    from hark.workers import reindex as reindexing
    from hark.workers.reindex import TICK_RETRIES, run_tick, switch_alias

    settings, client, store = _small_store(tmp_path)
    resumed = []

    def resume(_settings, _client, _store, state, only=None):
        resumed.append(sorted(only))
        retry = _state(store, {path: ("failed", "unreadable") for path in only})
        store.set_reindex(state["collection"], {**state, "job": retry["job"]})

    monkeypatch.setattr(reindexing, "resume", resume)
    try:
        switch_alias(client, "sounds", "sounds__v1")
        store.set_reindex("sounds", _state(store, {"a.wav": ("ingested", ""), "b.wav": ("failed", "unreadable")}))
    finally:
        client.close()
    for _ in range(TICK_RETRIES):
        assert run_tick(settings)["retried"] == ["sounds: 1 files"]
    assert TICK_RETRIES >= 1 and resumed == [["b.wav"]] * TICK_RETRIES
    [error] = run_tick(settings)["errors"]  # still failing: now it waits for an operator
    assert error.startswith("sounds: 1 of 1 files of sounds__v1 failed to re-ingest (b.wav: unreadable)")
    assert len(resumed) == TICK_RETRIES


def test_running_reindex_again_retries_only_the_files_that_failed(tmp_path, monkeypatch):
    """The retry after a refused switch submits the failed files, not every source of the collection again (each
    of which would be hashed only to be found stored), and switches once they are stored."""
    from hark.workers import reindex as reindexing

    settings, client, store = _small_store(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")  # resolve_bundle takes a folder with a manifest as given
    submitted = []

    def fake_submit(_settings, items, collection, bundle_path, client=None, on_created=None):
        job = f"retry-{len(submitted)}"
        store.create(job, collection, len(items), bundle_path)
        on_created(job)
        for item in items:  # the retry succeeds: the file is now stored in the new collection
            client.upsert("sounds__v2", _file_points(item.path, 1))
            store.record(job, item.path, "ingested")
        submitted.append(sorted(item.path for item in items))
        return job, store

    monkeypatch.setattr(reindexing, "submit_job", fake_submit)
    monkeypatch.setattr(reindexing, "_recompute_sample", lambda *_args: 0)
    try:
        reindexing.switch_alias(client, "sounds", "sounds__v1")
        client.upsert("sounds__v1", [p for uri in ("a.wav", "b.wav", "c.wav") for p in _file_points(uri, 1)])
        client.upsert("sounds__v2", _file_points("a.wav", 1) + _file_points("c.wav", 1))
        state = _state(store, {"a.wav": ("ingested", ""), "b.wav": ("failed", "unreadable"),
                               "c.wav": ("ingested", "")})
        store.set_reindex("sounds", {**state, "bundle": str(bundle.resolve())})
        report = reindexing.reindex(settings, store, "sounds", str(bundle), client=client, timeout=5)
        assert submitted == [["b.wav"]]
        assert report["live"] == "sounds__v2" and report["failed_files"] == 0 and report["files"] == 3
        assert resolve_collection(client, "sounds") == "sounds__v2"
    finally:
        client.close()
