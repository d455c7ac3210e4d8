"""Operations: /healthz (the process answers), /readyz (a bundle is loaded and the store answers), /metrics,
and request counting. /docs and /openapi.json are FastAPI's own (behind the API key like everything else)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .service import Service


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["ops"])

    @api.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz():
        # No query lock here: loading takes its own lock without waiting, and the store is probed without its
        # guard (a read; while a write holds the guard the store is evidently answering).
        ready = await run_in_threadpool(lambda: service.ready)
        if not ready:
            return JSONResponse({"ready": False, "bundle": None, "reason": service.not_ready}, status_code=503)
        version = service.bundle.version
        if service.guard is not None and service.guard.writing:
            return {"ready": True, "bundle": version, "qdrant": "reachable (busy writing)"}
        try:
            await run_in_threadpool(service.client.get_collections)
        except Exception as exc:  # any failure to reach the store means not ready
            return JSONResponse({"ready": False, "bundle": version, "qdrant": f"unreachable: {exc}",
                                 "reason": f"Qdrant unreachable: {exc}"}, status_code=503)
        return {"ready": True, "bundle": version, "qdrant": "reachable"}

    @api.get("/metrics")
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return api


class CountRequests:
    """Counts responses by route template and status (pure ASGI, so streaming responses stay streaming)."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = scope.get("route")
            self.service.metrics.requests.labels(getattr(route, "path", "other"), str(status["code"])).inc()
