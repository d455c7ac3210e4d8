"""Pre-warming the embedded store's on-disk vector storage (`hark serve` start-up): what is read, the memory
bound, and that nothing about it can fail a start."""

from __future__ import annotations

import logging
import os
import random
import threading

import pytest
from qdrant_client.http import models

from hark.store.edge import EdgeStore, _on_disk_files, warm_files

DIM = 16


def _collection(path, on_disk: bool = True) -> EdgeStore:
    store = EdgeStore(path)
    store.create_collection("c", vectors_config={
        "global": models.VectorParams(size=DIM, distance=models.Distance.COSINE),
        "tokens": models.VectorParams(size=DIM, distance=models.Distance.DOT, on_disk=on_disk,
                                      hnsw_config=models.HnswConfigDiff(m=0),
                                      multivector_config=models.MultiVectorConfig(
                                          comparator=models.MultiVectorComparator.MAX_SIM))})
    rng = random.Random(3)
    store.upsert("c", [models.PointStruct(id=i, vector={"global": [rng.gauss(0, 1) for _ in range(DIM)],
                                                        "tokens": [[rng.gauss(0, 1) for _ in range(DIM)]] * 2})
                       for i in range(50)])
    store.flush()
    store.update_collection_aliases([models.CreateAliasOperation(
        create_alias=models.CreateAlias(collection_name="c", alias_name="live"))])
    return store


def test_prewarm_reads_the_on_disk_vectors_of_the_aliased_collection(tmp_path, caplog):
    store = _collection(tmp_path / "q")
    store.close()
    store = EdgeStore(tmp_path / "q")
    try:
        files = _on_disk_files(tmp_path / "q" / "collections" / "c")
        assert files and all("vector_storage-tokens" in str(p) for p in files)
        with caplog.at_level(logging.INFO, logger="hark.store.edge"):
            store.prewarm("live").join(timeout=60)
        report = store.prewarm_report
        assert report["files"] == len(files) and report["bytes"] == sum(p.stat().st_size for p in files)
        assert report["over_budget"] == report["unreadable"] == 0
        assert "pre-warmed c: read" in caplog.text
        assert "c" in store._shards  # the shard load is off the first query too
    finally:
        store.close()


def test_only_on_disk_vectors_are_warmed(tmp_path):
    _collection(tmp_path / "q", on_disk=False).close()
    assert _on_disk_files(tmp_path / "q" / "collections" / "c") == []


def test_prewarm_never_raises_for_a_missing_collection_or_a_closed_store(tmp_path, caplog):
    store = EdgeStore(tmp_path / "q")
    with caplog.at_level(logging.INFO, logger="hark.store.edge"):
        store.prewarm("nothing-here").join(timeout=60)
    assert "error" in store.prewarm_report and "pre-warm of nothing-here skipped" in caplog.text
    store.close()
    store.prewarm("nothing-here").join(timeout=60)
    assert "closed" in store.prewarm_report["error"]


def test_odd_files_are_skipped_and_counted(tmp_path):
    good = tmp_path / "good"
    good.write_bytes(b"x" * 3000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would block for ever
    report = warm_files([tmp_path / "missing", fifo, tmp_path, good], 10_000, block=1024)
    assert (report["files"], report["bytes"], report["unreadable"]) == (1, 3000, 3)


def test_the_memory_budget_bounds_what_is_read(tmp_path):
    sizes = [4000, 8000, 2000]
    paths = []
    for i, size in enumerate(sizes):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(b"y" * size)
    report = warm_files(paths, 7000)
    assert (report["files"], report["bytes"], report["over_budget"]) == (2, 6000, 1)
    assert warm_files(paths, 0)["bytes"] == 0


def test_a_stop_request_ends_the_read(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"z" * 10_000)
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    report = warm_files([path], 1 << 30, stop=stop, block=1000)
    assert report["bytes"] < 10_000


@pytest.fixture
def serve_settings(tmp_path):
    from hark.settings import Settings

    return Settings.load(env={"HARK_QDRANT_PATH": str(tmp_path / "q"), "HARK_COLLECTION": "live",
                              "HARK_MODELS_DIR": str(tmp_path / "models"), "HARK_STATE_DIR": str(tmp_path / "state"),
                              "HARK_CONFIG": str(tmp_path / "absent.toml")})


def test_serve_prewarms_its_collection_on_start(tmp_path, serve_settings):
    from hark.plugin.serve.service import Service

    _collection(tmp_path / "q").close()
    service = Service(serve_settings)  # no bundle registered: the service starts unready, the store warms anyway
    try:
        for thread in threading.enumerate():
            if thread.name.startswith("hark-prewarm-"):
                thread.join(timeout=60)
        assert service.client.prewarm_report["files"] > 0
    finally:
        service.close()
        service.client.close()  # Service.close leaves the client to its owner
