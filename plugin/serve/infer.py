"""Qdrant's external inference protocol at /infer (and /api/v1/infer).

A Qdrant server started with QDRANT__INFERENCE__ADDRESS=http://<hark>/infer POSTs
`{"inputs": [{"data", "data_type", "model", "options"}], "inference": "search"|"update", "token"}` and
expects `{"embeddings": [...]}` in the same order. Errors are `{"error": ...}`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from .auth import require_infer_token
from .bodies import json_body_schema, read_json
from .errors import ApiError
from .service import Service

_SCHEMA = json_body_schema({
    "inputs": {"type": "array", "items": {"type": "object", "properties": {
        "data": {"type": "string"}, "data_type": {"type": "string"}, "model": {"type": "string"},
        "options": {"type": ["object", "null"]}}}},
    "inference": {"type": ["string", "null"]}, "token": {"type": ["string", "null"]}}, ["inputs"])


# Texts in one /infer request, embedded in one encoder call: the body limit alone let 5,000 through (a batch of
# 5,000 for a RoBERTa-large-size encoder). Qdrant's own calls carry a query's or a batch's documents.
MAX_INPUTS = 256


def parse(service: Service, body: Any) -> tuple[list[str], list[str]]:
    """(texts, kinds) of a valid request; ApiError 400 naming the first bad field otherwise."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request must be a JSON object with 'inputs'")
    inputs = body.get("inputs")
    if not isinstance(inputs, list):
        raise ApiError(400, "'inputs' must be a list")
    if len(inputs) > MAX_INPUTS:
        raise ApiError(400, f"at most {MAX_INPUTS} inputs in one request ({len(inputs)} here): they are embedded "
                            "in one encoder call; send several requests")
    inference = body.get("inference")
    if inference not in (None, "search", "update"):
        raise ApiError(400, f"'inference' must be 'search' or 'update', not {inference!r}")
    texts, kinds = [], []
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise ApiError(400, f"inputs[{i}] must be an object")
        if item.get("data_type") != "text":
            raise ApiError(400, f"inputs[{i}]: hark embeds text (data_type 'text'), not {item.get('data_type')!r}; "
                                "audio is ingested with `hark ingest`")
        kinds.append(service.check_model(item.get("model")))
        data = item.get("data")
        if not isinstance(data, str) or not data.strip():
            raise ApiError(400, f"inputs[{i}]: data must be a non-empty string")
        if item.get("options") is not None and not isinstance(item.get("options"), dict):
            raise ApiError(400, f"inputs[{i}]: options must be an object or null")
        texts.append(data)
    if inference == "update" and texts:
        raise ApiError(400, "inference 'update' is refused: hark's text models embed queries; the vectors stored "
                            "in a hark collection ('global', 'tokens') are audio embeddings made by `hark ingest`, "
                            "so storing a text embedding there would corrupt search")
    return texts, kinds


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["inference"])

    async def infer(request: Request):
        body = await read_json(request)
        require_infer_token(service.keys, request.scope.get("state", {}).get("access"),
                            body.get("token") if isinstance(body, dict) else None)
        texts, kinds = parse(service, body)
        if not texts:
            return {"embeddings": []}

        def embed() -> list[Any]:
            service.batcher.enter()
            try:
                # The model the default collection serves now, not whichever version a query used last.
                text = service.search.engine_for(service.settings.collection, service.store)[1]
                encoded, _ = service.batcher.encode(text, texts)
            finally:
                service.batcher.leave()
            out = []
            for row, kind in enumerate(kinds):
                if kind == "global":
                    out.append(encoded.sentence[row].tolist())
                else:
                    length = int(encoded.mask[row].sum())
                    out.append(encoded.tokens[row, :length].tolist())
            return out

        return {"embeddings": await run_in_threadpool(embed)}

    api.add_api_route("/infer", infer, methods=["POST"], summary="Qdrant external inference protocol",
                      openapi_extra=_SCHEMA)
    api.add_api_route("/api/v1/infer", infer, methods=["POST"], include_in_schema=False)
    return api
