"""hark's own search API (/search), the search page (/ui) and the audio it plays (/audio/{id})."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..search import MAX_CANDIDATES, MAX_LIMIT
from .errors import ApiError
from .qdrant import point_id
from .service import Service

PAGE = Path(__file__).resolve().parent.parent / "page.html"


class SearchRequest(BaseModel):
    text: str = Field(..., description="what the recordings should sound like", examples=["a dog barks"])
    limit: int = Field(10, ge=1, le=MAX_LIMIT, description="number of hits")
    filter: dict[str, Any] | None = Field(None, description="Qdrant filter on the payload (e.g. meta.* fields)")
    collection: str | None = Field(None, description="collection or alias; default HARK_COLLECTION")
    candidates: int | None = Field(None, ge=1, le=MAX_CANDIDATES, description="prefilter size K")
    rerank: bool = Field(True, description="rerank the candidates with the attention head")
    group_by_source: bool = Field(False, description="one hit per recording (its best window)")


class HitModel(BaseModel):
    id: int | str
    score: float
    cosine: float
    rerank: float | None
    payload: dict[str, Any]
    source: str | None
    offset: float | None


class SearchResponse(BaseModel):
    hits: list[HitModel]
    timings_ms: dict[str, float]


def router(service: Service) -> APIRouter:
    api = APIRouter()
    page = PAGE.read_text(encoding="utf-8")

    @api.post("/search", response_model=SearchResponse, tags=["search"])
    async def search(body: SearchRequest):
        collection = body.collection or service.settings.collection

        def run():
            if not service.collection_exists(collection):
                raise ApiError(404, f"collection '{collection}' not found")
            return service.run_search([body.text], limit=body.limit, filter=body.filter, candidates=body.candidates,
                                      rerank=body.rerank, group_by_source=body.group_by_source,
                                      collection=collection)

        result = await run_in_threadpool(run)
        return {"hits": [h.to_dict() for h in result.hits[0]], "timings_ms": result.times.as_ms()}

    @api.get("/ui", response_class=HTMLResponse, tags=["page"], summary="search page")
    def ui() -> HTMLResponse:
        return HTMLResponse(page)

    @api.get("/audio/{point}", tags=["page"], summary="the source recording of a stored point",
             responses={200: {"content": {"audio/*": {}}}, 206: {"description": "a byte range"}})
    def audio(point: str, collection: str | None = Query(None, max_length=255)):
        """Streams a point's source file (range requests for seeking) when it lies under a media root
        (HARK_MEDIA_ROOTS, default: the folders ingested from); anything else is a 404."""
        name = collection or service.settings.collection
        try:
            pid = point_id(point)
        except ApiError:
            raise ApiError(404, f"no point {point} in '{name}'") from None
        physical = service.physical(name)
        if not service.store(lambda: service.client.collection_exists(physical)):
            raise ApiError(404, f"collection '{name}' not found")
        records = service.store(lambda: service.client.retrieve(physical, [pid], with_payload=["source_uri"]))
        if not records:
            raise ApiError(404, f"no point {point} in '{name}'")
        path = service.media.resolve((records[0].payload or {}).get("source_uri"))
        if path is None:
            raise ApiError(404, f"the source of point {point} is not under a media root of this server")
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media)

    return api
