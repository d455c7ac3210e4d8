"""The store layer (contract 2 of ARCHITECTURE.md): one interface, two engines; schema from the manifest.

The interface is the subset of `qdrant_client.QdrantClient` that hark calls, with qdrant-client's types:
`connect()` returns a `QdrantClient` for a Qdrant server (`HARK_QDRANT_URL`) or an `EdgeStore`, Qdrant's
own embedded engine (qdrant-edge: the server's segment code, HNSW) in a folder (`HARK_QDRANT_PATH`). The
embedded engine has no collections, aliases or background optimiser; `hark.store.edge` provides them.
Workers, re-indexing, the facade and `hark serve` only use this interface; the facade also takes a user's
own `QdrantClient`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from hark.bundle import Bundle, VectorSpec
from hark.settings import Settings
from hark.store.candidates import Candidates, from_points
from hark.store.errors import StoreError, StoreUnavailableError

log = logging.getLogger(__name__)

# Fixed namespace: point ids are uuid5(namespace, "<content sha256>:<window index>").
POINT_NAMESPACE = uuid.UUID("6f6c6a8e-3b1d-5c2a-9d4e-8a7b1c0d2e3f")
# Payload fields that filters and ingestion use; indexed in both engines.
INDEXED_FIELDS = {"content_hash": "keyword", "source_uri": "keyword", "model_version": "keyword"}


def point_id(content_hash: str, window: int) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{content_hash}:{window}"))


def connect(settings: Settings):
    """The store for the settings: a Qdrant server when HARK_QDRANT_URL is set, else the embedded folder.

    The embedded folder has one owner process; a second opener gets `StoreUnavailableError`.
    """
    if settings.qdrant_url:
        from qdrant_client import QdrantClient

        return QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key or None, timeout=30)
    from hark.store.edge import EdgeStore  # lazily: a server deployment never loads the embedded engine

    return EdgeStore(settings.qdrant_path, row_cache_bytes=int(settings.row_cache_mb * 2**20))


def maybe_build_index(client, collection: str) -> None:
    """After an ingest batch: the embedded engine has no background optimiser, so it builds its HNSW index
    once enough points are outside it (a server optimises by itself)."""
    build = getattr(client, "maybe_optimize", None)
    if build is None:
        return
    try:
        build(collection)
    except StoreError as exc:
        # The batch is stored and searchable (the unindexed points are scanned); a build the engine refuses (it
        # wants about 1.8x the folder free on disk) must not fail the ingest, nor every retry of it.
        log.warning("the HNSW index of %s was not built: %s; searches scan the unindexed points until a "
                    "later build succeeds", collection, exc)


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: Qdrant unreachable, timeouts, a busy embedded folder."""
    if isinstance(exc, StoreUnavailableError | ConnectionError | TimeoutError):
        return True
    try:
        import httpx
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, ResponseHandlingException | httpx.TransportError):
        return True
    return isinstance(exc, UnexpectedResponse) and exc.status_code in {502, 503, 504}


def vector_params(spec: VectorSpec):
    from qdrant_client import models

    distance = {"cosine": models.Distance.COSINE, "dot": models.Distance.DOT}[spec.distance.lower()]
    params: dict[str, Any] = {"size": spec.size, "distance": distance, "on_disk": spec.on_disk or None}
    if spec.multivector:
        params["multivector_config"] = models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM)
    if spec.hnsw_m is not None:
        params["hnsw_config"] = models.HnswConfigDiff(m=spec.hnsw_m)
    datatype = {"float16": models.Datatype.FLOAT16, "uint8": models.Datatype.UINT8}.get(spec.datatype)
    if datatype is not None:
        params["datatype"] = datatype
    return models.VectorParams(**params)


def collection_name(base: str, version: str) -> str:
    """Collections are versioned; clients use the alias `base`."""
    return f"{base}__{version}"


def resolve_collection(client, name: str) -> str:
    """The physical collection behind an alias (or the name itself when it is a collection)."""
    alias_map = getattr(client, "alias_map", None)
    if alias_map is not None:  # the embedded store: no response models (a cold `hark search` skips qdrant_client)
        return alias_map().get(name, name)
    for alias in client.get_aliases().aliases:
        if alias.alias_name == name:
            return alias.collection_name
    return name


def version_of(physical: str) -> str | None:
    """The model version in a versioned collection name (`NAME__<version>`)."""
    return physical.rsplit("__", 1)[1] if "__" in physical else None


def live_version(client, collection: str) -> str | None:
    """The model version the alias `collection` serves now (None when it is not an alias)."""
    physical = resolve_collection(client, collection)
    return version_of(physical) if physical != collection else None


def query_candidates(client, collection: str, queries: np.ndarray, using: str, limit: int, query_filter: Any = None,
                     rows: str | None = None) -> list[Candidates]:
    """Nearest `limit` points to each query vector on the named vector `using`, with payloads and, when `rows`
    names a multivector, its rows packed as float32: the facade's prefilter, one round trip for all queries.

    `query_filter`: a `models.Filter`, its JSON dict, or None. The embedded store answers from the engine's objects
    (`EdgeStore.query_candidates`); any other client through `query_batch_points`.
    """
    fast = getattr(client, "query_candidates", None)
    if fast is not None:
        return fast(collection, queries, using=using, limit=limit, query_filter=query_filter, rows=rows)
    from qdrant_client import models

    from hark.store.filters import parse

    flt = parse(query_filter)
    # model_construct: the vectors are hark's own float arrays; validating 1024 floats per query through pydantic
    # cost milliseconds for nothing.
    requests = [models.QueryRequest.model_construct(query=q.tolist(), using=using, limit=limit,
                                                    filter=flt, with_payload=True,
                                                    with_vector=[rows] if rows else False)
                for q in np.asarray(queries, dtype=np.float32)]
    responses = client.query_batch_points(collection, requests=requests)
    return [from_points(r.points, rows) for r in responses]


def vectors_of(client, collection: str, ids: Iterable[Any], name: str) -> dict[Any, Any]:
    """{id: stored value of the named vector} for those of `ids` that exist and hold it (rows of floats for a
    multivector). The embedded store answers from the engine's objects (`EdgeStore.vectors_of`); any other
    client through `retrieve`."""
    ids = list(ids)
    fast = getattr(client, "vectors_of", None)
    if fast is not None:
        return fast(collection, ids, name)
    if not ids:
        return {}
    out = {}
    for record in client.retrieve(collection, ids, with_payload=False, with_vectors=[name]):
        value = record.vector.get(name) if isinstance(record.vector, dict) else None
        if value is not None:
            out[record.id] = value
    return out


def ensure_collection(client, base: str, bundle: Bundle, shards: int | None = None,
                      replication: int | None = None) -> str:
    """Create `base__<version>` from the manifest if missing and point the alias `base` at it when the alias
    does not exist yet. Returns the physical collection name."""
    from qdrant_client import models

    physical = collection_name(base, bundle.version)
    if not client.collection_exists(physical):
        vectors = {spec.name: vector_params(spec) for spec in bundle.vectors()}
        client.create_collection(physical, vectors_config=vectors, shard_number=shards,
                                 replication_factor=replication)
        for field_name, kind in INDEXED_FIELDS.items():
            client.create_payload_index(physical, field_name, kind)
        log.info("created collection %s", physical)
    else:
        check_schema(client, physical, bundle)
    aliases = {a.alias_name for a in client.get_aliases().aliases}
    if base not in aliases and not client.collection_exists(base):
        client.update_collection_aliases(change_aliases_operations=[
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=physical, alias_name=base))])
    return physical


def check_schema(client, physical: str, bundle: Bundle) -> None:
    """A collection made for another model shape must not be written with this bundle."""
    params = client.get_collection(physical).config.params.vectors
    for spec in bundle.vectors():
        existing = params.get(spec.name) if isinstance(params, dict) else None
        if existing is None or existing.size != spec.size:
            raise StoreError(f"collection {physical} does not match bundle {bundle.version}: vector "
                             f"'{spec.name}' should have size {spec.size}")


def scroll_payloads(client, collection: str, fields: list[str], scroll_filter: Any = None,
                    page: int = 512) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(point id, payload with `fields`) of every point of `collection` (matching `scroll_filter`), a page at a time."""
    offset = None
    while True:
        points, offset = client.scroll(collection, scroll_filter=scroll_filter, limit=page, offset=offset,
                                       with_payload=fields, with_vectors=False)
        for p in points:
            yield p.id, p.payload or {}
        if offset is None:
            return


def existing_ids(client, collection: str, ids: Iterable[str]) -> set[str]:
    ids = list(ids)
    if not ids:
        return set()
    found = client.retrieve(collection, ids=ids, with_payload=False, with_vectors=False)
    return {str(p.id) for p in found}
