"""`hark serve`: the HTTP surfaces of DESIGN.md contract 3, as one ASGI app.

- POST /infer (also /api/v1/infer): Qdrant's external inference protocol, so a Qdrant server started with
  QDRANT__INFERENCE__ADDRESS=http://<hark>/infer embeds `Document(text=..., model="hark/...")` for any client.
- POST /collections/{name}/points/query and /points/query/batch: Qdrant-compatible; a hark `Document`
  query (bare or under "nearest") runs the prefilter + rerank; anything else goes to the upstream Qdrant.
- Every other route is passed through to the upstream Qdrant (a server URL), api-key header included; with
  the embedded folder, the read routes clients use (collections, retrieve, scroll, count, aliases) are
  answered from it in Qdrant's response shape.
- POST /search (hark's own API, in the OpenAPI schema), /healthz, /readyz, /metrics (Prometheus).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from hark.bundle import Bundle
from hark.errors import HarkError
from hark.registry import resolve_bundle
from hark.settings import Settings

from .search import MAX_CANDIDATES, MAX_LIMIT, AudioSearch, QueryError, parse_filter
from .store import connect, resolve_collection

log = logging.getLogger(__name__)

MODEL_PREFIX = "hark"


class SearchRequest(BaseModel):
    text: str = Field(..., description="what the recordings should sound like", examples=["a dog barks"])
    limit: int = Field(10, ge=1, le=MAX_LIMIT, description="number of hits")
    filter: dict[str, Any] | None = Field(None, description="Qdrant filter on the payload (e.g. meta.* fields)")
    collection: str | None = Field(None, description="collection or alias; default HARK_COLLECTION")
    candidates: int | None = Field(None, ge=1, le=MAX_CANDIDATES, description="prefilter size K")
    rerank: bool = Field(True, description="rerank the candidates with the attention head")
    group_by_source: bool = Field(False, description="one hit per recording (its best window)")


class HitModel(BaseModel):
    id: str
    score: float
    cosine: float
    rerank: float | None
    payload: dict[str, Any]
    source: str | None
    offset: float | None


class SearchResponse(BaseModel):
    hits: list[HitModel]
    timings_ms: dict[str, float]


def _qdrant_ok(result: Any, started: float) -> JSONResponse:
    return JSONResponse({"result": result, "status": "ok", "time": round(time.perf_counter() - started, 6)})


def _qdrant_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"status": {"error": message}, "time": 0.0}, status_code=status)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.stage = Histogram("hark_query_stage_seconds", "Query latency per stage", ["stage"],
                               registry=self.registry,
                               buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.candidates = Histogram("hark_query_candidates", "Candidates reranked per query", registry=self.registry,
                                    buckets=(10, 50, 100, 200, 500, 1000, 2000, 5000))
        self.requests = Counter("hark_requests_total", "Requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.errors = Counter("hark_errors_total", "Errors by kind", ["kind"], registry=self.registry)

    def observe(self, search: AudioSearch, candidates: int, queries: int = 1) -> None:
        for stage, seconds in search.last_times.__dict__.items():
            self.stage.labels(stage).observe(seconds)
        for _ in range(queries):
            self.candidates.observe(candidates)


def _document(query: Any) -> dict[str, Any] | None:
    """The Document of a query in either form ({"nearest": doc} or the bare doc), else None."""
    if isinstance(query, dict) and isinstance(query.get("nearest"), dict):
        query = query["nearest"]
    if isinstance(query, dict) and "text" in query and "model" in query:
        return query
    return None


def _select_payload(payload: dict[str, Any], spec: Any) -> dict[str, Any] | None:
    """Qdrant's with_payload: bool, a list of keys, or {"include": [...]} / {"exclude": [...]}."""
    if spec is None or spec is False:
        return None
    if spec is True:
        return payload
    if isinstance(spec, list):
        return {k: v for k, v in payload.items() if k in spec}
    if isinstance(spec, dict) and "include" in spec:
        return {k: v for k, v in payload.items() if k in spec["include"]}
    if isinstance(spec, dict) and "exclude" in spec:
        return {k: v for k, v in payload.items() if k not in spec["exclude"]}
    raise QueryError("with_payload must be a boolean, a list of keys, or {include|exclude: [...]}")


class Service:
    """Holds the bundle, the Qdrant client and the search facade behind the routes."""

    def __init__(self, settings: Settings, bundle: Bundle, client=None) -> None:
        self.settings = settings
        self.bundle = bundle
        self.client = client if client is not None else connect(settings)
        # The embedded client is not thread-safe; a server client is, but a lock costs nothing here.
        self.lock = threading.Lock()
        self.search = AudioSearch(self.client, bundle, settings.collection, settings.device, registry=settings)
        self.metrics = Metrics()
        self.upstream = None
        if settings.qdrant_url:
            import httpx

            self.upstream = httpx.AsyncClient(base_url=settings.qdrant_url.rstrip("/"), timeout=60)

    def model_names(self) -> dict[str, str]:
        """Model names this service answers for, and what each returns."""
        names = {}
        for ref in (MODEL_PREFIX, f"{MODEL_PREFIX}/{self.bundle.name}", f"{MODEL_PREFIX}/{self.bundle.version}"):
            names[ref] = "global"
            names[f"{ref}/text-tokens"] = "text-tokens"
        return names

    def check_model(self, model: Any) -> str:
        kind = self.model_names().get(model) if isinstance(model, str) else None
        if kind is None:
            raise QueryError(f"unknown model {model!r}; this hark serves {MODEL_PREFIX}/{self.bundle.name} "
                             f"(version {self.bundle.version})")
        return kind

    def collection_exists(self, name: str) -> bool:
        with self.lock:
            physical = resolve_collection(self.client, name)
            return self.client.collection_exists(physical)

    def run_search(self, texts: list[str], **kwargs: Any):
        with self.lock:
            results = self.search.search_batch(texts, **kwargs)
        self.metrics.observe(self.search, kwargs.get("candidates") or self.search.candidates, len(texts))
        return results


def _require_key(service: Service, request: Request) -> JSONResponse | None:
    key = service.settings.api_key
    if not key:
        return None
    given = request.headers.get("api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
    if given != key:
        return JSONResponse({"detail": "missing or wrong API key (header 'api-key')"}, status_code=401)
    return None


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise QueryError("request body must be JSON")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QueryError(f"request body is not valid JSON: {exc}") from exc


def create_app(settings: Settings | None = None, bundle: Bundle | str | None = None, client=None) -> FastAPI:
    settings = settings or Settings.load()
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(resolve_bundle(settings, bundle))
    service = Service(settings, bundle, client)
    app = FastAPI(title="hark", version=bundle.version,
                  description="Language-based audio search for Qdrant: cosine prefilter + cross-modal attention "
                              "rerank. Qdrant-compatible query routes and the external inference protocol.")
    app.state.service = service

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        service.metrics.requests.labels(getattr(route, "path", "passthrough"), str(response.status_code)).inc()
        return response

    @app.exception_handler(HarkError)
    async def hark_error(request: Request, exc: HarkError):
        service.metrics.errors.labels(type(exc).__name__).inc()
        if request.url.path.startswith("/collections"):
            return _qdrant_error(400, str(exc))
        if request.url.path.endswith("/infer"):
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"detail": str(exc)}, status_code=400)

    # -- hark's own routes ---------------------------------------------------------------------------
    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz():
        try:
            with service.lock:
                service.client.get_collections()
        except Exception as exc:  # any failure to reach Qdrant means not ready
            return JSONResponse({"ready": False, "bundle": bundle.version, "qdrant": f"unreachable: {exc}"},
                                status_code=503)
        return {"ready": True, "bundle": bundle.version, "qdrant": "reachable"}

    @app.get("/metrics", tags=["ops"])
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/search", response_model=SearchResponse, tags=["search"])
    async def search(body: SearchRequest, request: Request):
        denied = _require_key(service, request)
        if denied:
            return denied
        collection = body.collection or settings.collection
        if not await run_in_threadpool(service.collection_exists, collection):
            return JSONResponse({"detail": f"collection '{collection}' not found"}, status_code=404)
        hits = await run_in_threadpool(service.run_search, [body.text], limit=body.limit, filter=body.filter,
                                       candidates=body.candidates, rerank=body.rerank,
                                       group_by_source=body.group_by_source, collection=collection)
        return {"hits": [h.to_dict() for h in hits[0]], "timings_ms": service.search.last_times.as_ms()}

    # -- the search page and the audio it plays -------------------------------------------------------
    page = (Path(__file__).parent / "page.html").read_text(encoding="utf-8")

    @app.get("/ui", response_class=HTMLResponse, tags=["page"], summary="search page")
    def ui() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/audio/{point_id}", tags=["page"], summary="the source recording of a stored point")
    def audio(point_id: str, collection: str | None = None):
        """Streams a point's source file when this server can read it (range requests for seeking).

        Only files recorded in the collection's payloads are served, never arbitrary paths."""
        name = collection or settings.collection
        with service.lock:
            physical = resolve_collection(service.client, name)
            if not service.client.collection_exists(physical):
                return JSONResponse({"detail": f"collection '{name}' not found"}, status_code=404)
            try:
                records = service.client.retrieve(physical, [_point_id(point_id)], with_payload=["source_uri"])
            except (ValueError, TypeError):
                records = []
        if not records:
            return JSONResponse({"detail": f"no point {point_id} in '{name}'"}, status_code=404)
        source = (records[0].payload or {}).get("source_uri", "")
        path = Path(source.removeprefix("file://"))
        if not path.is_file():
            return JSONResponse({"detail": f"the source {source} is not readable by this server"}, status_code=404)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media)

    # -- Qdrant's external inference protocol -------------------------------------------------------
    async def infer(request: Request):
        body = await _json_body(request)
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list):
            raise QueryError("'inputs' must be a list")
        texts, kinds = [], []
        for i, item in enumerate(inputs):
            if not isinstance(item, dict):
                raise QueryError(f"inputs[{i}] must be an object")
            if item.get("data_type") != "text":
                raise QueryError(f"inputs[{i}]: hark embeds text (data_type 'text'), not {item.get('data_type')!r}; "
                                 "audio is ingested with `hark ingest`")
            kinds.append(service.check_model(item.get("model")))
            data = item.get("data")
            if not isinstance(data, str) or not data.strip():
                raise QueryError(f"inputs[{i}]: data must be a non-empty string")
            texts.append(data)
        if not texts:
            return {"embeddings": []}

        def embed():
            encoded = service.search.text.encode(texts)
            out = []
            for row, kind in enumerate(kinds):
                if kind == "global":
                    out.append(encoded.sentence[row].tolist())
                else:
                    length = int(encoded.mask[row].sum())
                    out.append(encoded.tokens[row, :length].tolist())
            return out

        return {"embeddings": await run_in_threadpool(embed)}

    app.add_api_route("/infer", infer, methods=["POST"], tags=["inference"],
                      summary="Qdrant external inference protocol")
    app.add_api_route("/api/v1/infer", infer, methods=["POST"], include_in_schema=False)

    # -- Qdrant-compatible query routes ---------------------------------------------------------------
    def _hark_query(name: str, req: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
        service.check_model(doc.get("model"))
        if req.get("prefetch"):
            raise QueryError("prefetch is not supported with a hark Document query")
        using = req.get("using")
        if using not in (None, "global"):
            raise QueryError(f"hark Document queries search the 'global' vector, not {using!r}")
        limit = req.get("limit", 10)
        offset = req.get("offset") or 0
        if not isinstance(limit, int) or not isinstance(offset, int) or offset < 0:
            raise QueryError("limit and offset must be integers")
        options = doc.get("options") or {}
        hits = service.run_search([doc.get("text", "")], limit=limit + offset, filter=req.get("filter"),
                                  candidates=options.get("candidates"), rerank=options.get("rerank", True),
                                  collection=name)[0][offset:]
        threshold = req.get("score_threshold")
        if threshold is not None:
            hits = [h for h in hits if h.score >= threshold]
        with_payload = req.get("with_payload", False)
        with_vector = req.get("with_vector", False)
        vectors: dict[str, Any] = {}
        if with_vector and hits:
            with service.lock:
                records = service.client.retrieve(resolve_collection(service.client, name), [h.id for h in hits],
                                                  with_payload=False, with_vectors=with_vector)
            vectors = {str(r.id): r.vector for r in records}
        points = [{"id": h.id, "version": 0, "score": h.score, "payload": _select_payload(h.payload, with_payload),
                   "vector": vectors.get(h.id), "shard_key": None, "order_value": None} for h in hits]
        return {"points": points}

    async def _query_one(name: str, req: Any) -> dict[str, Any] | None:
        """A hark query's result, or None when the request is for the upstream Qdrant."""
        if not isinstance(req, dict):
            raise QueryError("a query request must be a JSON object")
        doc = _document(req.get("query"))
        if doc is None or not str(doc.get("model", "")).startswith(MODEL_PREFIX):
            return None
        if not await run_in_threadpool(service.collection_exists, name):
            raise LookupError(name)
        parse_filter(req.get("filter"))
        return await run_in_threadpool(_hark_query, name, req, doc)

    @app.post("/collections/{name}/points/query", tags=["qdrant"])
    async def query_points(name: str, request: Request):
        started = time.perf_counter()
        body = await _json_body(request)
        try:
            result = await _query_one(name, body)
            if result is None:
                if service.upstream is not None:
                    return await passthrough(request, body)
                result = await run_in_threadpool(_local_query, name, body)
        except LookupError:
            return _qdrant_error(404, f"Not found: Collection `{name}` doesn't exist!")
        return _qdrant_ok(result, started)

    @app.post("/collections/{name}/points/query/batch", tags=["qdrant"])
    async def query_batch(name: str, request: Request):
        started = time.perf_counter()
        body = await _json_body(request)
        searches = body.get("searches") if isinstance(body, dict) else None
        if not isinstance(searches, list):
            raise QueryError("'searches' must be a list of query requests")

        def is_hark(req: Any) -> bool:
            doc = _document(req.get("query")) if isinstance(req, dict) else None
            return doc is not None and str(doc.get("model", "")).startswith(MODEL_PREFIX)

        if service.upstream is not None and not any(is_hark(r) for r in searches):
            return await passthrough(request, body)
        results = []
        for req in searches:
            try:
                result = await _query_one(name, req)
                if result is None:
                    if service.upstream is not None:
                        raise QueryError("a batch mixing hark Document queries with other queries is not "
                                         "supported; send them separately")
                    result = await run_in_threadpool(_local_query, name, req)
            except LookupError:
                return _qdrant_error(404, f"Not found: Collection `{name}` doesn't exist!")
            results.append(result)
        return _qdrant_ok(results, started)

    # -- everything else: the upstream Qdrant --------------------------------------------------------
    def _local_query(name: str, req: dict[str, Any]) -> dict[str, Any]:
        """A non-hark query against the embedded folder (it has no inference of its own)."""
        from pydantic import ValidationError
        from qdrant_client import models

        doc = _document(req.get("query"))
        if doc is not None:
            raise QueryError(f"model {doc.get('model')!r} is not served here: hark answers Document queries for "
                             f"{MODEL_PREFIX}/{bundle.name}, and the embedded Qdrant has no inference of its own")
        try:
            request = models.QueryRequest.model_validate(req)
        except ValidationError as exc:
            raise QueryError(f"Format error in JSON body: {exc.errors()[0].get('msg')}") from exc
        with service.lock:
            if not service.client.collection_exists(resolve_collection(service.client, name)):
                raise LookupError(name)
        with service.lock:
            response = service.client.query_points(
                name, query=request.query, using=request.using, query_filter=request.filter,
                limit=request.limit or 10, offset=request.offset, with_payload=request.with_payload or False,
                with_vectors=request.with_vector or False, score_threshold=request.score_threshold)
        return response.model_dump(mode="json")

    async def passthrough(request: Request, body: Any = None):
        if service.upstream is not None:
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() in {"api-key", "authorization", "content-type", "accept"}}
            if "api-key" not in {k.lower() for k in headers} and settings.qdrant_api_key:
                headers["api-key"] = settings.qdrant_api_key
            upstream = await service.upstream.request(request.method, request.url.path,
                                                      params=request.query_params, content=await request.body(),
                                                      headers=headers)
            return Response(upstream.content, status_code=upstream.status_code,
                            media_type=upstream.headers.get("content-type"))
        return await run_in_threadpool(_embedded_route, request.method, request.url.path, body,
                                       dict(request.query_params), time.perf_counter())

    def _embedded_route(method: str, path: str, body: Any, params: dict[str, str], started: float):
        """The read routes stock clients use, answered from the embedded folder in Qdrant's shape."""
        from qdrant_client import models

        parts = [p for p in path.split("/") if p]
        client = service.client
        try:
            with service.lock:
                if method == "GET" and not parts:
                    from importlib.metadata import version

                    # Clients compare this with their own version; the embedded engine is the client's.
                    return JSONResponse({"title": "qdrant - vector search engine (hark, embedded)",
                                         "version": version("qdrant-client")})
                if method == "GET" and parts == ["collections"]:
                    return _qdrant_ok(client.get_collections().model_dump(mode="json"), started)
                if method == "GET" and parts == ["aliases"]:
                    return _qdrant_ok(client.get_aliases().model_dump(mode="json"), started)
                if len(parts) >= 2 and parts[0] == "collections":
                    name = parts[1]
                    rest = parts[2:]
                    if method == "GET" and rest == ["exists"]:
                        return _qdrant_ok({"exists": client.collection_exists(resolve_collection(client, name))},
                                          started)
                    if method == "GET" and rest == ["aliases"]:
                        return _qdrant_ok(client.get_collection_aliases(name).model_dump(mode="json"), started)
                    physical = resolve_collection(client, name)
                    if not client.collection_exists(physical):
                        return _qdrant_error(404, f"Not found: Collection `{name}` doesn't exist!")
                    if method == "GET" and not rest:
                        return _qdrant_ok(client.get_collection(physical).model_dump(mode="json"), started)
                    if method == "POST" and rest == ["points"]:
                        req = models.PointRequest.model_validate(body or {})
                        records = client.retrieve(physical, req.ids, with_payload=req.with_payload or True,
                                                  with_vectors=req.with_vector or False)
                        return _qdrant_ok([r.model_dump(mode="json") for r in records], started)
                    if method == "GET" and len(rest) == 2 and rest[0] == "points":
                        records = client.retrieve(physical, [_point_id(rest[1])], with_payload=True,
                                                  with_vectors=True)
                        if not records:
                            return _qdrant_error(404, f"Not found: No point with id {rest[1]} found")
                        return _qdrant_ok(records[0].model_dump(mode="json"), started)
                    if method == "POST" and rest == ["points", "scroll"]:
                        req = models.ScrollRequest.model_validate(body or {})
                        points, next_offset = client.scroll(
                            physical, scroll_filter=req.filter, limit=req.limit or 10, offset=req.offset,
                            with_payload=req.with_payload if req.with_payload is not None else True,
                            with_vectors=req.with_vector or False, order_by=req.order_by)
                        return _qdrant_ok({"points": [p.model_dump(mode="json") for p in points],
                                           "next_page_offset": next_offset}, started)
                    if method == "POST" and rest == ["points", "count"]:
                        req = models.CountRequest.model_validate(body or {})
                        count = client.count(physical, count_filter=req.filter, exact=req.exact
                                             if req.exact is not None else True)
                        return _qdrant_ok(count.model_dump(mode="json"), started)
        except Exception as exc:
            from pydantic import ValidationError

            if isinstance(exc, ValidationError):
                return _qdrant_error(400, f"Format error in JSON body: {exc.errors()[0].get('msg')}")
            raise
        return _qdrant_error(501, f"{method} {path} is not available with the embedded Qdrant folder; run a Qdrant "
                                  "server (HARK_QDRANT_URL) for the full API")

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def catch_all(path: str, request: Request):
        body = None
        if request.method in {"POST", "PUT", "PATCH"} and service.upstream is None:
            raw = await request.body()
            if raw:
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    return _qdrant_error(400, "Format error in JSON body: not valid JSON")
        return await passthrough(request, body)

    return app


def _point_id(raw: str) -> int | str:
    return int(raw) if raw.isdigit() else raw
