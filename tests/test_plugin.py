"""Queries: the facade, `hark serve` with stock qdrant-client, the inference protocol, rerank, bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_serve import serve_in_thread

from hark.bundle import Bundle
from hark.plugin.search import AudioSearch, QueryError
from hark.settings import Settings
from hark.workers.ingest import Item, collect_files
from hark.workers.submit import submit_job, wait_for


def _settings(tmp: Path, **extra) -> Settings:
    env = {"HARK_QDRANT_PATH": str(tmp / "qdrant"), "HARK_STATE_DIR": str(tmp / "state"), "HARK_DEVICE": "cpu",
           "HARK_COLLECTION": "sounds"}
    env.update(extra)
    return Settings.load(toml_path=tmp / "none.toml", env=env)


def _ingest(settings: Settings, corpus: Path, bundle: Path, collection: str = "sounds") -> None:
    files = collect_files([corpus / "evaluation"])
    items = [Item(f, {"half": "a" if i % 2 == 0 else "b"}) for i, f in enumerate(files)]
    job, store = submit_job(settings, items, collection, str(bundle))
    status = wait_for(store, job, timeout=5)
    assert status["ingested"] > 0


@pytest.fixture(scope="module")
def served(bundle_dir, corpus, tmp_path_factory):
    """The evaluation split ingested into an embedded Qdrant, and `hark serve` on it in a thread."""

    from hark.plugin.serve import create_app
    from hark.store import connect

    tmp = tmp_path_factory.mktemp("served")
    settings = _settings(tmp)
    _ingest(settings, corpus, bundle_dir)
    # A long recording: its 30 s windows are points of their own, played from their offset.
    from hark.demo.synth import make_clip, write_audio

    long_file = write_audio(tmp / "long field recording.wav", make_clip(np.random.default_rng(3), 70.0, 32000)[0],
                            32000, 1)
    job, store = submit_job(settings, [Item(str(long_file), {"half": "long"})], "sounds", str(bundle_dir))
    assert wait_for(store, job, timeout=5)["ingested"] == 1
    client = connect(settings)
    app = create_app(settings, str(bundle_dir), client=client)
    url, stop = serve_in_thread(app)
    facade = AudioSearch(client, Bundle.load(bundle_dir), "sounds", "cpu")
    yield {"url": url, "client": client, "facade": facade, "app": app, "settings": settings,
           "service": app.state.service}
    stop()
    client.close()


def _chromium() -> str:
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Chromium is not installed (scripts/test.sh installs it where apt-get is available)")
    return path


def test_search_page_in_headless_chromium(served):
    """Type a query, see ranked hits with score parts, and the first player loads its audio."""
    pw = pytest.importorskip("playwright.sync_api")
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(served["url"] + "/ui")
            page.fill("#q", "a dog barks while rain falls")
            page.click("button[type=submit]")
            page.wait_for_selector(".hit")
            assert page.locator(".hit").count() == 10
            assert "attention" in page.locator(".hit .parts").first.inner_text()
            page.wait_for_function("document.querySelector('audio').readyState >= 1", timeout=20000)
            duration = page.evaluate("document.querySelector('audio').duration")
            first_id = page.evaluate("document.querySelector('audio').src").rsplit("/", 1)[1].split("#")[0]
            with served["service"].store_lock():
                payload = served["client"].retrieve(served["client"].get_aliases().aliases[0].collection_name,
                                                    [first_id])[0].payload
            assert duration == pytest.approx(payload["duration"], abs=0.1)
            # Windows of a long recording play from their offset.
            page.fill("#filter", json.dumps({"must": [{"key": "meta.half", "match": {"value": "long"}}]}))
            page.click("button[type=submit]")
            page.wait_for_function("document.querySelectorAll('.hit').length === 3")
            sources = page.eval_on_selector_all("audio", "els => els.map(e => e.src)")
            # Each window's player starts at its hit's moment, which lies inside that window (0-30, 30-60, 60-70 s).
            starts = sorted(float(s.split("#t=")[1]) if "#t=" in s else 0.0 for s in sources)
            assert [int(t // 30) for t in starts] == [0, 1, 2], starts
            assert all(t.startswith("match ") and t.endswith(" · 1:10")
                       for t in page.locator(".hit .where").all_inner_texts())
            # A malformed filter is reported on the page, not thrown.
            page.fill("#filter", '{"must": [{"kee": 1}]}')
            page.click("button[type=submit]")
            # The status line already holds the previous answer; wait for this one's state, not for any text.
            page.wait_for_function("document.body.dataset.state === 'error'")
            assert "filter" in page.inner_text("#status")
        finally:
            browser.close()


def test_audio_route_serves_only_recorded_sources(served):
    import httpx

    with served["service"].store_lock():
        physical = served["client"].get_aliases().aliases[0].collection_name
        point = served["client"].scroll(physical, limit=1, with_payload=True)[0][0]
    response = httpx.get(f"{served['url']}/audio/{point.id}", headers={"range": "bytes=0-99"})
    assert response.status_code == 206 and len(response.content) == 100
    assert httpx.get(f"{served['url']}/audio/00000000-0000-0000-0000-000000000000").status_code == 404
    assert httpx.get(f"{served['url']}/audio/not-a-point-id").status_code == 404
    traversal = httpx.get(f"{served['url']}/audio/..%2F..%2Fetc%2Fpasswd")
    assert traversal.status_code in {404, 501} and "root:" not in traversal.text


def _captions(corpus: Path) -> list[tuple[str, str]]:
    from hark.training.run import load_split

    return [(ex.captions[0], ex.audio_path.name) for ex in load_split([corpus], "evaluation")]


def test_facade_finds_the_described_clip(served, corpus, trained_run):
    """Through Qdrant and the ONNX graphs, the facade ranks as the trained model does in PyTorch."""
    from hark.training.evaluate import score_split
    from hark.training.model import load_checkpoint
    from hark.training.run import load_split

    examples = load_split([corpus], "evaluation")
    model, _ = load_checkpoint(trained_run[0] / "best.pt")
    split = score_split(model.float().eval(), examples, progress=False)
    # Each clip's first caption (clips that do not decode are in neither ranking).
    first_rows = [int(np.flatnonzero(split.targets == column)[0]) for column in range(len(split.audio_names))]
    fused = split.scores["fused"][first_rows]
    reference = [int((row > row[i]).sum()) + 1 for i, row in zip(split.targets[first_rows], fused, strict=True)]

    ranks = []
    for row, name in zip(first_rows, split.audio_names, strict=True):
        caption = split.queries[row]
        with served["service"].store_lock():
            # Without the order term, which the PyTorch model's fused score does not have.
            hits = served["facade"].search(caption, limit=32, order=False)
        names = [h.payload["file_name"] for h in hits]
        ranks.append(names.index(name) + 1 if name in names else 33)
        assert hits == sorted(hits, key=lambda h: -h.score)
        assert all(h.rerank is not None for h in hits)
        fusion = served["facade"].fusion
        for h in hits:
            assert h.score == pytest.approx(fusion["cosine"] * h.cosine + fusion["attention"] * h.rerank, abs=1e-5)
    mrr = float(np.mean([1 / r for r in ranks]))
    expected = float(np.mean([1 / r for r in reference]))
    n = len(ranks)
    chance = sum(1 / r for r in range(1, n + 1)) / n
    # int8 encoders move scores slightly; the ranking quality must stay the model's, and above chance.
    assert abs(mrr - expected) < 0.06, (mrr, expected)
    assert mrr > 1.5 * chance, (mrr, chance)


def test_a_query_that_states_an_order_is_scored_with_the_hits_moments(served):
    """"A, then B": every hit with moments carries its order agreement, and its score is the fused score plus the
    manifest's order weight times it; a query without an order is scored as before."""
    facade = served["facade"]
    fusion = facade.fusion
    assert fusion["order"] > 0
    with served["service"].store_lock():
        ordered = facade.search("a dog barks, then a bell rings", limit=10)
        plain = facade.search("a dog barks and a bell rings", limit=10)
    assert ordered == sorted(ordered, key=lambda h: -h.score)
    assert all(h.order is not None and -1.0 <= h.order <= 1.0 for h in ordered)
    for h in ordered:
        fused = fusion["cosine"] * h.cosine + fusion["attention"] * h.rerank
        assert h.score == pytest.approx(fused + fusion["order"] * h.order, abs=1e-5)
    assert all(h.order is None for h in plain)
    assert all(h.moment is not None for h in ordered + plain)


def test_stock_qdrant_client_gets_the_facade_ranking(served, corpus):
    from qdrant_client import QdrantClient, models

    remote = QdrantClient(url=served["url"], cloud_inference=True, timeout=30)
    flt = models.Filter(must=[models.FieldCondition(key="meta.half", match=models.MatchValue(value="a"))])
    for caption, _ in _captions(corpus)[:5]:
        with served["service"].store_lock():
            expected = served["facade"].search(caption, limit=5)
            expected_a = served["facade"].search(caption, limit=5, filter=flt)
        bare = remote.query_points("sounds", query=models.Document(text=caption, model="hark"), using="global",
                                   limit=5, with_payload=True)
        nearest = remote.query_points("sounds", query=models.NearestQuery(
            nearest=models.Document(text=caption, model=f"hark/{served['facade'].bundle.name}")), limit=5)
        assert [str(p.id) for p in bare.points] == [h.id for h in expected]
        assert [str(p.id) for p in nearest.points] == [h.id for h in expected]
        assert [p.score for p in bare.points] == pytest.approx([h.score for h in expected], abs=1e-5)
        filtered = remote.query_points("sounds", query=models.Document(text=caption, model="hark"), limit=5,
                                       query_filter=flt, with_payload=["meta"])
        assert [str(p.id) for p in filtered.points] == [h.id for h in expected_a]
        assert all(p.payload == {"meta": {"half": "a"}} for p in filtered.points)
    batch = remote.query_batch_points("sounds", requests=[
        models.QueryRequest(query=models.Document(text="a bell rings", model="hark"), limit=3),
        models.QueryRequest(query=models.Document(text="rain falls", model="hark"), limit=2, filter=flt)])
    with served["service"].store_lock():
        assert [str(p.id) for p in batch[0].points] == [h.id for h in served["facade"].search("a bell rings", 3)]
    assert len(batch[1].points) == 2


def test_passthrough_routes_answer_as_the_upstream(served):
    from qdrant_client import QdrantClient

    remote = QdrantClient(url=served["url"], timeout=30)
    local = served["client"]
    with served["service"].store_lock():
        physical = local.get_aliases().aliases[0].collection_name
        direct_names = sorted(c.name for c in local.get_collections().collections)
        direct_count = local.count(physical).count
        direct_scroll, _ = local.scroll(physical, limit=4, with_payload=True)
    assert sorted(c.name for c in remote.get_collections().collections) == direct_names
    assert remote.count("sounds").count == direct_count
    page, _ = remote.scroll("sounds", limit=4, with_payload=True)
    assert [p.id for p in page] == [p.id for p in direct_scroll]
    assert [p.payload for p in page] == [p.payload for p in direct_scroll]
    got = remote.retrieve("sounds", [page[0].id], with_payload=True)
    assert got[0].payload == direct_scroll[0].payload
    assert remote.collection_exists("sounds") and not remote.collection_exists("nope")


def test_inference_protocol_shape(served):
    import httpx

    # The body Qdrant's inference service sends (InferenceRequest / InferenceInput in qdrant's
    # src/common/inference/service.rs): inputs with data, data_type, model, options; inference; token.
    body = {"inputs": [{"data": "a dog barks while rain falls", "data_type": "text", "model": "hark", "options": None},
                       {"data": "a siren wails", "data_type": "text",
                        "model": f"hark/{served['facade'].bundle.name}", "options": {"x": 1}},
                       {"data": "a bell rings", "data_type": "text", "model": "hark/text-tokens", "options": None}],
            "inference": "search", "token": None}
    response = httpx.post(served["url"] + "/infer", json=body, timeout=30)
    assert response.status_code == 200
    data = response.json()
    assert set(data) == {"embeddings"} and len(data["embeddings"]) == 3
    # Same batch as the request: int8 encoders quantise activations per batch, so batch-mates matter.
    expected = served["facade"].embed_text(["a dog barks while rain falls", "a siren wails", "a bell rings"])
    np.testing.assert_allclose(np.array(data["embeddings"][:2]), expected[:2], atol=1e-5)
    tokens = np.array(data["embeddings"][2])
    assert tokens.ndim == 2 and tokens.shape[0] >= 3  # a multi-dense vector: one row per text token
    assert httpx.post(served["url"] + "/api/v1/infer", json=body, timeout=30).status_code == 200
    bad = dict(body, inputs=[{"data": "x", "data_type": "text", "model": "openai/clip", "options": None}])
    response = httpx.post(served["url"] + "/infer", json=bad, timeout=30)
    assert response.status_code == 400 and "unknown model 'openai/clip'" in response.json()["error"]
    image = dict(body, inputs=[{"data": "http://x/y.png", "data_type": "image", "model": "hark", "options": None}])
    response = httpx.post(served["url"] + "/infer", json=image, timeout=30)
    assert response.status_code == 400 and "data_type" in response.json()["error"]


@pytest.mark.parametrize("method, path, payload, status, message", [
    ("post", "/search", {"text": "   "}, 400, "non-empty"),
    ("post", "/search", {"text": "dog", "collection": "nope"}, 404, "not found"),
    ("post", "/search", {"text": "dog", "filter": {"must": [{"kee": "x"}]}}, 400, "malformed filter"),
    ("post", "/search", {"text": "dog", "limit": 10**6}, 422, "less than or equal"),
    ("post", "/search", "not json", 422, "JSON"),
    ("post", "/collections/sounds/points/query", "not json", 400, "not valid JSON"),
    ("post", "/collections/nope/points/query", {"query": {"text": "dog", "model": "hark"}}, 404, "doesn't exist"),
    ("post", "/collections/sounds/points/query", {"query": {"text": "", "model": "hark"}}, 400, "non-empty"),
    ("post", "/collections/sounds/points/query", {"query": {"text": "dog", "model": "hark"}, "limit": 5000}, 400,
     "limit"),
    ("post", "/collections/sounds/points/query", {"query": {"text": "dog", "model": "hark"},
                                                  "filter": {"must": 3}}, 400, "filter"),
    ("post", "/collections/sounds/points/query", {"query": {"text": "dog", "model": "other/model"}}, 400,
     "not served"),
    ("post", "/infer", "{", 400, "not valid JSON"),
    ("post", "/infer", {"inputs": "x"}, 400, "must be a list"),
])
def test_bad_input_gets_a_4xx_with_a_message(served, method, path, payload, status, message):
    import httpx

    kwargs = {"content": payload} if isinstance(payload, str) else {"json": payload}
    response = getattr(httpx, method)(served["url"] + path, timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert message.lower() in response.text.lower()


def test_search_route_health_and_metrics(served):
    import httpx

    url = served["url"]
    response = httpx.post(url + "/search", json={"text": "a dog barks", "limit": 3, "group_by_source": True},
                          timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert len(body["hits"]) == 3 and set(body["timings_ms"]) == {"tokenize", "text_encoder", "prefilter",
                                                                   "rerank", "fuse", "moments"}
    assert {"id", "score", "cosine", "rerank", "payload", "source", "offset"} <= set(body["hits"][0])
    # Each hit says where in its recording the query matches: a span inside the hit's window, in seconds
    # from the recording's start (the long recording's windows begin at 30 s and 60 s).
    only_long = {"must": [{"key": "meta.half", "match": {"value": "long"}}]}
    long_hits = httpx.post(url + "/search", json={"text": "a dog barks", "limit": 3, "filter": only_long},
                           timeout=30).json()["hits"]
    assert sorted(h["payload"]["window_offset"] for h in long_hits) == [0.0, 30.0, 60.0]
    for hit in body["hits"] + long_hits:
        p = hit["payload"]
        assert p["window_offset"] <= hit["span_start"] < hit["span_end"] <= p["window_offset"] + p["window_duration"]
        assert hit["span_end"] - hit["span_start"] >= 2.0 - 1e-6 or hit["span_end"] == p["window_offset"] + p[
            "window_duration"]
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(url + "/readyz").json()["ready"] is True
    metrics = httpx.get(url + "/metrics").text
    assert 'hark_query_stage_seconds_count{stage="rerank"}' in metrics
    assert "hark_requests_total" in metrics and "hark_query_candidates" in metrics
    schema = httpx.get(url + "/openapi.json").json()
    assert "/search" in schema["paths"] and "/infer" in schema["paths"]


def test_api_key_guards_harks_own_routes(bundle_dir, served):
    from fastapi.testclient import TestClient

    from hark.plugin.serve import create_app

    settings = served["settings"]
    keyed = Settings(**{**{k: getattr(settings, k) for k in settings.__dataclass_fields__ if k != "sources"},
                        "api_key": "s3cret"})
    app = create_app(keyed, str(bundle_dir), client=served["client"])
    app.state.service.guard = served["service"].guard
    with TestClient(app) as http:
        assert http.post("/search", json={"text": "dog"}).status_code == 401
        assert http.post("/search", json={"text": "dog"}, headers={"api-key": "wrong"}).status_code == 401
        assert http.post("/search", json={"text": "dog"}, headers={"api-key": "s3cret"}).status_code == 200
        assert http.get("/healthz").status_code == 200


def test_rerank_lifts_the_clip_the_attention_head_prefers(trained_run, corpus, tmp_path):
    """A bundle whose cosine head is scrambled but whose attention head is trained: the rerank lifts the
    described clip to the top where the cosine ranking buried it; with the rerank off it stays buried."""
    import torch

    from hark.exporters.onnx_export import export_bundle
    from hark.store import connect
    from hark.training.model import load_checkpoint

    model, payload = load_checkpoint(trained_run[0] / "best.pt")
    torch.manual_seed(99)
    with torch.no_grad():
        for layer in (model.cosine.audio_proj, model.cosine.text_proj):
            layer.weight.copy_(torch.randn_like(layer.weight))
    payload["model"] = model.state_dict()
    # The fused score leans on the attention part, as a bundle tuned for reranking would.
    payload["config"]["heads"]["fusion_cosine"] = 0.1
    torch.save(payload, tmp_path / "scrambled.pt")
    bundle = export_bundle(tmp_path / "scrambled.pt", tmp_path / "bundle")
    settings = _settings(tmp_path)
    _ingest(settings, corpus, bundle)
    client = connect(settings)
    try:
        search = AudioSearch(client, bundle, "sounds", "cpu", candidates=100)
        lifted, ranks_on, ranks_off = 0, [], []
        for caption, name in _captions(corpus):
            on = [h.payload["file_name"] for h in search.search(caption, limit=100)]
            off = [h.payload["file_name"] for h in search.search(caption, limit=100, rerank=False)]
            ranks_on.append(on.index(name) + 1)
            ranks_off.append(off.index(name) + 1)
            if ranks_on[-1] == 1 and ranks_off[-1] > 3:
                lifted += 1
    finally:
        client.close()
    assert lifted >= 1
    assert np.mean([1 / r for r in ranks_on]) > 2 * np.mean([1 / r for r in ranks_off])


def test_facade_rejects_bad_arguments(served):
    facade = served["facade"]
    with served["service"].store_lock():
        with pytest.raises(QueryError, match="non-empty"):
            facade.search("")
        with pytest.raises(QueryError, match="limit"):
            facade.search("dog", limit=0)
        with pytest.raises(QueryError, match="candidates"):
            facade.search("dog", candidates=10**6)
        with pytest.raises(QueryError, match="not valid JSON"):
            facade.search("dog", filter="{nope")
        with pytest.raises(QueryError, match="list of texts"):
            facade.search_batch("dog")


def test_search_command(served, bundle_dir, corpus, tmp_path, capsys, monkeypatch):
    from hark.cli import main

    settings = _settings(tmp_path)
    _ingest(settings, corpus, bundle_dir)
    for key, value in {"HARK_QDRANT_PATH": settings.qdrant_path, "HARK_STATE_DIR": settings.state_dir,
                       "HARK_BUNDLE": str(bundle_dir), "HARK_COLLECTION": "sounds"}.items():
        monkeypatch.setenv(key, value)
    assert main(["search", "a bell rings", "--limit", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(out["hits"]) == 3 and out["hits"][0]["rerank"] is not None
    assert main(["search", "a bell rings", "--limit", "2", "--no-rerank"]) == 0
    table = capsys.readouterr().out
    assert table.count("\n") == 2 and "cos" in table and "att" not in table
    # Each line ends with the matched moment (the tiny model stores moments), e.g. "@ 4-8 s".
    assert all(re.search(r" @ \d+-\d+ s$", line) for line in table.splitlines()), table
    assert main(["search", "a dog barks, then a bell rings", "--limit", "2"]) == 0
    assert capsys.readouterr().out.count("order ") == 2
    assert main(["search", "x", "--collection", "nope"]) == 2
    assert "not found" in capsys.readouterr().err
    # A one-shot search on the embedded store never imports qdrant-client (0.45 s of pydantic models on an idle
    # machine; its moments read used to pull it in).
    done = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from hark.cli import main
        rc = main(["search", "a dog barks, then a bell rings", "--limit", "3", "--json"])
        print(rc, "qdrant_client" in sys.modules)
    """)], capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout.strip().splitlines()[-2])["hits"]
    assert len(hits) == 3 and all(h["moment"] is not None and h["order"] is not None for h in hits)
    assert done.stdout.strip().splitlines()[-1] == "0 False"


def test_without_rerank_hits_rank_by_cosine_even_when_the_fitted_fusion_ignores_it():
    from types import SimpleNamespace

    from hark.store.candidates import from_points

    points = from_points([SimpleNamespace(id=i, score=s, payload={}) for i, s in enumerate([0.2, 0.9, 0.5])], None)
    attention_only = {"cosine": 0.0, "attention": 1.0}
    hits = AudioSearch._fuse(attention_only, points, None, 3, False)
    assert [h.id for h in hits] == [1, 2, 0]
    assert [h.score for h in hits] == [0.9, 0.5, 0.2]
    reranked = AudioSearch._fuse(attention_only, points, np.array([0.1, 0.3, np.nan]), 3, False)
    assert [(h.id, h.score) for h in reranked] == [(2, 0.5), (1, 0.3), (0, 0.1)]


def test_a_candidate_without_clip_rows_stays_on_the_fused_scale():
    """Among reranked candidates, one without rows (deleted between search and read, or stored without `tokens`)
    is scored with its cosine standing in for the attention score: with weights 1 and 1 its cosine alone was half
    the scale of the others' and sank below weaker clips."""
    from types import SimpleNamespace

    from hark.store.candidates import from_points

    points = from_points([SimpleNamespace(id=i, score=s, payload={}) for i, s in enumerate([0.8, 0.5])], None)
    hits = AudioSearch._fuse({"cosine": 1.0, "attention": 1.0}, points, np.array([np.nan, 0.5]), 2, False)
    assert [(h.id, h.score, h.rerank) for h in hits] == [(0, 1.6, None), (1, 1.0, 0.5)]


def test_the_facade_keeps_the_sessions_of_a_few_model_versions_only(bundle_dir, monkeypatch):
    """Each re-index switch loads another version's sessions; the least recently used are dropped past
    MAX_ENGINES, so a long-running server does not hold every model it ever served."""
    from types import SimpleNamespace

    from hark.plugin import search as facade

    search = AudioSearch(None, bundle_dir, "audio", "cpu")
    monkeypatch.setattr(facade, "TextEncoder", lambda bundle, *_args: SimpleNamespace(version=bundle.version))
    monkeypatch.setattr(facade, "MAX_ENGINES", 2)

    def version(name: str):
        return SimpleNamespace(version=name, has_rerank=False, fusion={"cosine": 1.0})

    for name in ("v2", "v3", "v2", "v4"):
        search._use(version(name))
    assert list(search._engines) == ["v2", "v4"] and search.bundle.version == "v4"


def test_an_order_query_grouped_by_recording_keeps_limit_recordings():
    """The pool an order query re-scores counts recordings when hits are grouped: 4 long recordings whose 100
    windows hold the best cosines used to fill the 50-window pool, and 10 were asked for but 4 came back."""
    from hark.moments import MomentSpec
    from hark.plugin.search import ORDER_POOL, _flatten
    from hark.store.candidates import Candidates

    recordings = [f"long{i % 4}" if i < 100 else f"short{i}" for i in range(200)]
    candidates = Candidates(list(range(200)), np.array([1.0 - i / 1000 for i in range(200)]),
                            [{"content_hash": r, "source_uri": r} for r in recordings])
    plan = AudioSearch._plan({"cosine": 1.0}, candidates, None, 200, 10, True, order=True)
    pool, rest = plan[0]
    AudioSearch._order(pool, {}, np.zeros((2, 4)), MomentSpec(2.0, 1.0), 0.2)
    hits = _flatten(plan, True)[:10]
    assert [h.source for h in hits] == ["long0", "long1", "long2", "long3", *[f"short{i}" for i in range(100, 106)]]
    assert len({_h.source for _h in pool}) == ORDER_POOL and len(pool) == 100 + ORDER_POOL - 4
    assert not {_h.source for _h in pool} & {_h.source for _h in rest}


@pytest.mark.parametrize("group_by_source", [False, True])
@pytest.mark.parametrize("order", [False, True])
def test_every_page_cuts_the_same_ranking(group_by_source, order):
    """Pages are slices of one ranking whatever their offset: recordings whose windows straddle a block boundary
    come back once, and a deeper page never re-ranks the hits of earlier ones."""
    from hark.plugin.search import _flatten
    from hark.store.candidates import Candidates

    rng = np.random.default_rng(3)
    n, block = 180, 40
    recordings = [f"r{int(i)}" for i in rng.integers(0, 70, size=n)]
    candidates = Candidates(list(range(n)), np.sort(rng.uniform(0, 1, n))[::-1].copy(),
                            [{"content_hash": r, "source_uri": r} for r in recordings])
    att = rng.uniform(0, 1, n).astype(np.float32)

    def ranking(end: int) -> list:
        plan = AudioSearch._plan({"cosine": 1.0, "attention": 1.0}, candidates, att, block, end, group_by_source,
                                 order)
        return [h.id for h in _flatten(plan, group_by_source)]

    whole = ranking(n)
    assert len(whole) == len(set(whole))
    if group_by_source:
        assert len(whole) == len(set(recordings))
    for offset in range(0, len(whole), 9):
        assert ranking(offset + 9)[offset:offset + 9] == whole[offset:offset + 9]
