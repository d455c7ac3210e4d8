"""Request limits, enforced before any route (and before auth work that needs the body).

The body is bounded by Settings.max_body_bytes: a larger Content-Length is refused before reading, and a
body sent without one (chunked) is counted while it streams. A JSON body's nesting is bounded by
Settings.max_json_depth, checked by a scan without recursion, so the parser (and pydantic after it) never
recurses deeper than that. The body is then replayed to the route.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response

# A JSON string literal or a bracket: strings are skipped whole, so brackets inside them do not count.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether the nesting of the JSON text `raw` goes deeper than `limit` (malformed text is left to the
    parser; only depth is judged here)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # cannot nest deeper than it has openers
    depth = 0
    for match in _TOKENS.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


class LimitsMiddleware:
    """Body size and JSON depth limits for every HTTP request (pure ASGI: nothing is read before the check)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_json_depth: int) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                await error_response(path, 400, "invalid Content-Length")(scope, receive, send)
                return
            if declared > self.max_body:
                await self._too_large(path, scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self._too_large(path, scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        body_start = body.lstrip()[:1]
        if body_start in (b"{", b"[") and json_depth_exceeds(body, self.max_depth):
            await error_response(path, 400, f"JSON nesting deeper than {self.max_depth} levels "
                                            "(HARK_MAX_JSON_DEPTH)")(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(path, 413, f"request body larger than {self.max_body} bytes (HARK_MAX_BODY_BYTES)",
                                  headers={"connection": "close"})
        await response(scope, receive, send)
