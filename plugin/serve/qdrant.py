"""Qdrant-compatible routes: query and query/batch (hark Documents run prefilter + rerank), the read routes
stock clients use (answered from the embedded store, or forwarded to a server), and the pass-through.

Pass-through requests carry the caller's own credentials (its `api-key` / `Authorization` headers), never
HARK_QDRANT_API_KEY, which is hark's credential for its own store calls; writes reach it only from
full-access callers (the auth middleware answers 403 to a read-only key first).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ..search import MAX_CANDIDATES, MAX_LIMIT
from .bodies import json_body_schema, read_json, validated
from .errors import ApiError, qdrant_ok
from .service import MODEL_PREFIX, Service

# GET / reports this version with the embedded store. Stock clients warn when the server's minor version is
# more than one away from theirs: 1.19 keeps qdrant-client 1.18-1.20 and @qdrant/js-client-rest 1.18-1.20
# quiet (the versions this project installs and tests: see tests/js/package.json).
QDRANT_COMPAT_VERSION = "1.19.0"
FORWARDED_HEADERS = {"api-key", "authorization", "content-type", "accept"}

_ANY: dict[str, Any] = {}
_QUERY_PROPS: dict[str, Any] = {
    "query": {"description": "a hark Document {text, model: 'hark[/...]', options}, bare or under 'nearest'"},
    "using": {"type": "string"}, "filter": {"type": "object"}, "limit": {"type": "integer"},
    "offset": {"type": "integer"}, "score_threshold": {"type": "number"}, "with_payload": _ANY,
    "with_vector": _ANY, "prefetch": _ANY, "params": _ANY,
}


# hark queries in one query/batch request: each costs an encoder call, a prefilter and a rerank, so without a cap
# one small body (10,000 queries in 500 KB) held the service for a minute.
MAX_BATCH_QUERIES = 64
# Plain queries of an embedded batch run this many at a time (engine calls; no encoder to batch for).
PLAIN_BATCH_WIDTH = 8


def not_found(name: str) -> ApiError:
    return ApiError(404, f"Not found: Collection `{name}` doesn't exist!")


def document_of(query: Any) -> dict[str, Any] | None:
    """The Document of a query in either form ({"nearest": doc} or the bare doc), else None."""
    if isinstance(query, dict) and isinstance(query.get("nearest"), dict):
        query = query["nearest"]
    if isinstance(query, dict) and "text" in query:
        return query
    return None


def is_hark(req: Any) -> bool:
    """A query for a hark model; a Document without a model is a 400 (Qdrant needs one too)."""
    doc = document_of(req.get("query")) if isinstance(req, dict) else None
    if doc is None:
        return False
    model = doc.get("model")
    if model is None:
        raise ApiError(400, "a Document query needs a 'model' (for hark: \"hark\" or \"hark/<bundle name>\")")
    return isinstance(model, str) and (model == MODEL_PREFIX or model.startswith(MODEL_PREFIX + "/"))


def point_id(raw: str) -> int | str:
    """A path's point id: an unsigned 64-bit integer or a UUID (as Qdrant), else a 400."""
    # isdigit alone accepts "²", which int() refuses; u64 ids have at most 20 digits (int() refuses 4300+).
    if raw.isascii() and raw.isdigit() and len(raw) <= 20 and int(raw) < 2 ** 64:
        return int(raw)
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(400, f"Bad request: '{raw}' is not a valid point id (unsigned integer or UUID)") from None


def select_payload(payload: dict[str, Any], spec: Any) -> dict[str, Any] | None:
    """Qdrant's with_payload (already validated): bool, a list of keys, or an include/exclude selector."""
    from qdrant_client import models

    if spec is None or spec is False:
        return None
    if spec is True:
        return payload
    if isinstance(spec, list):
        return {k: v for k, v in payload.items() if k in spec}
    if isinstance(spec, models.PayloadSelectorInclude):
        return {k: v for k, v in payload.items() if k in spec.include}
    if isinstance(spec, models.PayloadSelectorExclude):
        return {k: v for k, v in payload.items() if k not in spec.exclude}
    raise ApiError(400, "with_payload must be a boolean, a list of keys, or {include|exclude: [...]}")


class QdrantRoutes:
    def __init__(self, service: Service) -> None:
        self.service = service

    # -- hark Document queries -----------------------------------------------------------------------
    def hark_query(self, name: str, req: dict[str, Any]) -> dict[str, Any]:
        from qdrant_client import models

        service = self.service
        doc = document_of(req.get("query")) or {}
        request = validated(models.QueryRequest, {k: v for k, v in req.items() if k != "query"})
        document = validated(models.Document, doc, "query")
        service.check_model(document.model)
        if request.prefetch:
            raise ApiError(400, "prefetch is not supported with a hark Document query: hark runs its own prefilter "
                                "(options.candidates) and rerank; send prefetch queries without a hark model")
        if request.lookup_from is not None:
            raise ApiError(400, "lookup_from is not supported with a hark Document query")
        if request.using not in (None, "global"):
            raise ApiError(400, f"hark Document queries search the 'global' vector, not {request.using!r}")
        limit = 10 if request.limit is None else request.limit
        offset = request.offset or 0
        if not 1 <= limit <= MAX_LIMIT or offset < 0 or limit + offset > MAX_CANDIDATES:
            raise ApiError(400, f"limit must be between 1 and {MAX_LIMIT} and offset non-negative, with "
                                f"limit + offset at most {MAX_CANDIDATES}")
        options = document.options or {}
        if not isinstance(options, dict):
            raise ApiError(400, "options must be an object: {\"candidates\": int, \"rerank\": bool}")
        candidates, rerank = options.get("candidates"), options.get("rerank", True)
        if candidates is not None and (not isinstance(candidates, int) or isinstance(candidates, bool)):
            raise ApiError(400, "options.candidates must be an integer")
        if not isinstance(rerank, bool):
            raise ApiError(400, "options.rerank must be a boolean")
        if not service.collection_exists(name):
            raise not_found(name)
        result = service.run_search([document.text], limit=limit, offset=offset, filter=request.filter,
                                    candidates=candidates, rerank=rerank, collection=name)
        hits = result.hits[0]
        if request.score_threshold is not None:
            hits = [h for h in hits if h.score >= request.score_threshold]
        vectors: dict[Any, Any] = {}
        if request.with_vector and hits:
            physical = result.collection  # where the hits came from, not where the alias points now
            records = service.store(lambda: service.client.retrieve(
                physical, [h.id for h in hits], with_payload=False, with_vectors=request.with_vector))
            vectors = {r.id: r.vector for r in records}
        points = []
        for h in hits:
            point: dict[str, Any] = {"id": h.id, "version": 0, "score": h.score}
            payload = select_payload(h.payload, request.with_payload)
            if payload is not None:
                point["payload"] = payload
            if request.with_vector:
                point["vector"] = vectors.get(h.id)
            points.append(point)
        return {"points": points}

    # -- plain queries against the embedded store ----------------------------------------------------
    def local_query(self, name: str, req: Any) -> dict[str, Any]:
        from qdrant_client import models

        service = self.service
        if not isinstance(req, dict):
            raise ApiError(400, "Format error in JSON body: a query request must be a JSON object")
        doc = document_of(req.get("query"))
        if doc is not None:
            raise ApiError(400, f"model {doc.get('model')!r} is not served here: hark answers Document queries for "
                                f"{MODEL_PREFIX}/{service.bundle.name}, and the embedded store has no inference "
                                "of its own")
        request = validated(models.QueryRequest, req)
        limit = 10 if request.limit is None else request.limit
        if limit < 0 or (request.offset or 0) < 0:
            raise ApiError(400, "Bad request: limit and offset must be non-negative")
        physical = service.physical(name)
        if not service.store(lambda: service.client.collection_exists(physical)):
            raise not_found(name)
        response = service.store(lambda: service.client.query_points(
            physical, query=request.query, using=request.using, prefetch=request.prefetch,
            query_filter=request.filter, search_params=request.params, limit=limit, offset=request.offset,
            with_payload=request.with_payload or False, with_vectors=request.with_vector or False,
            score_threshold=request.score_threshold, lookup_from=request.lookup_from))
        return response.model_dump(mode="json", exclude_none=True)

    async def one(self, name: str, req: Any, hark: bool | None = None) -> dict[str, Any] | None:
        """A hark query's (or an embedded plain query's) result, or None when it is for the upstream server.

        `hark` is `is_hark(req)` where the caller has it already (a batch decides it once per query).
        """
        if not isinstance(req, dict):
            raise ApiError(400, "Format error in JSON body: a query request must be a JSON object")
        if is_hark(req) if hark is None else hark:
            return await run_in_threadpool(self.hark_query, name, req)
        if self.service.upstream is not None:
            return None
        return await run_in_threadpool(self.local_query, name, req)

    # -- the upstream server -------------------------------------------------------------------------
    async def forward(self, request: Request, path: str | None = None, content: bytes | None = None) -> Response:
        service = self.service
        if service.upstream is None:
            raise ApiError(404, f"{request.method} {request.url.path} is not available with the embedded store; "
                                "run a Qdrant server (HARK_QDRANT_URL) for the full API")
        import httpx

        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
        try:
            upstream = await service.upstream.request(
                request.method, path or request.url.path, params=request.query_params,
                content=await request.body() if content is None else content, headers=headers)
        except httpx.HTTPError as exc:
            raise ApiError(503, f"Qdrant is unreachable: {exc}") from exc
        if upstream.status_code >= 500:
            raise ApiError(502, f"Qdrant answered {upstream.status_code}: {upstream.text[:500]}")
        return Response(upstream.content, status_code=upstream.status_code,
                        media_type=upstream.headers.get("content-type"))


def router(service: Service) -> APIRouter:
    from qdrant_client import models

    routes = QdrantRoutes(service)
    api = APIRouter(tags=["qdrant"])

    @api.get("/", summary="version (JSON clients); browsers are sent to the search page")
    async def root(request: Request):
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/ui", status_code=307)
        if service.upstream is not None:
            return await routes.forward(request)
        return {"title": "qdrant - vector search engine (hark)", "version": QDRANT_COMPAT_VERSION}

    @api.post("/collections/{name}/points/query", openapi_extra=json_body_schema(_QUERY_PROPS))
    async def query_points(name: str, request: Request):
        started = time.perf_counter()
        body = await read_json(request)
        result = await routes.one(name, body)
        if result is None:
            return await routes.forward(request)
        return qdrant_ok(result, started)

    @api.post("/collections/{name}/points/query/batch", openapi_extra=json_body_schema(
        {"searches": {"type": "array", "items": {"type": "object", "properties": _QUERY_PROPS}}}, ["searches"]))
    async def query_batch(name: str, request: Request):
        started = time.perf_counter()
        body = await read_json(request)
        searches = body.get("searches") if isinstance(body, dict) else None
        if not isinstance(searches, list):
            raise ApiError(400, "Format error in JSON body: 'searches' must be a list of query requests")
        kinds = [is_hark(req) for req in searches]
        hark = sum(kinds)
        if hark > MAX_BATCH_QUERIES:
            raise ApiError(400, f"a batch holds at most {MAX_BATCH_QUERIES} hark queries ({hark} here): each runs "
                                "the text encoder, a prefilter and a rerank; send several batches")
        # Together, not one after another, so that the micro-batcher merges their encoder calls; at most an encoder
        # batch at a time, so that one batch does not take every worker thread.
        # (Plain queries alone need no bundle: a service that is not ready still answers them.)
        gate = asyncio.Semaphore(max(1, service.search.text.preferred_batch) if hark else PLAIN_BATCH_WIDTH)

        async def run(req: Any, kind: bool) -> dict[str, Any] | None:
            async with gate:
                return await routes.one(name, req, kind)

        pending = (run(req, kind) for req, kind in zip(searches, kinds, strict=True))
        results: list[Any] = list(await asyncio.gather(*pending, return_exceptions=True))
        for result in results:  # the first bad query by position answers, as when they ran one by one
            if isinstance(result, BaseException):
                raise result
        upstream_rows = [i for i, result in enumerate(results) if result is None]
        if upstream_rows:
            # The plain queries of a mixed batch go to the server as one batch of their own.
            content = json.dumps({"searches": [searches[i] for i in upstream_rows]}).encode()
            response = await routes.forward(request, content=content)
            if response.status_code != 200:
                return response
            try:
                answered = json.loads(response.body)["result"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ApiError(502, "Qdrant's batch answer is not in Qdrant's shape") from exc
            for i, result in zip(upstream_rows, answered, strict=True):
                results[i] = result
        return qdrant_ok(results, started)

    # -- read routes: answered from the embedded store, forwarded to a server ------------------------
    def embedded(fn):
        async def handler(request: Request):
            if service.upstream is not None:
                return await routes.forward(request)
            started = time.perf_counter()
            body = await read_json(request, required=False) if request.method == "POST" else None
            result = await run_in_threadpool(fn, body, **request.path_params)
            return result if isinstance(result, Response) else qdrant_ok(result, started)

        return handler

    client = service.client

    def existing(name: str) -> str:
        physical = service.physical(name)
        if not service.store(lambda: client.collection_exists(physical)):
            raise not_found(name)
        return physical

    def collections(body: Any):
        return service.store(client.get_collections).model_dump(mode="json")

    def aliases(body: Any):
        return service.store(client.get_aliases).model_dump(mode="json")

    def collection(body: Any, name: str):
        physical = existing(name)
        return service.store(lambda: client.get_collection(physical)).model_dump(mode="json", exclude_none=True)

    def exists(body: Any, name: str):
        return {"exists": service.collection_exists(name)}

    def collection_aliases(body: Any, name: str):
        return service.store(lambda: client.get_collection_aliases(name)).model_dump(mode="json")

    def retrieve(body: Any, name: str):
        req = validated(models.PointRequest, body if body is not None else {})
        physical = existing(name)
        records = service.store(lambda: client.retrieve(
            physical, req.ids, with_payload=True if req.with_payload is None else req.with_payload,
            with_vectors=req.with_vector or False))
        return [r.model_dump(mode="json", exclude_none=True) for r in records]

    def get_point(body: Any, name: str, point: str):
        pid = point_id(point)
        physical = existing(name)
        records = service.store(lambda: client.retrieve(physical, [pid], with_payload=True, with_vectors=True))
        if not records:
            raise ApiError(404, f"Not found: No point with id {point} found")
        return records[0].model_dump(mode="json", exclude_none=True)

    def scroll(body: Any, name: str):
        req = validated(models.ScrollRequest, body if body is not None else {})
        limit = 10 if req.limit is None else req.limit
        if limit < 1:
            raise ApiError(400, "Bad request: limit must be at least 1")
        physical = existing(name)
        points, next_offset = service.store(lambda: client.scroll(
            physical, scroll_filter=req.filter, limit=limit, offset=req.offset,
            with_payload=True if req.with_payload is None else req.with_payload,
            with_vectors=req.with_vector or False, order_by=req.order_by))
        return {"points": [p.model_dump(mode="json", exclude_none=True) for p in points],
                "next_page_offset": next_offset}

    def count(body: Any, name: str):
        req = validated(models.CountRequest, body if body is not None else {})
        physical = existing(name)
        return service.store(lambda: client.count(
            physical, count_filter=req.filter, exact=True if req.exact is None else req.exact)).model_dump(mode="json")

    read_body = json_body_schema({"filter": {"type": "object"}, "limit": {"type": "integer"}, "offset": _ANY,
                                  "with_payload": _ANY, "with_vector": _ANY, "exact": {"type": "boolean"},
                                  "ids": {"type": "array"}})
    read_body["requestBody"]["required"] = False
    api.add_api_route("/collections", embedded(collections), methods=["GET"])
    api.add_api_route("/aliases", embedded(aliases), methods=["GET"])
    api.add_api_route("/collections/{name}", embedded(collection), methods=["GET"])
    api.add_api_route("/collections/{name}/exists", embedded(exists), methods=["GET"])
    api.add_api_route("/collections/{name}/aliases", embedded(collection_aliases), methods=["GET"])
    api.add_api_route("/collections/{name}/points", embedded(retrieve), methods=["POST"], openapi_extra=read_body)
    api.add_api_route("/collections/{name}/points/{point}", embedded(get_point), methods=["GET"])
    api.add_api_route("/collections/{name}/points/scroll", embedded(scroll), methods=["POST"],
                      openapi_extra=read_body)
    api.add_api_route("/collections/{name}/points/count", embedded(count), methods=["POST"], openapi_extra=read_body)

    @api.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def passthrough(path: str, request: Request):
        return await routes.forward(request)

    return api

