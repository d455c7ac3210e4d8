"""The embedded store on qdrant-edge (hark.store.edge): congruence with qdrant-client's local mode, aliases, one
owner per folder, crash safety, errors."""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest
from qdrant_client import QdrantClient
from qdrant_client.http import models

from hark.store import StoreError, StoreUnavailableError
from hark.store.edge import CollectionNotFoundError, EdgeStore, NotFoundError
from hark.store.filters import InvalidFilterError, UnsupportedFilterError, to_edge

DIM = 16
N = 240


def _vectors(n: int = N, seed: int = 7) -> tuple[list[models.PointStruct], random.Random]:
    rng = random.Random(seed)
    words = ["dog barking", "rain on a roof", "a Dog and a cat", "church bells", "ünïcode wind", "birds at dawn"]
    points = []
    for i in range(n):
        pid: int | str = i if i % 3 else str(uuid.uuid5(uuid.NAMESPACE_URL, f"p{i}"))
        payload: dict = {
            "i": i, "f": i / 7, "flag": i % 2 == 0, "s": "abcd"[i % 4], "text": words[i % len(words)],
            "meta": {"split": "test" if i % 5 == 0 else "train", "n": i % 11},
            "tags": ["loud", "outdoor", "night"][: i % 4],
            "items": [{"a": i % 3, "b": "xy"[i % 2]}, {"a": (i + 1) % 3, "b": "yx"[i % 2]}],
            "when": f"2024-0{1 + i % 9}-1{i % 10}T12:00:00Z",
            "geo": {"lon": -10 + (i % 20), "lat": 40 + (i % 10) / 2},
        }
        if i % 7 == 0:
            payload["maybe"] = None
        elif i % 7 == 1:
            payload["maybe"] = []
        elif i % 7 == 2:
            payload["maybe"] = "here"
        vec = {"global": [rng.gauss(0, 1) for _ in range(DIM)],
               "tokens": [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(1 + i % 3)]}
        points.append(models.PointStruct(id=pid, vector=vec, payload=payload))
    return points, rng


VECTORS = {
    "global": models.VectorParams(size=DIM, distance=models.Distance.COSINE),
    "tokens": models.VectorParams(size=DIM, distance=models.Distance.DOT, hnsw_config=models.HnswConfigDiff(m=0),
                                  multivector_config=models.MultiVectorConfig(
                                      comparator=models.MultiVectorComparator.MAX_SIM)),
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same points in the embedded engine and in qdrant-client's local mode (the reference)."""
    points, rng = _vectors()
    edge = EdgeStore(tmp_path_factory.mktemp("edge") / "store")
    local = QdrantClient(location=":memory:")
    for client in (edge, local):
        client.create_collection("c", vectors_config=VECTORS)
        client.upsert("c", points=points[:100], wait=True)
        client.upsert("c", points=models.Batch(
            ids=[p.id for p in points[100:]], payloads=[p.payload for p in points[100:]],
            vectors={"global": [p.vector["global"] for p in points[100:]],
                     "tokens": [p.vector["tokens"] for p in points[100:]]}))
    # Real indexes on the engine side (local mode has none): filters must give the same answers through them.
    for field, kind in (("i", "integer"), ("s", "keyword"), ("meta.split", "keyword"), ("f", "float"),
                        ("flag", "bool"), ("when", "datetime")):
        edge.create_payload_index("c", field, kind)
    queries = [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(3)]
    yield edge, local, points, queries
    edge.close()
    local.close()


UUID3 = str(uuid.uuid5(uuid.NAMESPACE_URL, "p3"))

FILTERS = {
    "match_keyword": {"must": [{"key": "s", "match": {"value": "b"}}]},
    "match_int": {"must": [{"key": "i", "match": {"value": 12}}]},
    "match_bool": {"must": [{"key": "flag", "match": {"value": True}}]},
    "nested_key": {"must": [{"key": "meta.split", "match": {"value": "test"}}]},
    "should": {"should": [{"key": "s", "match": {"value": "a"}}, {"key": "meta.n", "match": {"value": 3}}]},
    "must_not": {"must_not": [{"key": "s", "match": {"value": "a"}}]},
    "min_should": {"min_should": {"conditions": [{"key": "s", "match": {"value": "a"}},
                                                 {"key": "flag", "match": {"value": True}},
                                                 {"key": "meta.split", "match": {"value": "test"}}],
                                  "min_count": 2}},
    "match_any": {"must": [{"key": "s", "match": {"any": ["a", "c"]}}]},
    "match_any_int": {"must": [{"key": "meta.n", "match": {"any": [1, 2, 3]}}]},
    "match_except": {"must": [{"key": "s", "match": {"except": ["a", "c"]}}]},
    "match_text": {"must": [{"key": "text", "match": {"text": "Dog"}}]},
    "range": {"must": [{"key": "f", "range": {"gte": 3.5, "lt": 20.25}}]},
    "range_nested_int": {"must": [{"key": "meta.n", "range": {"gt": 2, "lte": 6}}]},
    "datetime_range": {"must": [{"key": "when", "range": {"gte": "2024-03-01T00:00:00Z",
                                                          "lt": "2024-06-15T00:00:00Z"}}]},
    "datetime_range_naive": {"must": [{"key": "when", "range": {"gt": "2024-03-01", "lte": "2024-06-15T12:00:00"}}]},
    "match_text_any": {"must": [{"key": "text", "match": {"text_any": "rain bells"}}]},
    "match_phrase": {"must": [{"key": "text", "match": {"phrase": "on a roof"}}]},
    "is_empty": {"must": [{"is_empty": {"key": "maybe"}}]},
    "field_is_null": {"must": [{"key": "maybe", "is_null": True}]},
    "is_null": {"must": [{"is_null": {"key": "maybe"}}]},
    "not_is_empty": {"must_not": [{"is_empty": {"key": "tags"}}]},
    "has_id": {"must": [{"has_id": [1, 2, 4, 5, UUID3, 10_000]}]},
    "values_count": {"must": [{"key": "tags", "values_count": {"gte": 2}}]},
    "array_key": {"must": [{"key": "tags[]", "match": {"value": "night"}}]},
    "array_of_objects_key": {"must": [{"key": "items[].a", "match": {"value": 2}}]},
    "nested_condition": {"must": [{"nested": {"key": "items", "filter": {
        "must": [{"key": "a", "match": {"value": 1}}, {"key": "b", "match": {"value": "x"}}]}}}]},
    "nested_filter": {"must": [{"should": [{"key": "s", "match": {"value": "a"}},
                                           {"key": "s", "match": {"value": "b"}}]},
                               {"must_not": [{"key": "flag", "match": {"value": True}}]}]},
    "geo_radius": {"must": [{"key": "geo", "geo_radius": {"center": {"lon": 0, "lat": 42}, "radius": 400_000}}]},
    "single_condition_not_list": {"must": {"key": "s", "match": {"value": "d"}}},
}


def _assert_same_scored(got, want):
    """Same scores in the same order; same ids, except that equal scores may come in either order (rank fusion
    gives ties) and a tie at the cut may keep either point."""
    assert [p.score for p in got] == pytest.approx([p.score for p in want], rel=1e-5, abs=1e-6)

    def groups(points):
        out: dict[float, set] = {}
        for p in points:
            out.setdefault(round(p.score, 4), set()).add(p.id)
        if points:
            out.pop(round(points[-1].score, 4))
        return out

    assert groups(got) == groups(want)
    if len({round(p.score, 4) for p in want}) == len(want):
        assert [p.id for p in got] == [p.id for p in want]


@pytest.mark.parametrize("name", list(FILTERS))
def test_filters_congruent_with_local_mode(pair, name):
    edge, local, _, queries = pair
    flt = FILTERS[name]
    parsed = models.Filter.model_validate(flt)
    want_count = local.count("c", count_filter=parsed).count
    assert 0 < want_count < N, "the fixture must make every filter selective"
    assert edge.count("c", count_filter=flt).count == want_count
    got, _ = edge.scroll("c", scroll_filter=parsed, limit=1000)
    want, _ = local.scroll("c", scroll_filter=parsed, limit=1000)
    assert [r.id for r in got] == [r.id for r in want]
    assert [r.payload for r in got] == [r.payload for r in want]
    for q in queries:
        got = edge.query_points("c", query=q, using="global", query_filter=parsed, limit=20)
        want = local.query_points("c", query=q, using="global", query_filter=parsed, limit=20)
        _assert_same_scored(got.points, want.points)


def test_query_kinds_congruent(pair):
    edge, local, points, queries = pair
    q = queries[0]
    for kwargs in (
        {"query": q, "using": "global", "limit": 15, "offset": 5},
        {"query": q, "using": "global", "limit": 50, "score_threshold": 0.2},
        {"query": [q, queries[1]], "using": "tokens", "limit": 10},
        {"query": models.NearestQuery(nearest=q), "using": "global", "limit": 10},
        {"query": points[3].id, "using": "global", "limit": 10},  # by a stored point (excluded from its results)
        {"query": 4, "using": "tokens", "limit": 10},
        {"prefetch": models.Prefetch(query=q, using="global", limit=40), "query": [q], "using": "tokens", "limit": 8},
        {"prefetch": [models.Prefetch(query=q, using="global", limit=30),
                      models.Prefetch(query=queries[1], using="global", limit=30)],
         "query": models.FusionQuery(fusion=models.Fusion.RRF), "limit": 10},
        {"query": None, "limit": 7},
    ):
        got = edge.query_points("c", **kwargs)
        want = local.query_points("c", **kwargs)
        _assert_same_scored(got.points, want.points)
    got = edge.query_points("c", query=q, using="global", limit=3, with_payload=["meta"], with_vectors=["tokens"])
    want = local.query_points("c", query=q, using="global", limit=3, with_payload=["meta"], with_vectors=["tokens"])
    assert [p.payload for p in got.points] == [p.payload for p in want.points]
    for g, w in zip(got.points, want.points, strict=True):
        assert set(g.vector) == {"tokens"}
        for gv, wv in zip(g.vector["tokens"], w.vector["tokens"], strict=True):
            assert gv == pytest.approx(wv, rel=1e-6)


@pytest.mark.parametrize("order_by", ["i", models.OrderBy(key="f", direction=models.Direction.DESC)])
def test_order_by_congruent(pair, order_by):
    edge, local, _, _ = pair
    flt = models.Filter.model_validate(FILTERS["must_not"])
    got, got_next = edge.scroll("c", scroll_filter=flt, limit=25, order_by=order_by)
    want, want_next = local.scroll("c", scroll_filter=flt, limit=25, order_by=order_by)
    assert [r.id for r in got] == [r.id for r in want] and got_next == want_next
    got = edge.query_points("c", query=models.OrderByQuery(order_by=order_by), limit=10)
    want = local.query_points("c", query=models.OrderByQuery(order_by=order_by), limit=10)
    assert [(p.id, p.order_value) for p in got.points] == [(p.id, p.order_value) for p in want.points]


def test_query_batch_matches_single_queries(pair):
    edge, local, _, queries = pair
    flt = models.Filter.model_validate(FILTERS["match_any"])
    requests = [models.QueryRequest(query=q, using="global", limit=12, filter=flt, with_payload=True)
                for q in queries]
    got = edge.query_batch_points("c", requests=requests)
    want = local.query_batch_points("c", requests=requests)
    assert len(got) == len(queries)
    for g, w in zip(got, want, strict=True):
        _assert_same_scored(g.points, w.points)
        assert [p.payload for p in g.points] == [p.payload for p in w.points]


def test_scroll_pages_and_retrieve(pair):
    edge, local, points, _ = pair
    seen, offset = [], None
    while True:
        page, offset = edge.scroll("c", limit=50, offset=offset, with_payload=False)
        seen += [r.id for r in page]
        if offset is None:
            break
    want, _ = local.scroll("c", limit=1000, with_payload=False)
    assert seen == [r.id for r in want]
    assert len(seen) == N
    ids = [points[5].id, points[3].id, 999_999, points[0].id]
    got = edge.retrieve("c", ids, with_payload=True, with_vectors=True)
    assert [r.id for r in got] == [points[5].id, points[3].id, points[0].id]
    assert isinstance(got[1].id, str) and isinstance(got[0].id, int)
    assert got[0].payload == points[5].payload
    assert len(got[0].vector["tokens"]) == len(points[5].vector["tokens"])
    for g, w in zip(got[0].vector["tokens"], points[5].vector["tokens"], strict=True):
        assert g == pytest.approx(w, rel=1e-6)


def test_payload_round_trips_exactly(tmp_path):
    payload = {"nested": {"deep": {"list": [1, 2.5, "x", None, True, {"k": "v"}]}}, "float": 0.1, "tiny": 1e-300,
               "big": 2**62, "neg": -3, "unicode": "Grüße 🐦 鳥", "empty": {}, "empty_list": [], "whole_float": 2.0}
    with EdgeStore(tmp_path / "s") as store:
        store.create_collection("c", vectors_config={"v": models.VectorParams(size=2, distance=models.Distance.DOT)})
        pid = str(uuid.uuid4())
        store.upsert("c", [models.PointStruct(id=pid, vector={"v": [1.0, 0.0]}, payload=payload)])
        [record] = store.retrieve("c", [pid])
        assert record.id == pid
        assert record.payload == payload
        assert isinstance(record.payload["whole_float"], float)
        store.set_payload("c", {"added": [1, 2]}, points=[pid])
        assert store.retrieve("c", [pid])[0].payload == {**payload, "added": [1, 2]}


def test_delete_by_ids_and_filter(tmp_path):
    points, _ = _vectors(30)
    with EdgeStore(tmp_path / "s") as store:
        store.create_collection("c", vectors_config=VECTORS)
        store.upsert("c", points)
        store.delete("c", [points[1].id, points[2].id])
        assert store.count("c").count == 28
        store.delete("c", models.FilterSelector(filter=models.Filter.model_validate(FILTERS["match_keyword"])))
        assert store.count("c").count == 28 - sum(1 for p in points[3:] if p.payload["s"] == "b")
        store.delete("c", points_selector=models.PointIdsList(points=[points[0].id]))
        assert store.retrieve("c", [points[0].id]) == []


def test_collections_and_payload_indexes(tmp_path):
    with EdgeStore(tmp_path / "s") as store:
        assert not store.collection_exists("songs__v1")
        store.create_collection("songs__v1", vectors_config={
            "global": models.VectorParams(size=8, distance=models.Distance.COSINE, datatype=models.Datatype.FLOAT16,
                                          on_disk=True),
            "e": models.VectorParams(size=4, distance=models.Distance.EUCLID)})
        with pytest.raises(StoreError, match="already exists"):
            store.create_collection("songs__v1", vectors_config={"global": VECTORS["global"]})
        store.create_payload_index("songs__v1", "content_hash", "keyword")
        store.create_payload_index("songs__v1", "meta.n", models.PayloadSchemaType.INTEGER)
        store.create_payload_index("songs__v1", "text", models.TextIndexParams(
            type=models.TextIndexType.TEXT, tokenizer=models.TokenizerType.WORD, lowercase=True))
        store.upsert("songs__v1", [models.PointStruct(id=1, vector={"global": [0.5] * 8, "e": [0, 0, 0, 1]},
                                                      payload={"content_hash": "h", "meta": {"n": 3}})])
        info = store.get_collection("songs__v1")
        assert info.status == models.CollectionStatus.GREEN
        assert info.points_count == 1
        vectors = info.config.params.vectors
        assert vectors["global"].size == 8 and vectors["global"].datatype == models.Datatype.FLOAT16
        assert vectors["global"].on_disk and vectors["e"].distance == models.Distance.EUCLID
        assert {k: v.data_type for k, v in info.payload_schema.items()} == {
            "content_hash": models.PayloadSchemaType.KEYWORD, "meta.n": models.PayloadSchemaType.INTEGER,
            "text": models.PayloadSchemaType.TEXT}
        assert info.payload_schema["content_hash"].points == 1
        hit = store.query_points("songs__v1", query=[0.5] * 8, using="global", limit=1).points[0]
        assert hit.id == 1 and hit.score == pytest.approx(1.0, abs=1e-3)  # float16 storage
        assert [c.name for c in store.get_collections().collections] == ["songs__v1"]
        info.model_dump(mode="json")  # serialisable in a server's shape (hark serve returns it)
        assert store.delete_collection("songs__v1") is True
        assert store.delete_collection("songs__v1") is False
        assert store.get_collections().collections == []
        with pytest.raises(CollectionNotFoundError):
            store.count("songs__v1")


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "x\\y", "", " pad"])
def test_collection_names_cannot_escape_the_folder(tmp_path, name):
    with EdgeStore(tmp_path / "s") as store, pytest.raises(StoreError, match="invalid collection name"):
        store.create_collection(name, vectors_config={"global": VECTORS["global"]})
    assert sorted(os.listdir(tmp_path)) == ["s"]


@pytest.mark.parametrize("name", ["\u0130" * 200, "\ud800x"])
def test_names_the_filesystem_cannot_hold_are_refused_not_raised_as_os_errors(tmp_path, name):
    """200 characters that take 400 bytes in UTF-8 (the folder limit is 255 bytes), and a lone surrogate that
    has no UTF-8 form: found by the API fuzz as a 500 from `collection_exists` (OSError: File name too long)."""
    with EdgeStore(tmp_path / "s") as store:
        assert store.collection_exists(name) is False
        with pytest.raises(CollectionNotFoundError):
            store.count(name)
        with pytest.raises(StoreError, match="invalid collection name"):
            store.create_collection(name, vectors_config={"global": VECTORS["global"]})
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_aliases_create_switch_rename_delete(tmp_path):
    root = tmp_path / "s"
    with EdgeStore(root) as store:
        for version in ("v1", "v2"):
            store.create_collection(f"songs__{version}", vectors_config={"global": VECTORS["global"]})
        store.upsert("songs__v1", [models.PointStruct(id=1, vector={"global": [1.0] * DIM})])
        store.upsert("songs__v2", [models.PointStruct(id=2, vector={"global": [1.0] * DIM})])
        store.update_collection_aliases(change_aliases_operations=[models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name="songs__v1", alias_name="songs"))])
        assert [(a.alias_name, a.collection_name) for a in store.get_aliases().aliases] == [("songs", "songs__v1")]
        assert store.collection_exists("songs")
        assert [r.id for r in store.scroll("songs")[0]] == [1]
        # The re-index switch: delete + create in one atomic write.
        store.update_collection_aliases(change_aliases_operations=[
            models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name="songs")),
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name="songs__v2",
                                                                        alias_name="songs"))])
        assert [r.id for r in store.scroll("songs")[0]] == [2]
        assert json.loads((root / "aliases.json").read_text()) == {"aliases": {"songs": "songs__v2"}}
        # All or nothing: a failing operation leaves the file as it was.
        with pytest.raises(StoreError):
            store.update_collection_aliases(change_aliases_operations=[
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name="songs")),
                models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name="nope",
                                                                            alias_name="songs"))])
        assert json.loads((root / "aliases.json").read_text()) == {"aliases": {"songs": "songs__v2"}}
        store.update_collection_aliases(change_aliases_operations=[models.RenameAliasOperation(
            rename_alias=models.RenameAlias(old_alias_name="songs", new_alias_name="music"))])
        assert [a.alias_name for a in store.get_collection_aliases("songs__v2").aliases] == ["music"]
        assert store.get_collection_aliases("songs__v1").aliases == []
        # Deleting a collection takes its aliases with it (as on a server).
        store.delete_collection("songs__v2")
        assert store.get_aliases().aliases == []
        assert not store.collection_exists("music")


def test_alias_file_is_reread_on_every_lookup(tmp_path):
    root = tmp_path / "s"
    with EdgeStore(root) as store:
        for version in ("v1", "v2"):
            store.create_collection(f"songs__{version}", vectors_config={"global": VECTORS["global"]})
            store.upsert(f"songs__{version}", [models.PointStruct(id=int(version[1]), vector={"global": [1.0] * DIM})])
        store.update_collection_aliases(change_aliases_operations=[models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name="songs__v1", alias_name="songs"))])
        assert store.scroll("songs")[0][0].id == 1
        # Another process replaces the file the way the store does (tmp + rename); no reopen here.
        script = textwrap.dedent(f"""
            import json, os
            tmp = {str(root / 'aliases.json.new')!r}
            with open(tmp, 'w') as fh:
                json.dump({{'aliases': {{'songs': 'songs__v2'}}}}, fh)
            os.replace(tmp, {str(root / 'aliases.json')!r})
        """)
        subprocess.run([sys.executable, "-c", script], check=True)
        assert store.scroll("songs")[0][0].id == 2
        assert store.get_aliases().aliases[0].collection_name == "songs__v2"


@pytest.mark.parametrize("content", [
    b'{"aliases": [1, 2]}', b"[]", b'"aliases"', b"null", b"{}", b'{"aliases": null}', b'{"aliases": {"songs": 3}}',
    b'{"aliases": {"songs": ["songs__v1"]}}', b"{bad", b"\xff\xfe\x00binary", None])
def test_an_alias_file_of_any_wrong_shape_is_a_store_error_and_is_never_rewritten(tmp_path, content):
    root = tmp_path / "s"
    with EdgeStore(root) as store:
        store.create_collection("songs__v1", vectors_config={"global": VECTORS["global"]})
    aliases = root / "aliases.json"
    if content is None:
        aliases.mkdir()  # a folder where the file belongs
    else:
        aliases.write_bytes(content)
    with EdgeStore(root) as store:
        for call in (lambda: store.collection_exists("songs"), lambda: store.scroll("songs"), store.get_aliases,
                     store.alias_map, lambda: store.delete_collection("songs__v1"),
                     lambda: store.update_collection_aliases(change_aliases_operations=[models.CreateAliasOperation(
                         create_alias=models.CreateAlias(collection_name="songs__v1", alias_name="music"))])):
            with pytest.raises(StoreError, match=r"cannot read .*aliases\.json"):
                call()
    # What the operator wrote is left for them to fix: no write replaced it.
    assert aliases.is_dir() if content is None else aliases.read_bytes() == content


def test_second_opener_gets_in_use_error(tmp_path):
    root = tmp_path / "s"
    store = EdgeStore(root)
    try:
        with pytest.raises(StoreUnavailableError, match="in use by another process"):
            EdgeStore(root)
        script = textwrap.dedent(f"""
            from hark.store import StoreUnavailableError
            from hark.store.edge import EdgeStore
            try:
                EdgeStore({str(root)!r})
            except StoreUnavailableError as exc:
                print("refused:", exc)
        """)
        out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
        assert out.startswith("refused:") and "in use by another process" in out
    finally:
        store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.get_collections()
    EdgeStore(root).close()  # released: a new owner may open it


WRITER = """
import sys
from qdrant_client.http import models
from hark.store.edge import EdgeStore

store = EdgeStore(sys.argv[1])
store.create_collection("c", vectors_config={"global": models.VectorParams(size=64, distance=models.Distance.COSINE)})
i = 0
while True:
    store.upsert("c", [models.PointStruct(id=i, vector={"global": [float(i % 7 + 1)] * 64},
                                          payload={"i": i, "blob": "x" * 500})], wait=True)
    print(i, flush=True)
    i += 1
"""


def test_reopen_after_killed_writer_keeps_acknowledged_points(tmp_path):
    root = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in proc.stdout:
            acked.append(int(line))
            if len(acked) >= 300:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert len(acked) >= 300, "the writer died before acknowledging enough points"
    with EdgeStore(root) as store:
        found = store.retrieve("c", acked, with_payload=True)
        assert [r.id for r in found] == acked
        assert all(r.payload["i"] == r.id for r in found)
        assert store.count("c").count >= len(acked)


def test_concurrent_threads_are_safe(tmp_path):
    errors: list[BaseException] = []
    with EdgeStore(tmp_path / "s") as store:
        store.create_collection("c", vectors_config={"global": VECTORS["global"]})

        def writer(base: int) -> None:
            try:
                for i in range(40):
                    store.upsert("c", [models.PointStruct(id=base + i, vector={"global": [1.0 + i] * DIM})])
                    store.query_points("c", query=[1.0] * DIM, using="global", limit=5)
                    store.count("c")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(1000 * t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.count("c").count == 160


def test_optimize_builds_the_index(tmp_path):
    points, _ = _vectors(400)
    with EdgeStore(tmp_path / "s") as store:
        # indexing_threshold 1 KB: the engine indexes even this small collection.
        store.create_collection("c", vectors_config=VECTORS,
                                optimizers_config=models.OptimizersConfigDiff(indexing_threshold=1))
        store.upsert("c", points)
        assert store.unindexed_count("c") == 400
        assert store.maybe_optimize("c", min_unindexed=401) is False
        assert store.unindexed_count("c") == 400
        exact = store.query_points("c", query=points[9].vector["global"], using="global", limit=10,
                                   search_params=models.SearchParams(exact=True))
        assert store.maybe_optimize("c", min_unindexed=400) is True
        assert store.unindexed_count("c") == 0
        hnsw = store.query_points("c", query=points[9].vector["global"], using="global", limit=10,
                                  search_params=models.SearchParams(hnsw_ef=100))
        assert [p.id for p in hnsw.points][:5] == [p.id for p in exact.points][:5]
        assert store.count("c").count == 400


def test_unsupported_and_invalid_requests_are_clear_errors(pair):
    edge, _, _, queries = pair
    with pytest.raises(InvalidFilterError, match="invalid filter") as info:
        edge.count("c", count_filter={"must": [{"key": "s", "match": {"valu": "a"}}]})
    assert len(str(info.value)) < 400
    with pytest.raises(InvalidFilterError, match="no match, range"):
        to_edge({"must": [{"key": "s"}]})
    with pytest.raises(UnsupportedFilterError, match="object"):
        to_edge(models.Filter.model_construct(must=[object()]))
    with pytest.raises(UnsupportedFilterError):
        edge.scroll("c", scroll_filter="s == a")
    with pytest.raises(StoreError, match="lookup_from is not supported"):
        edge.query_points("c", prefetch=models.Prefetch(query=queries[0], using="global", limit=5,
                                                        lookup_from=models.LookupLocation(collection="other")),
                          query=[queries[0]], using="tokens")
    with pytest.raises(StoreError, match="not supported"):
        edge.query_points("c", query=models.RecommendQuery(recommend=models.RecommendInput(positive=[1])),
                          using="global")
    with pytest.raises(NotFoundError, match="No point with id"):
        edge.query_points("c", query=123_456, using="global")
    with pytest.raises(StoreError, match="invalid point id"):
        edge.retrieve("c", ["not-a-uuid"])
    with pytest.raises(CollectionNotFoundError):
        edge.query_points("missing", query=queries[0], using="global")


def test_store_folder_layout(tmp_path):
    root = tmp_path / "s"
    with EdgeStore(root) as store:
        store.create_collection("a__v1", vectors_config={"global": VECTORS["global"]})
        store.update_collection_aliases(change_aliases_operations=[models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name="a__v1", alias_name="a"))])
    assert (root / ".lock").is_file()
    assert (root / "aliases.json").is_file()
    assert (root / "collections" / "a__v1" / "edge_config.json").is_file()
    assert sorted(p.name for p in (root / "collections").iterdir()) == ["a__v1"]
    assert not list(Path(root).glob("*.tmp"))


def test_a_local_mode_folder_is_refused_clearly(tmp_path):
    local = QdrantClient(path=str(tmp_path / "old"))
    local.create_collection("c", vectors_config={"global": VECTORS["global"]})
    local.close()
    with pytest.raises(StoreError, match="local-mode"):
        EdgeStore(tmp_path / "old")


def test_requests_the_engine_rejects_are_store_errors(tmp_path):
    from hark.store import StoreError

    with EdgeStore(tmp_path / "s") as store:
        store.create_collection("c", vectors_config={"v": models.VectorParams(size=2, distance=models.Distance.DOT)})
        store.upsert("c", [models.PointStruct(id=1, vector={"v": [1.0, 0.0]})])
        with pytest.raises(StoreError, match="Fusion without prefetch"):
            store.query_points("c", query=models.FusionQuery(fusion=models.Fusion.RRF), limit=3)


def _wal_bytes(store: EdgeStore, collection: str) -> int:
    wal = store.path / "collections" / collection / "wal"
    return sum(f.stat().st_size for f in wal.iterdir())


def test_a_long_ingest_keeps_the_wal_short(tmp_path, monkeypatch):
    """The engine drops WAL segments only when flushed, and has no background flush: writes flush on a timer."""
    import hark.store.edge as edge

    monkeypatch.setattr(edge, "FLUSH_INTERVAL_S", 0.0)  # flush after every write, so a short test sees many
    dim, batch, batches = 2048, 500, 40  # 40 x 500 x 8 KiB = 164 MB of vectors through the log
    with EdgeStore(tmp_path / "s") as store:
        store.create_collection("c", vectors_config={
            "global": models.VectorParams(size=dim, distance=models.Distance.COSINE)})
        row = [0.5] * dim
        for b in range(batches):
            store.upsert("c", models.Batch(ids=list(range(b * batch, (b + 1) * batch)),
                                           vectors={"global": [row] * batch}))
        written = batches * batch * dim * 4
        # Without the flushes the log held everything written (measured: 167 MB for 80 MB of vectors).
        assert _wal_bytes(store, "c") < written * 0.75, (_wal_bytes(store, "c"), written)
        assert store.count("c").count == batches * batch


_EMPTIES: list = []  # the store's no-ops seen by the spy, kept alive so that identity means something


class _SpyShard:
    """Records the operations a store sends to one engine shard ("empty" for the store's no-op); everything else
    passes through."""

    def __init__(self, shard) -> None:
        self.shard, self.ops = shard, []

    def update(self, op) -> None:
        self.ops.append("empty" if any(op is e for e in _EMPTIES) else "write")
        self.shard.update(op)

    def __getattr__(self, name):
        return getattr(self.shard, name)


def test_a_writer_ends_its_log_with_an_empty_operation(tmp_path, monkeypatch):
    """Loading a shard replays its newest WAL entry: a writer's last flush logs an empty delete, so the next open
    does not decode the last batch again; a reader writes nothing."""
    import hark.store.edge as edge

    made = edge._empty_operation

    def tracked():
        op = made()
        _EMPTIES.append(op)
        return op

    monkeypatch.setattr(edge, "_empty_operation", tracked)
    points, _ = _vectors(60)
    root = tmp_path / "s"
    with EdgeStore(root) as store:
        store.create_collection("c", vectors_config=VECTORS)
        spy = store._shards["c"] = _SpyShard(store._shard("c"))
        store.upsert("c", points)
        assert spy.ops == ["write"]
    assert spy.ops == ["write", "empty"]
    with EdgeStore(root) as store:
        spy = store._shards["c"] = _SpyShard(store._shard("c"))
        store.query_points("c", query=points[0].vector["global"], using="global", limit=3)
        store.flush()
        assert store.count("c").count == 60
    assert spy.ops == []  # a reader leaves the log as it was
    with EdgeStore(root) as store:
        spy = store._shards["c"] = _SpyShard(store._shard("c"))
        store.set_payload("c", {"x": 1}, points=[points[1].id])
        store.flush()
        store.flush()  # nothing written since the last seal: no second empty operation
        assert spy.ops == ["write", "empty"]
        assert store.retrieve("c", [points[1].id])[0].payload["x"] == 1


class _FullDiskShard(_SpyShard):
    def optimize(self):
        raise Exception("Service runtime error: Not enough space available for optimization, needed: 41.50 GiB, "
                        "available: 41.39 GiB")


def test_an_index_build_the_engine_refuses_is_a_store_error_and_never_fails_an_ingest(tmp_path, caplog,
                                                                                       monkeypatch):
    """The engine wants about 1.8x the folder free to build its index. Its refusal is a StoreError from
    `optimize`; after an ingest batch (`maybe_build_index`) it is a warning: the batch is stored and searchable."""
    from hark.store import maybe_build_index

    points, _ = _vectors(30)
    with EdgeStore(tmp_path / "s") as store:
        store.create_collection("c", vectors_config=VECTORS)
        store.upsert("c", points)
        store._shards["c"] = _FullDiskShard(store._shard("c"))
        with pytest.raises(StoreError, match="Not enough space"):
            store.optimize("c")
        with caplog.at_level("WARNING", logger="hark.store"):
            maybe_build_index(store, "c")  # 30 unindexed points: below the threshold, nothing to build
            assert caplog.records == []
            # Now as after a large batch: enough unindexed points to build.
            monkeypatch.setattr(store, "maybe_optimize", functools.partial(store.maybe_optimize, min_unindexed=1))
            maybe_build_index(store, "c")
        assert any("was not built" in r.getMessage() and "Not enough space" in r.getMessage()
                   for r in caplog.records)
        hits = store.query_points("c", query=points[3].vector["global"], using="global", limit=1)
        assert hits.points[0].id == points[3].id
