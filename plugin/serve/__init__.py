"""`hark serve`: the HTTP surfaces of DESIGN.md contract 3, as routers by concern over one `Service`.

- auth.py: API keys like Qdrant's (full and read-only), checked for every route but the probes.
- limits.py: body size and JSON depth, before any route or key work that needs the body.
- qdrant.py: Qdrant-compatible query routes (hark Documents run prefilter + rerank), the read routes stock
  clients use, and the pass-through to a Qdrant server.
- infer.py: Qdrant's external inference protocol (/infer).
- page.py: hark's /search, the search page (/ui) and the audio it plays (/audio/{id}).
- ops.py: /healthz, /readyz, /metrics (OpenAPI at /docs).

    from hark.plugin.serve import create_app
    app = create_app()  # settings from the environment, the newest registered bundle
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from hark.bundle import Bundle
from hark.errors import HarkError
from hark.settings import Settings

from . import infer, ops, page, qdrant
from .auth import AuthMiddleware
from .errors import ApiError, error_response
from .limits import LimitsMiddleware
from .service import Service

__all__ = ["Service", "create_app"]


def create_app(settings: Settings | None = None, bundle: Bundle | str | None = None, client=None) -> FastAPI:
    """The ASGI app. `bundle`: a Bundle, a path or a registered version; None means HARK_BUNDLE, else the
    newest registered one. Without a usable bundle the app still starts: /readyz answers 503 with the
    reason until one is registered, then the bundle is loaded without a restart."""
    settings = settings or Settings.load()
    service = Service(settings, bundle, client)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()
        if service.upstream is not None:
            await service.upstream.aclose()

    app = FastAPI(title="hark", version=_version(service), lifespan=lifespan,
                  description="Language-based audio search for Qdrant: cosine prefilter + cross-modal attention "
                              "rerank. Qdrant-compatible query routes and the external inference protocol.")
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        service.metrics.errors.labels(type(exc).__name__).inc()
        return error_response(request.url.path, exc.status, exc.message)

    @app.exception_handler(HarkError)
    async def hark_error(request: Request, exc: HarkError):
        service.metrics.errors.labels(type(exc).__name__).inc()
        return error_response(request.url.path, 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        # hark's own routes keep FastAPI's 422 list; the JSON-reading routes never get here.
        return JSONResponse({"detail": _plain(exc.errors())}, status_code=422)

    for module in (ops, page, infer, qdrant):  # qdrant last: its pass-through matches every other path
        app.include_router(module.router(service))
    # Outermost first on the way in: count, then limits (nothing read beyond them), then keys.
    app.add_middleware(AuthMiddleware, keys=service.keys)
    app.add_middleware(LimitsMiddleware, max_body_bytes=settings.max_body_bytes,
                       max_json_depth=settings.max_json_depth)
    app.add_middleware(ops.CountRequests, service=service)
    return app


def _version(service: Service) -> str:
    try:
        return service.bundle.version
    except ApiError:
        return "not loaded"


def _plain(errors: list) -> list:
    """FastAPI's error list with inputs that JSON cannot hold (bytes) shown as text."""
    out = []
    for e in errors:
        e = dict(e)
        if isinstance(e.get("input"), bytes):
            e["input"] = e["input"].decode("utf-8", "replace")
        e.pop("ctx", None)
        out.append(e)
    return out
