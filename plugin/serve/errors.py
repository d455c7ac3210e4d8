"""Error shapes: Qdrant's on the Qdrant routes, `{"error": ...}` on /infer, `{"detail": ...}` on hark's own.

Every error the routes raise is an `ApiError` (or a `HarkError`, a client mistake: 400), rendered in the
shape the path's callers parse. Store exceptions are mapped to a status by `store_error`.
"""

from __future__ import annotations

import time

from starlette.responses import JSONResponse

INFER_PATHS = ("/infer", "/api/v1/infer")
HARK_PATHS = ("/search", "/audio/", "/thumb/", "/ui", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json",
              "/redoc")


class ApiError(Exception):
    """An HTTP error with a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class NotReadyError(ApiError):
    def __init__(self, reason: str) -> None:
        super().__init__(503, f"not ready: {reason}")


def shape(path: str) -> str:
    """'infer', 'hark' or 'qdrant': which error body the callers of `path` parse."""
    if path in INFER_PATHS:
        return "infer"
    if any(path == p or (p.endswith("/") and path.startswith(p)) for p in HARK_PATHS):
        return "hark"
    return "qdrant"


def error_response(path: str, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = shape(path)
    if kind == "infer":
        body: dict = {"error": message}
    elif kind == "hark":
        body = {"detail": message}
    else:
        body = {"status": {"error": message}, "time": 0.0}
    return JSONResponse(body, status_code=status, headers=headers)


def qdrant_ok(result: object, started: float) -> JSONResponse:
    return JSONResponse({"result": result, "status": "ok", "time": round(time.perf_counter() - started, 6)})


def store_error(exc: Exception) -> ApiError | None:
    """A store exception as the caller's error, or None when it is not one the store raises for bad input.

    Local mode (and the embedded engine) raise ValueError/TypeError/KeyError/AssertionError on requests they
    cannot answer (a fusion without prefetch, a negative limit, an empty filter key), and the engine's bindings
    OverflowError on a number past its integers (a limit of 2**64): the request's fault.
    A server answers with its own status: its 4xx are passed on; its 5xx and an unreachable server are a
    bad gateway (502) and unavailable (503): hark itself did not fail."""
    from pydantic import ValidationError

    try:
        import httpx
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, UnexpectedResponse):
        detail = exc.content.decode("utf-8", "replace")[:500] if exc.content else exc.reason_phrase
        if 400 <= exc.status_code < 500:
            return ApiError(exc.status_code, f"Qdrant: {detail}")
        return ApiError(502, f"Qdrant answered {exc.status_code}: {detail}")
    if isinstance(exc, ResponseHandlingException | httpx.TransportError | ConnectionError | TimeoutError):
        return ApiError(503, f"Qdrant is unreachable: {exc}")
    if isinstance(exc, ValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return ApiError(400, f"Format error in JSON body: {where}: {first.get('msg')}")
    if isinstance(exc, ValueError | TypeError | KeyError | AssertionError | IndexError | OverflowError):
        return ApiError(400, f"Bad request: {exc}")
    return None
