"""The embedded store's cache of decoded rerank rows (hark.store.rowcache): bounded, least recently used, and
never stale: every write through `EdgeStore` drops what it touches, and a read that began before a write cannot
put back what it saw."""

from __future__ import annotations

import random
import threading
import uuid

import numpy as np
import pytest
from qdrant_client.http import models

from hark.settings import Settings, SettingsError
from hark.store import connect, query_candidates
from hark.store.edge import EdgeStore, NotFoundError
from hark.store.rowcache import ENTRY_OVERHEAD, RowCache

DIM, WIDTH = 8, 4

VECTORS = {
    "global": models.VectorParams(size=DIM, distance=models.Distance.COSINE),
    "tokens": models.VectorParams(size=WIDTH, distance=models.Distance.DOT, hnsw_config=models.HnswConfigDiff(m=0),
                                  multivector_config=models.MultiVectorConfig(
                                      comparator=models.MultiVectorComparator.MAX_SIM)),
}


def _rows(n: int, value: float) -> np.ndarray:
    return np.full((n, WIDTH), value, dtype=np.float32)


# -- the cache on its own ----------------------------------------------------------------------------------------
def test_least_recently_used_rows_go_first_within_the_byte_budget():
    entry = _rows(2, 1.0).nbytes + ENTRY_OVERHEAD
    cache = RowCache(3 * entry)
    gen = cache.generation("c")
    assert cache.put("c", "t", [(1, _rows(2, 1.0)), (2, _rows(2, 2.0)), (3, _rows(2, 3.0))], gen)
    assert len(cache) == 3 and cache.nbytes == 3 * entry
    cache.get("c", "t", [1])  # 1 is now the most recently used: 2 goes first
    cache.put("c", "t", [(4, _rows(2, 4.0))], gen)
    got = cache.get("c", "t", [1, 2, 3, 4])
    assert got[1] is None and [float(r[0, 0]) for r in (got[0], got[2], got[3])] == [1.0, 3.0, 4.0]
    assert cache.nbytes <= cache.max_bytes
    assert not got[0].flags.writeable  # shared between queries: nobody may write into it
    cache.put("c", "t", [(5, _rows(1000, 5.0))], gen)  # larger than the whole cache: never kept
    assert cache.get("c", "t", [5]) == [None] and len(cache) == 3


def test_a_read_that_began_before_a_write_puts_nothing_back():
    cache = RowCache(1 << 20)
    before = cache.generation("c")
    cache.invalidate("c", [1])  # the write lands while the read is under way
    assert not cache.put("c", "t", [(1, _rows(1, 0.0))], before)
    assert cache.get("c", "t", [1]) == [None]
    assert cache.put("c", "t", [(1, _rows(1, 1.0))], cache.generation("c"))
    assert cache.put("d", "t", [(1, _rows(1, 9.0))], cache.generation("d"))  # other collections are separate


def test_invalidate_by_ids_and_whole_collections():
    cache = RowCache(1 << 20)
    cache.put("c", "t", [(1, _rows(1, 1.0)), (2, _rows(1, 2.0))], 0)
    cache.put("c", "m", [(1, _rows(1, 1.5))], 0)
    cache.put("d", "t", [(1, _rows(1, 3.0))], 0)
    cache.invalidate("c", [1])
    assert cache.get("c", "t", [1, 2])[0] is None and cache.get("c", "m", [1]) == [None]
    assert cache.get("c", "t", [2])[0] is not None and cache.get("d", "t", [1])[0] is not None
    cache.invalidate("c")
    assert cache.get("c", "t", [2]) == [None] and cache.get("d", "t", [1])[0] is not None
    assert cache.nbytes == _rows(1, 0).nbytes + ENTRY_OVERHEAD


def test_a_cache_of_size_zero_keeps_nothing():
    cache = RowCache(0)
    assert not cache.enabled and not cache.put("c", "t", [(1, _rows(1, 1.0))], 0) and len(cache) == 0
    with pytest.raises(ValueError):
        RowCache(-1)


def test_the_setting_sizes_the_embedded_stores_cache(tmp_path):
    settings = Settings.load(toml_path=tmp_path / "none.toml",
                             env={"HARK_QDRANT_PATH": str(tmp_path / "q"), "HARK_ROW_CACHE_MB": "1.5"})
    with connect(settings) as store:
        assert store.row_cache.max_bytes == int(1.5 * 2**20)
    with pytest.raises(SettingsError, match="HARK_ROW_CACHE_MB"):
        Settings.load(toml_path=tmp_path / "none.toml", env={"HARK_ROW_CACHE_MB": "-1"})


# -- through EdgeStore -------------------------------------------------------------------------------------------
def _point(pid, rng: random.Random, rows: int, value: float | None = None) -> models.PointStruct:
    vector: dict = {"global": [rng.gauss(0, 1) for _ in range(DIM)]}
    if rows:
        vector["tokens"] = [[value if value is not None else rng.gauss(0, 1) for _ in range(WIDTH)]
                            for _ in range(rows)]
    return models.PointStruct(id=pid, vector=vector, payload={"rows": rows})


def _fill(store: EdgeStore, n: int = 60, seed: int = 1) -> list[models.PointStruct]:
    rng = random.Random(seed)
    points = [_point(i if i % 2 else str(uuid.UUID(int=i)), rng, i % 4) for i in range(n)]
    store.create_collection("c", vectors_config=VECTORS)
    store.upsert("c", points)
    return points


def _same(a, b) -> None:
    assert a.ids == b.ids
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert (a.rows is None) == (b.rows is None)
    if a.rows is not None:
        np.testing.assert_array_equal(a.rows, b.rows)
        assert a.rows.dtype == np.float32 and not a.rows.flags.writeable


def test_cached_candidates_equal_the_engines_own(tmp_path):
    """Repeated and overlapping queries (one with candidates that have no rows) come back exactly as a store
    without the cache gives them, and the repeats are served from the cache."""
    cached, plain = EdgeStore(tmp_path / "a"), EdgeStore(tmp_path / "b", row_cache_bytes=0)
    try:
        for store in (cached, plain):
            _fill(store)
        queries = np.random.default_rng(2).standard_normal((3, DIM)).astype(np.float32)
        for _ in range(2):
            got = query_candidates(cached, "c", queries, "global", 25, rows="tokens")
            want = query_candidates(plain, "c", queries, "global", 25, rows="tokens")
            for g, w in zip(got, want, strict=True):
                _same(g, w)
                assert 0 in g.counts  # points without rows keep a count of 0
        stats = cached.row_cache.stats()
        # The second pass came from the cache alone; each distinct candidate was read from the engine once.
        assert stats["hits"] == 75 and stats["entries"] == len({pid for g in got for pid in g.ids})
        assert plain.row_cache.stats()["entries"] == 0
    finally:
        cached.close()
        plain.close()


def test_writes_through_the_store_never_leave_stale_rows(tmp_path):
    store = EdgeStore(tmp_path / "s")
    try:
        points = _fill(store)
        query = np.asarray(points[5].vector["global"], np.float32)[None]
        (first,) = query_candidates(store, "c", query, "global", 60, rows="tokens")
        assert store.row_cache.stats()["entries"] == 60
        rng = random.Random(9)
        # Upsert new rows for a cached point: the next query must see them.
        store.upsert("c", [models.PointStruct(id=points[5].id, vector={"global": points[5].vector["global"],
                                                                     "tokens": [[7.0] * WIDTH] * 2})])
        (after,) = query_candidates(store, "c", query, "global", 60, rows="tokens")
        i = after.ids.index(points[5].id)
        np.testing.assert_array_equal(after.rows_of(i), _rows(2, 7.0))
        # Deleted by id and by filter: gone from the answers and from the cache.
        store.delete("c", [points[7].id])
        store.delete("c", models.Filter(must=[models.FieldCondition(key="rows", match=models.MatchValue(value=3))]))
        (after,) = query_candidates(store, "c", query, "global", 60, rows="tokens")
        removed = {p.id for p in points if p.payload["rows"] == 3} | {points[7].id}
        assert len(first) == 60 and set(after.ids) == {p.id for p in points} - removed
        # A collection deleted and made again under the same name: its new rows, never the old ones.
        store.delete_collection("c")
        store.create_collection("c", vectors_config=VECTORS)
        store.upsert("c", [_point(p.id, rng, 1, value=-1.0) for p in points])
        (again,) = query_candidates(store, "c", query, "global", 60, rows="tokens")
        assert np.all(again.rows == -1.0) and list(again.counts) == [1] * 60
        # Payload changes keep the rows cached (payloads are never cached).
        entries = store.row_cache.stats()["entries"]
        store.set_payload("c", {"tag": "x"}, [points[1].id])
        assert store.row_cache.stats()["entries"] == entries
        (tagged,) = query_candidates(store, "c", query, "global", 60, rows="tokens")
        assert tagged.payloads[tagged.ids.index(points[1].id)]["tag"] == "x"
    finally:
        store.close()


def test_rows_read_before_a_write_are_not_cached_after_it(tmp_path):
    """The write lands between a query's engine read and its `put`: the rows it read are dropped, so the next
    query reads the new ones."""
    store = EdgeStore(tmp_path / "s")
    try:
        points = _fill(store)
        query = np.asarray(points[5].vector["global"], np.float32)[None]
        real_put = store.row_cache.put

        def put_after_a_write(*args, **kwargs):
            store.row_cache.put = real_put  # once
            store.upsert("c", [models.PointStruct(id=points[5].id, payload=points[5].payload, vector={
                "global": points[5].vector["global"], "tokens": [[7.0] * WIDTH]})])
            return real_put(*args, **kwargs)

        store.row_cache.put = put_after_a_write
        (before,) = query_candidates(store, "c", query, "global", 60, rows="tokens")
        assert store.row_cache.stats()["entries"] == 0  # the whole read was dropped
        assert before.rows_of(before.ids.index(points[5].id)).shape[0] == 1  # it saw the old rows (5 % 4 = 1)
        (after,) = query_candidates(store, "c", query, "global", 60, rows="tokens")
        np.testing.assert_array_equal(after.rows_of(after.ids.index(points[5].id)), _rows(1, 7.0))
    finally:
        store.close()


def test_a_collection_deleted_between_search_and_row_read_is_not_found(tmp_path):
    store = EdgeStore(tmp_path / "s")
    try:
        points = _fill(store)
        store.create_collection("d", vectors_config=VECTORS)
        query = np.asarray(points[5].vector["global"], np.float32)[None]
        real_get = store.row_cache.get

        def get_after_a_swap(*args, **kwargs):
            # "c" is deleted and an alias of that name now points at "d": the rows must not come from "d".
            store.delete_collection("c")
            store.update_collection_aliases([models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name="d", alias_name="c"))])
            return real_get(*args, **kwargs)

        store.row_cache.get = get_after_a_swap
        with pytest.raises(NotFoundError, match="`c` doesn't exist"):
            query_candidates(store, "c", query, "global", 10, rows="tokens")
    finally:
        store.close()


def test_concurrent_writes_and_cached_reads_end_with_the_last_written_rows(tmp_path):
    """A writer rewrites points' rows (the value says which version) while readers query through the cache; once
    the writer is done, every candidate's rows are its last version, as a store without the cache reads them."""
    store = EdgeStore(tmp_path / "s")
    try:
        points = _fill(store, n=40)
        rng = random.Random(4)
        queries = np.random.default_rng(5).standard_normal((4, DIM)).astype(np.float32)
        done = threading.Event()
        errors: list[BaseException] = []

        def read() -> None:
            try:
                while not done.is_set():
                    query_candidates(store, "c", queries, "global", 40, rows="tokens")
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        readers = [threading.Thread(target=read) for _ in range(3)]
        for t in readers:
            t.start()
        last: dict = {}
        for version in range(1, 121):
            p = points[rng.randrange(len(points))]
            store.upsert("c", [models.PointStruct(id=p.id, payload=p.payload, vector={
                "global": p.vector["global"], "tokens": [[float(version)] * WIDTH] * 2})])
            last[p.id] = float(version)
        done.set()
        for t in readers:
            t.join()
        assert not errors
        for found in query_candidates(store, "c", queries, "global", 40, rows="tokens"):
            for i, pid in enumerate(found.ids):
                if pid in last:
                    np.testing.assert_array_equal(found.rows_of(i), _rows(2, last[pid]))
        assert store.row_cache.stats()["hits"] > 0
    finally:
        store.close()
