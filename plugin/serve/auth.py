"""Authentication like Qdrant's: HARK_API_KEY gives full access, HARK_READ_ONLY_API_KEY searches and reads.

The key comes as the `api-key` header or `Authorization: Bearer <key>`, checked once here for every route
but the probes. Exempt besides /healthz and /readyz: the search page's static shell (/ui, which holds no
data and is where a browser types its key) and the redirect a browser gets from `/`. /infer may carry the
key in the inference protocol's body `token` instead: a caller without a header key reaches the route,
which checks the token (`require_infer_token`). A read-only caller gets 403 on anything that writes.
"""

from __future__ import annotations

import hmac
import re

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import ApiError, error_response

FULL, READ = "full", "read"
PROBES = {"/healthz", "/readyz"}
INFER = {"/infer", "/api/v1/infer"}
# POST routes that only read (Qdrant's read-only key may call them too).
_READ_POSTS = re.compile(
    r"^/(search|infer|api/v1/infer"
    r"|collections/[^/]+/points(/(scroll|count|search(/batch|/groups|/matrix/pairs|/matrix/offsets)?"
    r"|recommend(/batch|/groups)?|discover(/batch)?|query(/batch|/groups)?|facet))?)$")


def is_read(method: str, path: str) -> bool:
    """Whether the request only reads (what a read-only key may do)."""
    if method in {"GET", "HEAD", "OPTIONS"}:
        return True
    return method == "POST" and _READ_POSTS.match(path) is not None


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    key = headers.get(b"api-key")
    if key is None:
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            key = auth[7:].strip()
    return key.decode("latin-1") if key is not None else None


class Keys:
    def __init__(self, full: str, read_only: str) -> None:
        self.full, self.read_only = full, read_only

    @property
    def enabled(self) -> bool:
        return bool(self.full or self.read_only)

    def access(self, key: str | None) -> str | None:
        """FULL, READ, or None for a missing or wrong key (constant-time comparisons)."""
        if not self.enabled:
            return FULL
        if key is None:
            return None
        if self.full and hmac.compare_digest(key.encode(), self.full.encode()):
            return FULL
        if self.read_only and hmac.compare_digest(key.encode(), self.read_only.encode()):
            return READ
        return None


def _browser_root(scope: Scope, headers: dict[bytes, bytes]) -> bool:
    return scope["method"] == "GET" and scope["path"] == "/" and b"text/html" in headers.get(b"accept", b"")


class AuthMiddleware:
    """Sets scope["state"]["access"] (FULL or READ) or answers 401/403 before the route runs."""

    def __init__(self, app: ASGIApp, keys: Keys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        headers = dict(scope.get("headers") or [])
        state = scope.setdefault("state", {})
        access = self.keys.access(presented_key(headers))
        state["access"] = access
        public = path in PROBES or (method in {"GET", "HEAD"} and path == "/ui") or _browser_root(scope, headers)
        if access is None and not public and not (path in INFER and presented_key(headers) is None):
            await error_response(path, 401, "Must provide an API key or an Authorization bearer token")(
                scope, receive, send)
            return
        if access == READ and not is_read(method, path):
            await error_response(path, 403, "Forbidden: read-only API key cannot write")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def require_infer_token(keys: Keys, scope_access: str | None, token: object) -> None:
    """/infer without a header key: the body `token` must be a valid key."""
    if scope_access is not None:
        return
    if not isinstance(token, str) or keys.access(token) is None:
        raise ApiError(401, "Must provide an API key (header or the request's 'token')")
