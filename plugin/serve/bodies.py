"""Reading and checking request bodies (depth and size were bounded by the limits middleware)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from .errors import ApiError


async def read_json(request: Request, required: bool = True) -> Any:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise ApiError(400, "Format error in JSON body: request body must be JSON")
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"Format error in JSON body: not valid JSON ({exc})") from exc


def validated(model: type, data: Any, what: str = "JSON body"):
    """`model.model_validate(data)` with a pydantic error turned into a 400 naming the field."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if "[" not in str(p))
        raise ApiError(400, f"Format error in {what}: {where or 'body'}: {first.get('msg')}") from exc


def json_body_schema(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """An OpenAPI requestBody for a route that reads its JSON itself (so errors keep Qdrant's shape)."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
