"""Re-indexing a collection with a new model, and rolling back.

The alias `NAME` is the one source of truth for what is live: `NAME__<version>` collections are built
beside it and the alias switches atomically once the new one is verified. A re-index is a small state
machine kept in the job store (start -> ingest job -> finish), so it can be driven by `hark reindex`, by
the Celery beat tick, or resumed after a crash; the live alias is only touched by `finish`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from hark.bundle import Bundle
from hark.errors import HarkError
from hark.registry import active_pin, pin, registered, resolve_bundle
from hark.settings import Settings
from hark.store import collection_name, connect, ensure_collection, resolve_collection, version_of

from .ingest import Item, ingestor_for, stream_windows
from .jobs import JobStore, job_store
from .submit import submit_job, wait_for

log = logging.getLogger(__name__)

SAMPLE_CHECKS = 5


class ReindexError(HarkError):
    pass


def versions_of(client, collection: str) -> list[str]:
    """Versions that have a physical collection for this alias (unordered; callers sort by registry)."""
    prefix = f"{collection}__"
    return [c.name[len(prefix):] for c in client.get_collections().collections if c.name.startswith(prefix)]


def _sources(client, physical: str) -> tuple[list[Item], dict[str, list[str]]]:
    """Each source file once (with its metadata) and the point ids stored per source."""
    items: dict[str, Item] = {}
    ids: dict[str, list[str]] = {}
    offset = None
    while True:
        points, offset = client.scroll(physical, limit=512, offset=offset,
                                       with_payload=["source_uri", "sources", "meta"], with_vectors=False)
        for p in points:
            payload = p.payload or {}
            uri = payload.get("source_uri")
            if uri:
                # The first name first, then the others it was seen under (they re-ingest as duplicates).
                for name in [uri, *(payload.get("sources") or [])]:
                    items.setdefault(name, Item(name, payload.get("meta") or {}))
                ids.setdefault(uri, []).append(str(p.id))
        if offset is None:
            break
    return list(items.values()), ids


def start(settings: Settings, client, store: JobStore, collection: str, bundle_ref: str) -> dict[str, Any]:
    """Create NAME__<new version>, mark the re-index (so concurrent ingestion writes both) and submit the job."""
    bundle_path = str(resolve_bundle(settings, bundle_ref).resolve())
    bundle = Bundle.load(bundle_path)
    live = resolve_collection(client, collection)
    if live == collection or not client.collection_exists(live):
        raise ReindexError(f"collection '{collection}' has no live alias to re-index from")
    target = collection_name(collection, bundle.version)
    if target == live:
        raise ReindexError(f"'{collection}' already serves version {bundle.version}")
    ensure_collection(client, collection, bundle, settings.shards or None, settings.replication or None)
    state = {"collection": collection, "bundle": bundle_path, "version": bundle.version, "from": live,
             "target": target, "started": time.time(), "job": None}
    store.set_reindex(collection, state)
    items, _ = _sources(client, live)

    def remember(job_id: str) -> None:
        state["job"] = job_id  # recorded before any batch runs, so a crash mid-job can be resumed
        store.set_reindex(collection, state)

    submit_job(settings, items, collection, bundle_path, client=client, on_created=remember)
    return state


def verify(settings: Settings, client, store: JobStore, state: dict[str, Any]) -> dict[str, Any]:
    """Every live point whose source did not fail is in the new collection, and sampled vectors recompute."""
    status = store.status(state["job"])
    failed = set(status["failures"])
    _, live_ids = _sources(client, state["from"])
    expected = {pid for uri, pids in live_ids.items() if uri not in failed for pid in pids}
    found: set[str] = set()
    offset = None
    while True:
        points, offset = client.scroll(state["target"], limit=1024, offset=offset, with_payload=False,
                                       with_vectors=False)
        found.update(str(p.id) for p in points)
        if offset is None:
            break
    missing = expected - found
    if missing:
        raise ReindexError(f"{len(missing)} points of {state['from']} are missing from {state['target']}")
    checked = _recompute_sample(settings, client, state)
    return {"expected": len(expected), "stored": len(found), "failed_files": len(failed), "recomputed": checked}


def _recompute_sample(settings: Settings, client, state: dict[str, Any]) -> int:
    from hark.audio import iter_audio
    from hark.sources import local_copy

    ingestor = ingestor_for(state["bundle"], settings)
    points, _ = client.scroll(state["target"], limit=SAMPLE_CHECKS, with_payload=True, with_vectors=["global"])
    sr = ingestor.bundle.sample_rate
    for p in points:
        payload = p.payload or {}
        index = int(payload["window_index"])
        with local_copy(payload["source_uri"]) as copy:
            # Stream up to the window needed: a long recording is never held whole.
            piece = next(w for i, (_, w) in enumerate(stream_windows(iter_audio(copy.path, sr),
                                                                       ingestor.window_samples, sr)) if i == index)
        fresh = ingestor.encoder.encode_windows([piece], with_moments=False)[0].global_
        stored = np.asarray(p.vector["global"], dtype=np.float32)
        cos = float(fresh @ stored / (np.linalg.norm(fresh) * np.linalg.norm(stored) + 1e-12))
        if cos < 0.999:
            raise ReindexError(f"stored vector of {payload['source_uri']} does not recompute (cosine {cos:.4f})")
    return len(points)


def switch_alias(client, collection: str, target: str) -> None:
    """Point `collection` at `target` in one request: readers see the old or the new one, never neither."""
    from qdrant_client import models

    operations = []
    if any(a.alias_name == collection for a in client.get_aliases().aliases):
        operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=collection)))
    operations.append(models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=target,
                                                                                  alias_name=collection)))
    client.update_collection_aliases(change_aliases_operations=operations)


def finish(settings: Settings, client, store: JobStore, collection: str) -> dict[str, Any]:
    """Verify the new collection, switch the alias, prune old versions, clear the re-index mark."""
    state = store.reindex_state(collection)
    if not state or not state.get("job"):
        raise ReindexError(f"no re-index of '{collection}' in progress")
    report = verify(settings, client, store, state)
    switch_alias(client, collection, state["target"])
    store.set_reindex(collection, None)
    pruned = prune(settings, client, collection)
    log.info("re-index of %s: %s is live (%s)", collection, state["target"], report)
    return {**report, "collection": collection, "live": state["target"], "previous": state["from"],
            "pruned": pruned}


def reindex(settings: Settings, store: JobStore, collection: str, bundle_ref: str, client=None,
            timeout: float | None = None, on_update=None) -> dict[str, Any]:
    """The whole re-index; resumes one that was interrupted (same bundle) instead of starting over.

    Without a client, the embedded folder is opened only while this process needs it, so the workers can
    write to it in between.
    """
    bundle_path = str(resolve_bundle(settings, bundle_ref).resolve())
    c = client if client is not None else connect(settings)
    try:
        state = store.reindex_state(collection)
        if not state or state.get("bundle") != bundle_path or not state.get("job"):
            state = start(settings, c, store, collection, bundle_ref)
        elif store.status(state["job"])["state"] != "done":
            # Interrupted: submit the sources again; what is stored already is skipped as a duplicate.
            items, _ = _sources(c, state["from"])

            def remember(job_id: str) -> None:
                state["job"] = job_id
                store.set_reindex(collection, state)

            submit_job(settings, items, collection, bundle_path, client=c, on_created=remember)
    finally:
        if client is None:
            c.close()
    wait_for(store, state["job"], timeout=timeout, on_update=on_update)
    c = client if client is not None else connect(settings)
    try:
        return finish(settings, c, store, collection)
    finally:
        if client is None:
            c.close()


def rollback(settings: Settings, client, collection: str, sticky: bool = True) -> dict[str, str]:
    """Switch the alias back to the previous version's collection that still exists.

    Sticky by default: the collection is pinned to that version, so the beat does not re-index it forward
    again until a newer bundle is registered or the pin is lifted.
    """
    live = resolve_collection(client, collection)
    if live == collection:
        raise ReindexError(f"'{collection}' is not an alias")
    order = {version: i for i, (version, _, _) in enumerate(registered(settings))}
    current = version_of(live)
    candidates = [v for v in versions_of(client, collection) if v != current]
    if not candidates:
        raise ReindexError(f"no previous collection of '{collection}' to roll back to")
    candidates.sort(key=lambda v: order.get(v, -1))
    older = [v for v in candidates if order.get(v, -1) < order.get(current, 10**9)] or candidates
    target = collection_name(collection, older[-1])
    switch_alias(client, collection, target)
    if sticky:
        pin(settings, collection, older[-1])
    return {"collection": collection, "live": target, "previous": live, "pinned": older[-1] if sticky else ""}


def prune(settings: Settings, client, collection: str) -> list[str]:
    """Drop versions beyond the retention setting, never the live one."""
    live = resolve_collection(client, collection)
    order = {version: i for i, (version, _, _) in enumerate(registered(settings))}
    others = sorted((v for v in versions_of(client, collection) if collection_name(collection, v) != live),
                    key=lambda v: order.get(v, -1), reverse=True)
    dropped = []
    for version in others[settings.keep_collections:]:
        name = collection_name(collection, version)
        client.delete_collection(name)
        dropped.append(name)
    return dropped


def pending_reindexes(settings: Settings, client) -> list[tuple[str, Path]]:
    """(collection, bundle) pairs whose newest registered bundle is not live yet."""
    versions = registered(settings)
    if not versions:
        return []
    newest_version, newest_path, _ = versions[-1]
    todo = []
    for alias in client.get_aliases().aliases:
        current = version_of(alias.collection_name)
        if current and current != newest_version and active_pin(settings, alias.alias_name) is None:
            todo.append((alias.alias_name, newest_path))
    return todo


def run_tick(settings: Settings) -> dict[str, list[str] | str]:
    """The beat's tick: finish re-indexes whose job is done, start one where a newer registered version exists."""
    store = job_store(settings)
    # Single flight: one tick at a time across every worker; the lock expires by itself.
    if not store.lock("reindex-tick", max(30, settings.reindex_interval)):
        return {"skipped": "another tick holds the lock"}
    actions: dict[str, list] = {"finished": [], "started": [], "running": []}
    client = connect(settings)
    try:
        for alias in client.get_aliases().aliases:
            state = store.reindex_state(alias.alias_name)
            if state and state.get("job"):
                if store.status(state["job"])["state"] == "done":
                    actions["finished"].append(finish(settings, client, store, alias.alias_name)["live"])
                else:
                    actions["running"].append(alias.alias_name)
        for collection, bundle in pending_reindexes(settings, client):
            if store.reindex_state(collection) is None:
                actions["started"].append(start(settings, client, store, collection, str(bundle))["target"])
    finally:
        client.close()
        store.unlock("reindex-tick")
    return actions
