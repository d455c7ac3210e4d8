"""The facade's prefilter as arrays (hark.store.query_candidates): the embedded engine's direct path against
qdrant-client's local mode, the packed rows, the reranker's packed input, and an unfiltered embedded query that
never imports qdrant_client."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client.http import models

from hark.plugin.encoders import Reranker
from hark.store import query_candidates, resolve_collection
from hark.store.candidates import from_points
from hark.store.edge import EdgeStore

DIM, WIDTH, N = 12, 5, 150

VECTORS = {
    "global": models.VectorParams(size=DIM, distance=models.Distance.COSINE),
    "tokens": models.VectorParams(size=WIDTH, distance=models.Distance.DOT, hnsw_config=models.HnswConfigDiff(m=0),
                                  multivector_config=models.MultiVectorConfig(
                                      comparator=models.MultiVectorComparator.MAX_SIM)),
}


def _points() -> list[models.PointStruct]:
    rng = random.Random(3)
    points = []
    for i in range(N):
        pid: int | str = i if i % 2 else str(uuid.uuid5(uuid.NAMESPACE_URL, f"c{i}"))
        vector: dict = {"global": [rng.gauss(0, 1) for _ in range(DIM)]}
        if i % 10:  # every tenth point has no rows: it must come back with a count of 0
            vector["tokens"] = [[rng.gauss(0, 1) for _ in range(WIDTH)] for _ in range(1 + i % 3)]
        points.append(models.PointStruct(id=pid, vector=vector, payload={"i": i, "split": "ab"[i % 2]}))
    return points


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    points = _points()
    edge = EdgeStore(tmp_path_factory.mktemp("cand") / "store")
    local = QdrantClient(location=":memory:")
    for client in (edge, local):
        client.create_collection("c", vectors_config=VECTORS)
        client.upsert("c", points=points, wait=True)
    yield edge, local, {p.id: p for p in points}
    edge.close()
    local.close()


@pytest.mark.parametrize("flt", [None, {"must": [{"key": "split", "match": {"value": "a"}}]}])
def test_engine_path_matches_the_client_path(stores, flt):
    """EdgeStore's own `query_candidates` and the generic path through a QdrantClient (local mode, exact scan) give
    the same candidates, scores, payloads and packed rows, for several queries in one call."""
    edge, local, by_id = stores
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((3, DIM)).astype(np.float32)
    got = query_candidates(edge, "c", queries, "global", 40, flt, rows="tokens")
    assert not hasattr(local, "query_candidates")  # so the reference really takes the generic path
    want = query_candidates(local, "c", queries, "global", 40, flt, rows="tokens")
    assert len(got) == len(want) == 3
    for g, w in zip(got, want, strict=True):
        assert g.ids == w.ids and len(g) == 40
        np.testing.assert_allclose(g.scores, w.scores, rtol=1e-5, atol=1e-6)
        assert g.payloads == w.payloads
        if flt is not None:
            assert all(p["split"] == "a" for p in g.payloads)
        np.testing.assert_array_equal(g.counts, w.counts)
        np.testing.assert_allclose(g.rows, w.rows, rtol=1e-6)
        assert g.rows.dtype == np.float32 and g.rows.shape == (int(g.counts.sum()), WIDTH)
        for i, pid in enumerate(g.ids):
            stored = by_id[pid].vector.get("tokens")
            if stored is None:
                assert g.counts[i] == 0 and g.rows_of(i) is None
            else:
                np.testing.assert_allclose(g.rows_of(i), np.asarray(stored, dtype=np.float32), rtol=1e-6)


def test_without_rows_only_ids_scores_and_payloads(stores):
    edge, _, _ = stores
    (found,) = query_candidates(edge, "c", np.ones((1, DIM), np.float32), "global", 5)
    assert found.rows is None and len(found.counts) == 0 and found.rows_of(0) is None
    assert len(found.ids) == len(found.payloads) == len(found.scores) == 5
    assert list(found.scores) == sorted(found.scores, reverse=True)


class _EchoSession:
    """Stands in for rerank.onnx: each candidate's score encodes exactly what was packed for it."""

    def run(self, _outputs, feeds):
        rows, mask = feeds["rows"], feeds["segment_mask"]
        weights = np.arange(1, rows.shape[-1] + 1, dtype=np.float64)
        per_segment = (rows.astype(np.float64) * weights).sum(-1) * np.array([1.0, 1e3, 1e6])[: rows.shape[2]]
        return [(per_segment.sum(-1) + 1e9 * mask.sum(-1)).astype(np.float64)]


def test_packed_rows_reach_the_reranker_as_per_candidate_arrays_do():
    """score_packed (the store's packed block) feeds the graph exactly what score_batch (one array per
    candidate) does: same rows in the same slots, same masks, NaN for candidates without rows, more rows than
    the bundle's segments cut off."""
    reranker = Reranker.__new__(Reranker)
    reranker.session, reranker.max_segments = _EchoSession(), 3
    rng = np.random.default_rng(1)
    groups_lists, groups_packed = [], []
    for counts in ([1, 0, 3, 4], [2, 2]):
        per = [rng.standard_normal((c, WIDTH)).astype(np.float32) if c else None for c in counts]
        groups_lists.append(per)
        rows = np.concatenate([p for p in per if p is not None])
        groups_packed.append((rows, np.array(counts)))
    tokens, mask = np.zeros((2, 3, WIDTH), np.float32), np.ones((2, 3), np.float32)
    want = reranker.score_batch(tokens, mask, groups_lists)
    got = reranker.score_packed(tokens, mask, groups_packed)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert np.isnan(got[0][1]) and not np.isnan(got[0]).all()
    assert [len(g) for g in got] == [4, 2]


def test_from_points_keeps_the_order_and_maps_ids():
    points = [SimpleNamespace(id=7, score=0.5, payload=None, vector={"tokens": [[1.0, 2.0]]}),
              SimpleNamespace(id=uuid.UUID(int=1), score=0.25, payload={"a": 1}, vector={}),
              SimpleNamespace(id=9, score=0.125, payload={}, vector={"tokens": [[3.0, 4.0], [5.0, 6.0]]})]
    found = from_points(points, "tokens", id_out=lambda pid: pid if isinstance(pid, int) else str(pid))
    assert found.ids == [7, str(uuid.UUID(int=1)), 9]
    assert found.payloads == [{}, {"a": 1}, {}]
    assert found.counts.tolist() == [1, 0, 2] and found.starts.tolist() == [0, 1, 1]
    assert found.rows_of(2).tolist() == [[3.0, 4.0], [5.0, 6.0]] and found.rows_of(1) is None


def test_an_unfiltered_embedded_query_never_imports_qdrant_client(tmp_path):
    """What a cold `hark search` on the embedded store runs (alias lookup, candidates, no filter) stays clear of
    qdrant_client, whose import alone took about a second."""
    folder = tmp_path / "cold"
    with EdgeStore(folder) as store:
        store.create_collection("c__v1", vectors_config=VECTORS)
        store.upsert("c__v1", points=_points()[:20], wait=True)
        store.update_collection_aliases(change_aliases_operations=[models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name="c__v1", alias_name="c"))])
        assert resolve_collection(store, "c") == "c__v1"
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from hark.plugin.search import parse_filter
        from hark.store import connect, live_version, query_candidates, resolve_collection
        from hark.settings import Settings

        store = connect(Settings.load(env={{"HARK_QDRANT_PATH": {str(folder)!r}}}))
        assert resolve_collection(store, "c") == "c__v1" and live_version(store, "c") == "v1"
        (found,) = query_candidates(store, "c", np.ones((1, {DIM}), np.float32), "global", 5, parse_filter(None),
                                    rows="tokens")
        assert len(found) == 5 and found.rows is not None
        store.close()
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("qdrant_client", "pydantic")))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_packing_rounds_like_numpy_and_refuses_ragged_rows():
    rows = [[0.1, -2.5e-39, 3.4e38], [float("inf"), 1, -0.0]]  # subnormal, near the float32 limit, an int
    found = from_points([SimpleNamespace(id=1, score=1.0, payload={}, vector={"t": rows})], "t")
    np.testing.assert_array_equal(found.rows, np.array(rows, dtype=np.float32))
    with pytest.warns(RuntimeWarning):  # numpy's own overflow warning: beyond float32 becomes inf, as before
        huge = from_points([SimpleNamespace(id=1, score=1.0, payload={}, vector={"t": [[1e300, 1.0]]})], "t")
    assert huge.rows.tolist() == [[np.inf, 1.0]]
    with pytest.raises(ValueError, match="widths"):
        from_points([SimpleNamespace(id=1, score=1.0, payload={}, vector={"t": [[1.0], [1.0, 2.0]]})], "t")


def test_a_server_gets_the_same_request_as_a_validated_one():
    """The generic path skips pydantic validation of hark's own vectors; what a Qdrant server receives (the REST
    body, or the gRPC message) must be what a validated request would have sent."""
    from qdrant_client.conversions.conversion import RestToGrpc
    from qdrant_client.http.api.search_api import jsonable_encoder

    sent = []

    class Server:
        def query_batch_points(self, collection, requests):
            sent.extend(requests)
            return [SimpleNamespace(points=[]) for _ in requests]

    flt = models.Filter.model_validate({"must": [{"key": "split", "match": {"value": "a"}}]})
    queries = np.random.default_rng(2).standard_normal((2, DIM)).astype(np.float32)
    assert query_candidates(Server(), "c", queries, "global", 7, flt, rows="tokens")[1].ids == []
    for got, q in zip(sent, queries, strict=True):
        want = models.QueryRequest(query=q.tolist(), using="global", limit=7, filter=flt, with_payload=True,
                                   with_vector=["tokens"])
        assert jsonable_encoder(models.QueryRequestBatch(searches=[got])) == jsonable_encoder(
            models.QueryRequestBatch(searches=[want]))
        assert RestToGrpc.convert_query_request(got, "c") == RestToGrpc.convert_query_request(want, "c")
