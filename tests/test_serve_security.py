"""`hark serve` exposed: keys on every route, read-only callers, the pass-through's credentials, audio files
only under media roots, bounded bodies and JSON, and each hostile request of issue 12 a 4xx with a message."""

from __future__ import annotations

import re

import httpx
import pytest
from test_serve import DOC, fill, random_bundle, settings_for

FULL, READ = "full-s3cret", "read-s3cret"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    from fastapi.testclient import TestClient

    from hark.bundle import Bundle
    from hark.plugin.serve import create_app
    from hark.store import connect

    tmp = tmp_path_factory.mktemp("keyed")
    bundle = Bundle.load(random_bundle(tmp / "b"))
    settings = settings_for(tmp, HARK_API_KEY=FULL, HARK_READ_ONLY_API_KEY=READ, HARK_MAX_BODY_BYTES="65536",
                            HARK_MAX_JSON_DEPTH="16")
    client = connect(settings)
    info = fill(client, bundle, 60, tmp / "media")
    app = create_app(settings, bundle, client=client)
    with TestClient(app) as http:
        yield {"http": http, "app": app, "bundle": bundle, "tmp": tmp, **info}
    client.close()


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: "sounds" if m.group() == "{name}" else "1", path).replace("{path:path}",
                                                                                                    "x")


def all_routes(routes) -> list:
    """Every endpoint route of the app, through included routers (FastAPI wraps those in recent versions)."""
    found = []
    for route in routes:
        inner = getattr(route, "original_router", None) or (route if hasattr(route, "routes") and
                                                             not hasattr(route, "methods") else None)
        if inner is not None:
            found += all_routes(inner.routes)
        else:
            found.append(route)
    return found


def test_every_route_but_the_probes_needs_a_key(keyed):
    http = keyed["http"]
    checked = 0
    for route in all_routes(keyed["app"].routes):
        for method in sorted(getattr(route, "methods", None) or []):
            if method == "HEAD":
                continue
            path = _concrete(route.path)
            response = http.request(method, path, json={})
            if route.path in {"/healthz", "/readyz", "/ui"}:
                assert response.status_code < 400, (method, path)
                continue
            assert response.status_code == 401, (method, path, response.status_code)
            wrong = http.request(method, path, json={}, headers={"api-key": "nope"})
            assert wrong.status_code == 401, (method, path)
            checked += 1
    assert checked >= 15  # the query, infer, audio, metrics, docs, read and pass-through routes at least


def test_key_as_header_or_bearer_and_infer_body_token(keyed):
    http = keyed["http"]
    for headers in ({"api-key": FULL}, {"authorization": f"Bearer {FULL}"}, {"api-key": READ}):
        assert http.post("/collections/sounds/points/query", json={"query": DOC, "limit": 2},
                         headers=headers).status_code == 200
    body = {"inputs": [{"data": "a dog", "data_type": "text", "model": "hark", "options": None}],
            "inference": "search"}
    assert http.post("/infer", json=body).status_code == 401
    assert http.post("/infer", json=dict(body, token="nope")).status_code == 401
    ok = http.post("/infer", json=dict(body, token=READ))
    assert ok.status_code == 200 and len(ok.json()["embeddings"]) == 1


def test_read_only_key_reads_but_never_writes(keyed):
    http = keyed["http"]
    ro = {"api-key": READ}
    assert http.post("/collections/sounds/points/count", json={}, headers=ro).status_code == 200
    for method, path in [("DELETE", "/collections/sounds"), ("PUT", "/collections/sounds/points"),
                         ("POST", "/collections/sounds/points/delete"), ("PUT", "/collections/new")]:
        response = http.request(method, path, json={}, headers=ro)
        assert response.status_code == 403, (method, path)
        assert "read-only" in response.json()["status"]["error"]


def test_passthrough_never_sends_the_upstream_key(tmp_path, keyed):
    """A server upstream that requires a key: hark forwards the caller's own headers, never its own key."""
    from fastapi.testclient import TestClient

    from hark.plugin.serve import create_app

    seen = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.headers))
        return httpx.Response(200, json={"result": True, "status": "ok", "time": 0})

    settings = settings_for(tmp_path, HARK_QDRANT_URL="http://upstream:6333", HARK_QDRANT_API_KEY="upstream-key",
                            HARK_API_KEY=FULL, HARK_READ_ONLY_API_KEY=READ)
    app = create_app(settings, keyed["bundle"], client=keyed["app"].state.service.client)
    app.state.service.upstream = httpx.AsyncClient(base_url="http://upstream:6333",
                                                   transport=httpx.MockTransport(upstream))
    with TestClient(app) as http:
        assert http.delete("/collections/sounds").status_code == 401
        assert http.delete("/collections/sounds", headers={"api-key": READ}).status_code == 403
        assert seen == []
        assert http.delete("/collections/sounds", headers={"api-key": FULL}).status_code == 200
        assert http.get("/collections", headers={"api-key": READ}).status_code == 200
    assert len(seen) == 2
    assert all("upstream-key" not in str(h.values()) for h in seen)


def test_audio_serves_only_files_under_media_roots_with_ranges(keyed, tmp_path):
    http = keyed["http"]
    key = {"api-key": READ}
    whole = http.get(f"/audio/{keyed['wav']}", headers=key)
    assert whole.status_code == 200 and whole.content[:4] == b"RIFF"
    part = http.get(f"/audio/{keyed['wav']}", headers={**key, "range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100
    for point in (keyed["passwd"], "00000000-0000-0000-0000-0000000000ff", "not-an-id", "..%2F..%2Fetc%2Fpasswd"):
        response = http.get(f"/audio/{point}", headers=key)
        assert response.status_code == 404 and "root:" not in response.text, point


def test_audio_refuses_a_symlink_out_of_the_media_root(keyed):
    from qdrant_client import models

    media = keyed["tmp"] / "media"
    link = media / "escape.wav"
    link.symlink_to("/etc/passwd")
    client = keyed["app"].state.service.client
    client.upsert(keyed["physical"], [models.PointStruct(id=999, vector={
        "global": [0.1] * keyed["bundle"].vectors()[0].size}, payload={"source_uri": str(link)})], wait=True)
    response = keyed["http"].get("/audio/999", headers={"api-key": FULL})
    assert response.status_code == 404 and "root:" not in response.text


def test_default_media_roots_are_the_folders_ingestion_recorded(tmp_path):
    import json

    from hark.plugin.serve.media import MediaRoots

    (tmp_path / "state" / "jobs").mkdir(parents=True)
    (tmp_path / "audio").mkdir()
    song = tmp_path / "audio" / "a.wav"
    song.write_bytes(b"RIFF")
    (tmp_path / "elsewhere.wav").write_bytes(b"RIFF")
    (tmp_path / "state" / "jobs" / "j.json").write_text(json.dumps({"meta": {}, "files": {
        str(song): {"status": "ingested", "reason": ""}, "/etc/shadow": {"status": "failed", "reason": "x"}}}))
    roots = MediaRoots(settings_for(tmp_path, HARK_MEDIA_ROOTS=""))
    assert roots.roots() == [(tmp_path / "audio").resolve()]
    assert roots.resolve(str(song)) == song.resolve()
    assert roots.resolve(str(tmp_path / "elsewhere.wav")) is None
    assert MediaRoots(settings_for(tmp_path / "empty", HARK_MEDIA_ROOTS="")).resolve(str(song)) is None


def test_body_size_limit_before_the_key_check_and_while_streaming(keyed):
    http = keyed["http"]
    big = b"{" + b" " * 70000 + b"}"
    response = http.post("/collections/sounds/points/query", content=big)  # no key: refused for size first
    assert response.status_code == 413 and "HARK_MAX_BODY_BYTES" in response.json()["status"]["error"]

    def chunks():
        for _ in range(20):
            yield b" " * 5000

    streamed = http.post("/infer", content=chunks(), headers={"api-key": FULL})
    assert streamed.status_code == 413 and "error" in streamed.json()


@pytest.mark.parametrize("path", ["/infer", "/collections/sounds/points/query", "/search"])
def test_deep_json_is_a_400(keyed, path):
    deep = '{"filter": ' + '{"must": [' * 3000 + "]}" * 3000 + "}"
    response = keyed["http"].post(path, content=deep, headers={"api-key": FULL, "content-type": "application/json"})
    assert response.status_code == 400 and "nesting" in response.text


@pytest.mark.parametrize("body, message", [
    ({"query": DOC, "score_threshold": "x"}, "score_threshold"),
    ({"query": DOC, "with_payload": {"include": 5}}, "with_payload"),
    ({"query": DOC, "with_vector": "x"}, "with_vector"),
    ({"query": dict(DOC, options="x")}, "options"),
    ({"query": {"text": "a dog"}}, "model"),
    ({"query": 1}, "No point with id 1"),  # a bare id searches by that point, as on a server
    ({"query": {"fusion": "rrf"}}, ""),
    ({"query": DOC, "filter": {"must": [{"key": "", "match": {"value": 1}}]}}, ""),
    ({"query": DOC, "limit": -1}, "limit"),
    ({"query": DOC, "offset": -5}, ""),
    ({"query": [0.1, "x"]}, "Format error"),
    ({"limit": 2 ** 64}, ""),  # past the engine's integers: an OverflowError in its bindings (fuzz)
    ({"query": [0.5] * 64, "using": "global", "offset": 2 ** 64}, ""),
])
def test_hostile_queries_get_a_4xx_in_qdrants_shape(keyed, body, message):
    response = keyed["http"].post("/collections/sounds/points/query", json=body, headers={"api-key": FULL})
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["status"]["error"]
    assert message in error


def test_hostile_reads_get_a_4xx(keyed):
    http = keyed["http"]
    key = {"api-key": FULL}
    assert http.post("/collections/sounds/points/scroll", json={"limit": -1}, headers=key).status_code == 400
    assert http.post("/collections/sounds/points/scroll", json={"filter": {"must": [{"key": ""}]}},
                     headers=key).status_code == 400
    assert http.post("/collections/sounds/points/scroll", json={"limit": 2 ** 64}, headers=key).status_code == 400
    assert http.post("/collections/sounds/points/query/batch", json={"searches": [{"limit": 2 ** 64}]},
                     headers=key).status_code == 400
    assert http.get("/collections/sounds/points/not-an-id", headers=key).status_code == 400
    # Digits to str.isdigit() but not to int() ("²"), and an integer past Qdrant's u64 ids (fuzz).
    for raw in ("%C2%B2", "%D9%A3", str(2 ** 64), "1" * 5000):  # 5000 digits: past int()'s 4300-digit limit
        response = http.get(f"/collections/sounds/points/{raw}", headers=key)
        assert response.status_code == 400 and "not a valid point id" in response.json()["status"]["error"], raw
    assert http.get("/collections/nope", headers=key).status_code == 404
    assert http.post("/search", json={"text": "dog", "filter": {"must": [{"key": ""}]}},
                     headers=key).status_code == 400
