"""`hark serve` (hark.plugin.serve): Qdrant compatibility, readiness, micro-batching and per-request timings.

Runs on a random tiny bundle (exported in seconds, no training) and an embedded store filled with random
clips, so it does not need the session-wide trained model.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from hark.settings import Settings

WORDS = ["a", "dog", "barks", "rain", "falls", "siren", "wails", "bell", "rings", "bird", "chirps", "engine", "hums"]


def random_bundle(out: Path) -> Path:
    """A tiny joint model with random weights, exported with int8 encoders."""
    torch = pytest.importorskip("torch")
    from hark.exporters.onnx_export import export_bundle
    from hark.text import train_bpe_tokenizer
    from hark.training.config import load_config
    from hark.training.model import RetrievalModel

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tokenizer = train_bpe_tokenizer([" ".join(WORDS)] * 20, 300)
    model = RetrievalModel(load_config("tiny", []), tokenizer).eval()
    torch.save(model.checkpoint_payload(), out / "model.pt")
    return export_bundle(out / "model.pt", out / "bundle", precision="int8")


def settings_for(tmp: Path, **extra: str) -> Settings:
    env = {"HARK_QDRANT_PATH": str(tmp / "qdrant"), "HARK_STATE_DIR": str(tmp / "state"), "HARK_DEVICE": "cpu",
           "HARK_COLLECTION": "sounds", "HARK_MODELS_DIR": str(tmp / "models"), "HARK_MEDIA_ROOTS": str(tmp / "media")}
    env.update(extra)
    return Settings.load(toml_path=tmp / "none.toml", env=env)


def audio_dim(bundle) -> int:
    """The segment embedding width (the manifest is a typed object or, in older bundles code, a dict)."""
    audio = bundle.manifest["audio"] if isinstance(bundle.manifest, dict) else bundle.manifest.audio
    return audio["embedding_dim"] if isinstance(audio, dict) else audio.embedding_dim


def fill(client, bundle, n: int, media: Path, seed: int = 0) -> dict:
    """n random clips in `sounds` (every 50th with an integer id), one with a real file under `media` and one
    whose source_uri names a file outside it. Returns the ids of interest."""
    from qdrant_client import models

    from hark.demo.synth import make_clip, write_audio
    from hark.store import ensure_collection

    rng = np.random.default_rng(seed)
    physical = ensure_collection(client, "sounds", bundle)
    clip = bundle.session("clip", "cpu")
    m, dim = bundle.max_segments, audio_dim(bundle)
    media.mkdir(parents=True, exist_ok=True)
    wav = write_audio(media / "clip.wav", make_clip(rng, 3.0, 32000)[0], 32000, 1)
    segs = rng.standard_normal((n, m, dim)).astype(np.float32)
    used = rng.integers(1, m + 1, size=n)
    mask = (np.arange(m)[None, :] < used[:, None]).astype(np.float32)
    glob, rows = clip.run(None, {"segment_embeddings": segs, "segment_mask": mask})
    ids: list[int | str] = [i if i % 50 == 0 else str(uuid.UUID(int=i)) for i in range(n)]
    points = []
    for i in range(n):
        payload = {"n": i, "windows": 1, "half": "a" if i % 2 == 0 else "b", "source_uri": f"/nowhere/{i}.wav"}
        if i == 1:
            payload["source_uri"] = str(wav)
        if i == 2:
            payload["source_uri"] = "/etc/passwd"
        points.append(models.PointStruct(id=ids[i], vector={"global": glob[i].tolist(),
                                                            "tokens": rows[i, : used[i]].tolist()}, payload=payload))
    client.upsert(physical, points, wait=True)
    return {"physical": physical, "wav": ids[1], "passwd": ids[2], "int": 0, "ids": ids}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A random bundle, a filled embedded store and the app on them (in-process)."""
    from hark.bundle import Bundle
    from hark.plugin.serve import create_app
    from hark.store import connect

    tmp = tmp_path_factory.mktemp("serve")
    bundle = Bundle.load(random_bundle(tmp / "b"))
    settings = settings_for(tmp)
    client = connect(settings)
    info = fill(client, bundle, 300, tmp / "media")
    app = create_app(settings, bundle, client=client)
    yield {"app": app, "client": client, "bundle": bundle, "settings": settings, "tmp": tmp, **info}
    client.close()


@pytest.fixture(scope="module")
def http(stack):
    from fastapi.testclient import TestClient

    with TestClient(stack["app"]) as client:
        yield client


def serve_in_thread(app):
    """(url, stop) of a uvicorn server running `app` on a free port."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop


@pytest.fixture(scope="module")
def url(stack):
    address, stop = serve_in_thread(stack["app"])
    yield address
    stop()


DOC = {"text": "a dog barks", "model": "hark"}


def q(http, body, name="sounds"):
    return http.post(f"/collections/{name}/points/query", json=body)


# -- Qdrant compatibility -----------------------------------------------------------------------------
def test_query_without_model_is_a_400(http):
    for query in ({"text": "a dog barks"}, {"nearest": {"text": "a dog barks"}}):
        response = q(http, {"query": query})
        assert response.status_code == 400, response.text
        assert "model" in response.json()["status"]["error"]


def test_paging_past_1000_matches_one_long_page(http):
    long = q(http, {"query": DOC, "limit": 1000}).json()["result"]["points"]
    # 300 points in all: a page that starts at 290 holds the last 10 of the long list.
    page = q(http, {"query": DOC, "limit": 995, "offset": 290}).json()
    assert [p["id"] for p in page["result"]["points"]] == [p["id"] for p in long[290:]]
    deep = q(http, {"query": DOC, "limit": 10, "offset": 1995})
    assert deep.status_code == 200 and deep.json()["result"]["points"] == []


@pytest.mark.parametrize(("candidates", "size"), [(None, 7), (None, 10), (64, 10), (64, 100)])
def test_pages_past_the_candidate_pool_cut_one_ranking(http, candidates, size):
    """Pages beyond the candidate pool (200 by default) re-ranked a pool that grew with the offset, which
    reshuffled the hits of earlier pages among new ones: paging repeated some hits and never showed others."""
    doc = DOC if candidates is None else dict(DOC, options={"candidates": candidates})
    pages = [q(http, {"query": doc, "limit": size, "offset": offset}).json()["result"]["points"]
             for offset in range(0, 300, size)]
    paged = [p["id"] for page in pages for p in page]
    assert len(paged) == len(set(paged)) == 300  # every point once
    block = max(candidates or 200, size)
    for number, page in enumerate(pages):
        if (number * size) // block == (number * size + len(page) - 1) // block:  # inside one block: sorted
            scores = [p["score"] for p in page]
            assert scores == sorted(scores, reverse=True)
    # A page as long as the collection is one block: sorted throughout.
    whole = [p["score"] for p in q(http, {"query": doc, "limit": 300}).json()["result"]["points"]]
    assert len(whole) == 300 and whole == sorted(whole, reverse=True)


def test_grouped_pages_read_further_blocks_when_a_few_recordings_fill_one(stack):
    """Grouped by recording, the 200 best windows may be a few long recordings': a page of 10 came back with 5
    hits and the next one empty, and the other recordings could not be paged to."""
    from qdrant_client import models

    from hark.plugin.search import AudioSearch
    from hark.store import ensure_collection

    client, bundle = stack["client"], stack["bundle"]
    plain = AudioSearch(client, bundle, "sounds", "cpu")
    ranked = [h.id for h in plain.query(["a dog barks"], limit=300, candidates=300, rerank=False).hits[0]]
    stored, _ = client.scroll(stack["physical"], limit=300, with_vectors=True)
    vectors = {p.id: p.vector for p in stored}
    target = ensure_collection(client, "grouped", bundle)
    recording = {pid: f"long{rank % 5}" if rank < 200 else f"short{rank}" for rank, pid in enumerate(ranked)}
    client.upsert(target, [models.PointStruct(id=pid, vector=vectors[pid], payload={
        "content_hash": rec, "source_uri": f"/nowhere/{rec}.wav", "windows": 40 if rec.startswith("long") else 1})
        for pid, rec in recording.items()], wait=True)
    grouped = AudioSearch(client, bundle, "grouped", "cpu")

    def page(offset: int, limit: int) -> list[str]:
        hits = grouped.query(["a dog barks"], limit=limit, offset=offset, group_by_source=True).hits[0]
        return [h.payload["content_hash"] for h in hits]

    whole = page(0, 105)
    assert len(whole) == len(set(whole)) == 105
    pages = [page(offset, 10) for offset in range(0, 110, 10)]
    assert [len(p) for p in pages] == [10] * 10 + [5]
    assert [rec for p in pages for rec in p] == whole


def test_integer_ids_stay_integers_and_omitted_fields_are_omitted(http, stack):
    points = q(http, {"query": DOC, "limit": 300}).json()["result"]["points"]
    ids = [p["id"] for p in points]
    assert 0 in ids and 50 in ids and "0" not in ids
    assert all(set(p) == {"id", "version", "score"} for p in points)
    with_all = q(http, {"query": DOC, "limit": 3, "with_payload": ["half"], "with_vector": ["global"]}).json()
    for p in with_all["result"]["points"]:
        assert set(p) == {"id", "version", "score", "payload", "vector"}
        assert set(p["payload"]) == {"half"} and len(p["vector"]["global"]) == stack["bundle"].vectors()[0].size


def test_prefetch_runs_in_embedded_mode_for_plain_queries_and_is_a_clear_400_for_hark(http, stack):
    vector = np.random.default_rng(1).standard_normal(stack["bundle"].vectors()[0].size).tolist()
    fused = q(http, {"prefetch": [{"query": vector, "using": "global", "limit": 20}],
                     "query": {"fusion": "rrf"}, "limit": 5})
    assert fused.status_code == 200, fused.text
    assert len(fused.json()["result"]["points"]) == 5
    hark = q(http, {"prefetch": [{"query": vector, "using": "global"}], "query": DOC})
    assert hark.status_code == 400 and "prefetch" in hark.json()["status"]["error"]


def test_batch_mixes_hark_and_plain_queries(http, stack):
    vector = np.random.default_rng(2).standard_normal(stack["bundle"].vectors()[0].size).tolist()
    response = http.post("/collections/sounds/points/query/batch", json={"searches": [
        {"query": DOC, "limit": 3}, {"query": vector, "using": "global", "limit": 2}]})
    assert response.status_code == 200, response.text
    first, second = response.json()["result"]
    assert len(first["points"]) == 3 and len(second["points"]) == 2


def test_a_batch_holds_a_bounded_number_of_hark_queries(http):
    """Each hark query is an encoder call, a prefilter and a rerank: one 500 KB batch of 10,000 of them held the
    service for a minute, so a batch over the cap is a 400 before any of them runs."""
    from hark.plugin.serve.qdrant import MAX_BATCH_QUERIES

    over = {"searches": [{"query": DOC, "limit": 1}] * (MAX_BATCH_QUERIES + 1)}
    response = http.post("/collections/sounds/points/query/batch", json=over)
    assert response.status_code == 400, response.text
    assert f"at most {MAX_BATCH_QUERIES}" in response.json()["status"]["error"]
    at_cap = http.post("/collections/sounds/points/query/batch",
                       json={"searches": [{"query": DOC, "limit": 1}] * MAX_BATCH_QUERIES})
    assert at_cap.status_code == 200 and len(at_cap.json()["result"]) == MAX_BATCH_QUERIES


def test_a_batchs_hark_queries_share_encoder_calls_and_keep_their_order(http, stack):
    """The hark queries of one query/batch run together, so the micro-batcher merges their encoder calls (they
    ran one after another: one call each); each result is still its own query's."""
    batcher = stack["app"].state.service.batcher
    texts = [f"{word} in the distance" for word in ("a dog", "rain", "a bell", "an engine", "birds", "wind",
                                                     "a siren", "speech", "a train", "water", "a car", "thunder")]
    alone = [http.post("/collections/sounds/points/query", json={"query": dict(DOC, text=t), "limit": 3}).json()
             for t in texts]
    before = batcher.calls
    response = http.post("/collections/sounds/points/query/batch", json={"searches": [
        {"query": dict(DOC, text=t), "limit": 3} for t in texts]})
    assert response.status_code == 200, response.text
    calls = batcher.calls - before
    assert calls < len(texts), calls
    for one, batched in zip(alone, response.json()["result"], strict=True):
        assert [p["id"] for p in batched["points"]] == [p["id"] for p in one["result"]["points"]]
    # Two bad queries: the first by position answers, as when the queries ran one by one.
    bad = http.post("/collections/sounds/points/query/batch", json={"searches": [
        {"query": DOC, "limit": 2}, {"query": DOC, "limit": 0}, {"query": DOC, "using": "tokens"}]})
    assert bad.status_code == 400 and "limit must be" in bad.json()["status"]["error"], bad.text


def test_infer_takes_a_bounded_number_of_inputs(http):
    """The inputs of one /infer request are one encoder call: 5,000 of them fit the body limit and made a single
    batch of 5,000 (minutes and gigabytes with a report-size encoder), so more than the cap is a 400."""
    from hark.plugin.serve.infer import MAX_INPUTS

    item = {"data": "a dog", "data_type": "text", "model": "hark", "options": None}
    over = http.post("/infer", json={"inputs": [item] * (MAX_INPUTS + 1), "inference": "search", "token": None})
    assert over.status_code == 400 and f"at most {MAX_INPUTS}" in over.json()["error"]
    at_cap = http.post("/infer", json={"inputs": [item] * MAX_INPUTS, "inference": "search", "token": None})
    assert at_cap.status_code == 200 and len(at_cap.json()["embeddings"]) == MAX_INPUTS


def test_inference_update_is_refused_with_the_reason(http):
    body = {"inputs": [{"data": "a dog", "data_type": "text", "model": "hark", "options": None}],
            "inference": "update", "token": None}
    response = http.post("/infer", json=body)
    assert response.status_code == 400 and "hark ingest" in response.json()["error"]


def test_root_answers_a_version_to_clients_and_redirects_browsers(http):
    assert http.get("/").json()["version"].startswith("1.")
    browser = http.get("/", headers={"accept": "text/html,application/xhtml+xml"}, follow_redirects=False)
    assert browser.status_code in {302, 307} and browser.headers["location"] == "/ui"


def test_stock_qdrant_client_queries_through_the_served_routes(url, stack):
    import warnings

    from qdrant_client import QdrantClient, models

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a version-compatibility warning would fail here
        remote = QdrantClient(url=url, cloud_inference=True, timeout=30)
        remote.get_collections()
    flt = models.Filter(must=[models.FieldCondition(key="half", match=models.MatchValue(value="a"))])
    bare = remote.query_points("sounds", query=models.Document(text="a bell rings", model="hark"), limit=5,
                               query_filter=flt, with_payload=True)
    assert len(bare.points) == 5 and all(p.payload["half"] == "a" for p in bare.points)
    nearest = remote.query_points("sounds", query=models.NearestQuery(
        nearest=models.Document(text="a bell rings", model=f"hark/{stack['bundle'].name}")), limit=5,
        query_filter=flt)
    assert [p.id for p in nearest.points] == [p.id for p in bare.points]
    batch = remote.query_batch_points("sounds", requests=[
        models.QueryRequest(query=models.Document(text="rain falls", model="hark"), limit=3),
        models.QueryRequest(query=models.Document(text="rain falls", model="hark"), limit=2, offset=1)])
    assert [p.id for p in batch[1].points] == [p.id for p in batch[0].points][1:3]
    assert remote.count("sounds").count == 300
    assert remote.collection_exists("sounds") and not remote.collection_exists("nope")
    page, _ = remote.scroll("sounds", limit=4, with_payload=True)
    assert len(page) == 4 and remote.retrieve("sounds", [page[0].id])[0].id == page[0].id
    with pytest.raises(Exception, match=r"400|model"):
        remote.query_points("sounds", query=models.Document(text="x", model="openai/clip"))


def test_js_client_queries_without_a_version_warning(url, tmp_path):
    import shutil
    import subprocess

    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("node/npm are not installed")
    js = Path(__file__).parent / "js"
    for name in ("package.json", "query.mjs"):
        shutil.copy(js / name, tmp_path / name)
    try:
        install = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("npm install timed out (no registry?)")
    if install.returncode != 0:
        pytest.skip(f"npm cannot install @qdrant/js-client-rest: {install.stderr[-300:]}")
    run = subprocess.run(["node", "query.mjs", url], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["points"] == 3 and result["warnings"] == [], result


# -- readiness ----------------------------------------------------------------------------------------
def test_starts_without_a_bundle_and_becomes_ready_once_one_is_registered(stack, tmp_path):
    from fastapi.testclient import TestClient

    from hark.plugin.serve import create_app
    from hark.registry import register

    settings = settings_for(tmp_path)
    app = create_app(settings, client=stack["client"])
    with TestClient(app) as http:
        response = http.get("/readyz")
        assert response.status_code == 503 and "no bundle" in response.json()["reason"]
        assert q(http, {"query": DOC}).status_code == 503
        # Plain queries need no bundle, also in a batch (whose hark queries run together, sized by the encoder).
        vector = [0.1] * stack["bundle"].vectors()[0].size
        plain = http.post("/collections/sounds/points/query/batch",
                          json={"searches": [{"query": vector, "using": "global", "limit": 2}]})
        assert plain.status_code == 200 and len(plain.json()["result"][0]["points"]) == 2, plain.text
        register(settings, stack["bundle"].root)
        time.sleep(1.1)  # the service looks for a bundle at most once a second
        response = http.get("/readyz")
        assert response.status_code == 200 and response.json()["bundle"] == stack["bundle"].version
        assert q(http, {"query": DOC, "limit": 2}).status_code == 200


def test_readyz_takes_no_query_lock(stack, http):
    service = stack["app"].state.service
    with service.store_lock(write=True):  # a long store write in progress
        started = time.perf_counter()
        assert http.get("/readyz").status_code == 200
        assert time.perf_counter() - started < 2


# -- parallel queries ---------------------------------------------------------------------------------
def test_concurrent_queries_share_an_encoder_call_and_keep_their_own_timings(stack):
    from concurrent.futures import ThreadPoolExecutor

    service = stack["app"].state.service
    search = service.search
    encode = service.batcher.encode
    # A slow encoder call for the first query only: the two requests' timings must differ by that.
    delays = iter([0.3])

    def slow_encode(encoder, texts):
        delay = next(delays, 0.0)
        time.sleep(delay)
        return encode(encoder, texts)

    def run(text):
        result = search.query([text], limit=3, encode=slow_encode, store_call=service.store)
        return result.times

    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(run, "a dog barks")
        time.sleep(0.05)
        fast = pool.submit(run, "rain falls")
        slow_times, fast_times = slow.result(), fast.result()
    assert slow_times.text_encoder >= 0.3 > fast_times.text_encoder
    # The thread-local accessor never shows another thread's call.
    search.search("a bell rings", limit=2)
    mine = search.last_times
    other = ThreadPoolExecutor(1).submit(lambda: search.last_times).result()
    assert mine.text_encoder > 0 and other.text_encoder == 0


def _fake_encoder(run=None, **extra):
    """A text encoder without a model: a 3-token tokenizer and a session whose `run` is given (default: ones)."""
    from types import SimpleNamespace

    def ones(_outputs, feeds):
        n = feeds["input_ids"].shape[0]
        return np.ones((n, 4), np.float32), np.ones((n, 3, 4), np.float32)

    return SimpleNamespace(
        tokenizer=SimpleNamespace(encode=lambda texts: (np.zeros((len(texts), 3), np.int64),
                                                         np.ones((len(texts), 3), np.int64))),
        session=SimpleNamespace(run=run or ones), **extra)


def _encode_concurrently(batcher, encoder, texts: list[str]) -> list:
    """Each text encoded by its own thread, all of them counted in flight first; the batcher is closed after."""
    from concurrent.futures import ThreadPoolExecutor

    for _ in texts:
        batcher.enter()
    try:
        with ThreadPoolExecutor(len(texts)) as pool:
            return list(pool.map(lambda t: batcher.encode(encoder, [t])[0], texts))
    finally:
        for _ in texts:
            batcher.leave()
        batcher.close()


def test_batcher_merges_concurrent_requests_into_one_encoder_call(stack):
    from hark.plugin.serve.batcher import TextBatcher

    encoder = stack["app"].state.service.search.text
    batcher = TextBatcher(wait_ms=200, max_batch=8)
    texts = ["a dog barks", "rain falls on a roof", "a bell", "bird chirps", "engine hums loudly", "siren"]
    parts = _encode_concurrently(batcher, encoder, texts)
    assert batcher.calls < len(texts)
    alone = encoder.encode(texts)
    for i, part in enumerate(parts):
        assert part.sentence.shape[0] == 1
        np.testing.assert_allclose(part.sentence[0], alone.sentence[i], atol=0.05)


@pytest.mark.parametrize("preferred", [2, 6])
def test_batcher_without_a_cap_takes_the_encoders_preferred_batch(preferred):
    """HARK_QUERY_BATCH_MAX 0 (the default): each call holds at most the encoder's `preferred_batch` queries
    (32 on CUDA, 8 on the CPU), so the same setting suits either device."""
    from hark.plugin.serve.batcher import TextBatcher

    sizes = []

    def run(_outputs, feeds):
        n = feeds["input_ids"].shape[0]
        sizes.append(n)
        return np.ones((n, 4), np.float32), np.ones((n, 3, 4), np.float32)

    batcher = TextBatcher(wait_ms=300, max_batch=0)
    parts = _encode_concurrently(batcher, _fake_encoder(run, preferred_batch=preferred),
                                 [f"sound {i}" for i in range(6)])
    assert [p.sentence.shape for p in parts] == [(1, 4)] * 6 and sum(sizes) == 6
    assert max(sizes) <= preferred and max(sizes) > 1  # merged, never past the encoder's batch


def test_encoders_choose_their_batches_by_provider(stack):
    from types import SimpleNamespace

    from hark.plugin.encoders import AUDIO_BATCH_SEGMENTS, TEXT_BATCH, AudioEncoder, runs_on

    service = stack["app"].state.service
    assert service.search.text.preferred_batch == TEXT_BATCH["cpu"] == 8  # no GPU in the tests' machines
    assert AudioEncoder(service.search.bundle, "cpu").batch_segments == AUDIO_BATCH_SEGMENTS["cpu"]
    assert AudioEncoder(service.search.bundle, "cpu", batch_segments=3).batch_segments == 3
    cuda = SimpleNamespace(get_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert runs_on(cuda) == "cuda" and TEXT_BATCH["cuda"] == AUDIO_BATCH_SEGMENTS["cuda"] == 32


def test_a_second_encoder_call_runs_while_one_is_in_flight():
    """Two requests that do not share a call are encoded at the same time (each call here waits for the other
    at a barrier: with one encoder thread the second call would start only after the first, which never ends)."""
    from concurrent.futures import ThreadPoolExecutor

    from hark.plugin.serve.batcher import TextBatcher

    barrier = threading.Barrier(2, timeout=10)

    def run(_outputs, feeds):
        barrier.wait()
        n = feeds["input_ids"].shape[0]
        return np.ones((n, 4), np.float32), np.ones((n, 3, 4), np.float32)

    encoder = _fake_encoder(run)
    # Each request fills a call on its own (max_batch texts), so the two can only meet at the barrier.
    batcher = TextBatcher(wait_ms=1, max_batch=2)
    try:
        with ThreadPoolExecutor(2) as pool:
            parts = list(pool.map(lambda t: batcher.encode(encoder, [t, t])[0], ["a", "b"]))
    finally:
        workers = list(batcher._workers)
        batcher.close()
    assert batcher.calls == 2 and [p.sentence.shape for p in parts] == [(2, 4), (2, 4)]
    assert len(workers) == 2 and not any(w.is_alive() for w in workers)  # close stopped every encoder thread


def test_an_encoder_call_that_raises_timeout_error_fails_its_requests_instead_of_hanging(monkeypatch):
    """A TimeoutError from the encoder (a socket timeout, a provider's own deadline) reaches the caller; the wait
    loop used to take it for its own poll timeout and spin forever."""
    from hark.plugin.serve import batcher as batching

    monkeypatch.setattr(batching, "STRANDED_CHECK_S", 0.05)

    def run(_outputs, _feeds):
        raise TimeoutError("the provider gave up")

    batcher = batching.TextBatcher(wait_ms=1, max_batch=8)
    outcome = []

    def call():
        try:
            batcher.encode(_fake_encoder(run), ["a dog"])
        except TimeoutError as exc:
            outcome.append(str(exc))

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=10)
    batcher.close()
    assert not caller.is_alive() and outcome == ["the provider gave up"]


def test_a_request_queued_after_close_stopped_the_encoder_threads_is_still_answered(monkeypatch):
    """A request that found the workers alive, then queued its texts after a concurrent `close` had stopped them,
    gets its rows (it used to wait forever)."""

    from hark.plugin.serve import batcher as batching

    monkeypatch.setattr(batching, "STRANDED_CHECK_S", 0.05)
    encoder = _fake_encoder()
    batcher = batching.TextBatcher(wait_ms=1, max_batch=8)
    batcher._ensure_thread()
    batcher.close()
    real = batcher._ensure_thread
    skipped = []

    def raced_once():  # the check ran before close() stopped the workers
        if not skipped:
            skipped.append(True)
            return None
        return real()

    batcher._ensure_thread = raced_once
    answered = []
    caller = threading.Thread(target=lambda: answered.append(batcher.encode(encoder, ["a dog"])[0]), daemon=True)
    caller.start()
    caller.join(timeout=10)
    batcher._ensure_thread = real
    batcher.close()
    assert answered and answered[0].sentence.shape == (1, 4)


def test_search_route_reports_its_own_timings_and_metrics(http):
    response = http.post("/search", json={"text": "a dog barks", "limit": 3})
    assert response.status_code == 200
    body = response.json()
    assert len(body["hits"]) == 3
    assert set(body["timings_ms"]) == {"tokenize", "text_encoder", "prefilter", "rerank", "fuse", "moments"}
    metrics = http.get("/metrics").text
    assert 'hark_query_stage_seconds_count{stage="rerank"}' in metrics and "hark_requests_total" in metrics


def test_search_route_pages_with_offset(http):
    """/search (the page's API) had no offset: a client could never see past its first page."""
    one = http.post("/search", json={"text": "a dog barks", "limit": 12}).json()
    assert one["next_offset"] == 12
    first = http.post("/search", json={"text": "a dog barks", "limit": 5}).json()
    second = http.post("/search", json={"text": "a dog barks", "limit": 7, "offset": first["next_offset"]}).json()
    assert [h["id"] for h in first["hits"] + second["hits"]] == [h["id"] for h in one["hits"]]
    assert second["next_offset"] == 12
    last = http.post("/search", json={"text": "a dog barks", "limit": 100, "offset": 290}).json()
    assert len(last["hits"]) == 10 and last["next_offset"] is None  # 300 points: a short page is the last
    for bad in ({"limit": 100, "offset": 4950}, {"offset": -1}, {"offset": "x"}, {"offset": 5000}):
        response = http.post("/search", json={"text": "a dog barks", **bad})
        assert 400 <= response.status_code < 500, (bad, response.status_code)
        assert "offset" in response.text


def test_batch_mixing_hark_and_plain_queries_with_a_server_upstream(stack, tmp_path):
    """The plain queries go to the server as one batch of their own; the answers come back in request order."""
    import httpx
    from fastapi.testclient import TestClient

    from hark.plugin.serve import create_app

    sent = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, json={"result": [{"points": [{"id": 7, "version": 1, "score": 0.5}]}],
                                         "status": "ok", "time": 0})

    settings = settings_for(tmp_path, HARK_QDRANT_URL="http://upstream:6333")
    app = create_app(settings, stack["bundle"], client=stack["client"])
    app.state.service.upstream = httpx.AsyncClient(base_url="http://upstream:6333",
                                                   transport=httpx.MockTransport(upstream))
    vector = [0.1] * stack["bundle"].vectors()[0].size
    with TestClient(app) as http:
        response = http.post("/collections/sounds/points/query/batch", json={"searches": [
            {"query": DOC, "limit": 2}, {"query": vector, "using": "global", "limit": 1}, {"query": DOC, "limit": 3}]})
    assert response.status_code == 200, response.text
    first, plain, third = response.json()["result"]
    assert len(first["points"]) == 2 and len(third["points"]) == 3
    assert plain == {"points": [{"id": 7, "version": 1, "score": 0.5}]}
    assert sent == [("/collections/sounds/points/query/batch",
                     {"searches": [{"query": vector, "using": "global", "limit": 1}]})]
