"""hark's own search API (/search), the search page (/ui), the audio it plays (/audio/{id}) and the waveform
thumbnails it draws (/thumb/{id}, computed once per recording: thumbs.py)."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from hark.errors import HarkError

from ..search import MAX_CANDIDATES, MAX_LIMIT
from .errors import ApiError
from .qdrant import point_id
from .service import Service
from .thumbs import Thumbnails

PAGE = Path(__file__).resolve().parent.parent / "page.html"


class SearchRequest(BaseModel):
    text: str = Field(..., description="what the recordings should sound like", examples=["a dog barks"])
    limit: int = Field(10, ge=1, le=MAX_LIMIT, description="number of hits")
    offset: int = Field(0, ge=0, lt=MAX_CANDIDATES,
                        description=f"hits to skip, for the next page (limit + offset at most {MAX_CANDIDATES})")
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
    # The matched moment (seconds from the recording's start) when the model stores moments: the page plays
    # from span_start and marks the span on the waveform.
    span_start: float | None = None
    span_end: float | None = None
    # For a query that states an order: the agreement of its events' times in this hit with that order, [-1, 1].
    order: float | None = None


class SearchResponse(BaseModel):
    hits: list[HitModel]
    timings_ms: dict[str, float]
    # The offset of the next page; null after the last hit (a short page) or at the deepest page served.
    next_offset: int | None = None


def _hit_out(hit: dict[str, Any]) -> dict[str, Any]:
    moment = hit.pop("moment", None)
    if moment:
        hit["span_start"], hit["span_end"] = moment["start"], moment["end"]
    return hit


def router(service: Service) -> APIRouter:
    api = APIRouter()
    page = PAGE.read_text(encoding="utf-8")

    @api.post("/search", response_model=SearchResponse, tags=["search"])
    async def search(body: SearchRequest):
        collection = body.collection or service.settings.collection

        def run():
            if not service.collection_exists(collection):
                raise ApiError(404, f"collection '{collection}' not found")
            return service.run_search([body.text], limit=body.limit, offset=body.offset, filter=body.filter,
                                      candidates=body.candidates,
                                      rerank=body.rerank, group_by_source=body.group_by_source,
                                      collection=collection)

        result = await run_in_threadpool(run)
        hits = result.hits[0]
        end = body.offset + len(hits)
        more = len(hits) == body.limit and end < MAX_CANDIDATES
        return {"hits": [_hit_out(h.to_dict()) for h in hits], "timings_ms": result.times.as_ms(),
                "next_offset": end if more else None}

    @api.get("/ui", response_class=HTMLResponse, tags=["page"], summary="search page")
    def ui() -> HTMLResponse:
        return HTMLResponse(page)

    thumbs = Thumbnails(Path(service.settings.state_dir) / "thumbs")

    def source_of(point: str, collection: str | None) -> tuple[Path | str, dict[str, Any]]:
        """The file and payload of a stored point whose source lies under a media root (HARK_MEDIA_ROOTS,
        default: the folders ingested from); anything else is a 404."""
        name = collection or service.settings.collection
        try:
            pid = point_id(point)
        except ApiError:
            raise ApiError(404, f"no point {point} in '{name}'") from None
        physical = service.physical(name)
        if not service.store(lambda: service.client.collection_exists(physical)):
            raise ApiError(404, f"collection '{name}' not found")
        records = service.store(lambda: service.client.retrieve(physical, [pid], with_payload=True))
        if not records:
            raise ApiError(404, f"no point {point} in '{name}'")
        payload = records[0].payload or {}
        uri = payload.get("source_uri")
        if service.media.allows_remote(uri):
            return uri, payload
        path = service.media.resolve(uri)
        if path is None:
            raise ApiError(404, f"the source of point {point} is not under a media root of this server")
        return path, payload

    @api.get("/audio/{point}", tags=["page"], summary="the source recording of a stored point",
             responses={200: {"content": {"audio/*": {}}}, 206: {"description": "a byte range"}})
    def audio(request: Request, point: str, collection: str | None = Query(None, max_length=255)):
        """Streams a point's source (range requests for seeking) when it lies under a media root: a local
        file, or a remote URI (http(s), s3, gs, az) under a remote root, read through hark.sources."""
        path, _ = source_of(point, collection)
        if isinstance(path, str):
            return remote_audio(path, request.headers.get("range"))
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media)

    @api.get("/thumb/{point}", tags=["page"], summary="waveform thumbnail of a stored point",
             responses={200: {"content": {"application/json": {}}}})
    def thumb(point: str, collection: str | None = Query(None, max_length=255)) -> Response:
        """Min/max peaks per column over the whole recording (`peaks`) and over the point's window
        (`window_peaks`), with `duration` and `window` {start, end} in seconds. Same rules as /audio."""
        path, payload = source_of(point, collection)
        if isinstance(path, str):
            raise ApiError(404, f"no thumbnail for point {point}: its source is remote")
        try:
            body = thumbs.get(path, payload)
        except (HarkError, OSError) as exc:  # a file that no longer decodes: nothing to draw
            raise ApiError(404, f"no thumbnail for point {point}: {exc}") from exc
        # Point ids derive from the content, so a point's thumbnail never changes: browsers may keep it.
        return Response(body, media_type="application/json",
                        headers={"cache-control": "private, max-age=31536000, immutable"})

    return api


CHUNK = 1 << 16


def _byte_range(header: str | None, size: int | None) -> tuple[int, int] | None:
    """(start, end inclusive) of a single `bytes=a-b` range, None for the whole file; 416 when unsatisfiable."""
    if not header or size is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None  # several ranges: answer with the whole file, as HTTP allows
    first, _, last = spec.strip().partition("-")
    try:
        if first:
            start, end = int(first), int(last) if last else size - 1
        else:
            start, end = size - int(last), size - 1
    except ValueError:
        return None
    if start < 0 or start >= size or end < start:
        raise ApiError(416, f"range {header!r} is outside the {size}-byte source")
    return start, min(end, size - 1)


def remote_audio(uri: str, range_header: str | None) -> StreamingResponse:
    from hark.sources import SourceError, open_source, source_size

    try:
        size = source_size(uri)
    except SourceError as exc:
        raise ApiError(404, f"source unavailable: {exc.reason if hasattr(exc, 'reason') else exc}") from exc
    span = _byte_range(range_header, size)
    start, end = span if span else (0, (size - 1) if size is not None else None)

    def body():
        with open_source(uri) as fh:
            if start:
                fh.seek(start)
            left = None if end is None else end - start + 1
            while left is None or left > 0:
                block = fh.read(CHUNK if left is None else min(CHUNK, left))
                if not block:
                    break
                if left is not None:
                    left -= len(block)
                yield block

    media = mimetypes.guess_type(uri.rsplit("/", 1)[-1])[0] or "application/octet-stream"
    headers = {"accept-ranges": "bytes"}
    if end is not None:
        headers["content-length"] = str(end - start + 1)
    if span:
        headers["content-range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(body(), status_code=206 if span else 200, media_type=media, headers=headers)
