"""Re-indexing a collection with a new model, and rolling back.

The alias `NAME` is the one source of truth for what is live: `NAME__<version>` collections are built
beside it and the alias switches atomically once the new one is verified. A re-index is a small state
machine kept in the job store (start -> ingest job -> finish), so it can be driven by `hark reindex`, by
the Celery beat tick, or resumed after a crash; the live alias is only touched by `finish`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from hark.bundle import Bundle
from hark.errors import HarkError
from hark.registry import active_pin, pin, registered, resolve_bundle
from hark.settings import Settings
from hark.store import (
    collection_name,
    connect,
    ensure_collection,
    resolve_collection,
    scroll_payloads,
    version_of,
)

from .ingest import NAMES_FIELD, Item, ingestor_for, names_of, stream_windows, sweep_all_incomplete
from .jobs import JobStore, job_store
from .submit import submit_job, wait_for

log = logging.getLogger(__name__)

SAMPLE_CHECKS = 5
# A re-index recorded without a job for this long died between `start` recording it and submitting its job.
STALE_START_S = 3600
# Times the beat's tick submits a finished re-index's failed files again before leaving them to an operator.
TICK_RETRIES = 2
# Beyond the visibility timeout, before windows without `windows` count as left by a dead worker (clock skew).
INCOMPLETE_GRACE_S = 300


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
    for pid, payload in scroll_payloads(client, physical, ["source_uri", "sources", NAMES_FIELD, "meta"]):
        uri = payload.get("source_uri")
        if uri:
            # The first name first, then the others it was seen under (they re-ingest as duplicates).
            for name in names_of(payload):
                items.setdefault(name, Item(name, payload.get("meta") or {}))
            ids.setdefault(uri, []).append(str(pid))
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


def _stored_names(client, physical: str) -> set[str]:
    """Every name (first and other) of the files stored complete in `physical` (their points carry `windows`)."""
    names: set[str] = set()
    for _, payload in scroll_payloads(client, physical, ["source_uri", "sources", NAMES_FIELD, "windows"]):
        if payload.get("windows") and payload.get("source_uri"):
            names.update(names_of(payload))
    return names


def verify(settings: Settings, client, store: JobStore, state: dict[str, Any],
           allow_failures: bool = False) -> dict[str, Any]:
    """Every file of the live collection is stored complete in the new one, and sampled vectors recompute.

    Files, not point ids: a new model may cut recordings into other windows. A file that failed to re-ingest
    refuses the switch (the new collection would lose it) unless `allow_failures`.
    """
    status = store.status(state["job"])
    failed = dict(status["failures"])
    if failed and not allow_failures:
        examples = "; ".join(f"{uri}: {reason}" for uri, reason in list(failed.items())[:3])
        raise ReindexError(f"{len(failed)} of {status['total']} files of {state['from']} failed to re-ingest "
                           f"({examples}); the alias stays on {state['from']}. Run `hark reindex` again to retry "
                           "them, or with --allow-failures to switch without them")
    items, live_ids = _sources(client, state["from"])
    expected = {item.path for item in items} - set(failed)
    found = _stored_names(client, state["target"])
    missing = sorted(expected - found)
    if missing:
        raise ReindexError(f"{len(missing)} files of {state['from']} are missing from {state['target']} "
                           f"(e.g. {missing[0]}); run `hark reindex` again to resubmit them")
    checked = _recompute_sample(settings, client, state)
    return {"expected": sum(len(v) for uri, v in live_ids.items() if uri not in failed),
            "files": len(expected), "stored": _count(client, state["target"]), "failed_files": len(failed),
            "recomputed": checked}


def _count(client, physical: str) -> int:
    return int(client.count(physical, exact=True).count)


def _recompute_sample(settings: Settings, client, state: dict[str, Any]) -> int:
    from hark.audio import iter_audio
    from hark.sources import local_copy

    ingestor = ingestor_for(state["bundle"], settings)
    points, _ = client.scroll(state["target"], limit=SAMPLE_CHECKS, with_payload=True, with_vectors=["global"])
    sr = ingestor.bundle.sample_rate
    checked = 0
    for p in points:
        payload = p.payload or {}
        index = int(payload["window_index"])
        try:
            with local_copy(payload["source_uri"], max_bytes=settings.max_spool_bytes) as copy:
                # Stream up to the window needed: a long recording is never held whole.
                windows = enumerate(stream_windows(iter_audio(copy.path, sr), ingestor.window_samples, sr))
                piece = next((w for i, (_, w) in windows if i == index), None)
        except (HarkError, OSError) as exc:
            piece, why = None, str(exc)
        else:
            why = "the file is shorter now"
        if piece is None:
            # The source changed or went away since it was ingested: it says nothing about the new vectors.
            log.warning("re-index check skips %s: %s", payload["source_uri"], why)
            continue
        checked += 1
        fresh = ingestor.encoder.encode_windows([piece], with_moments=False)[0].global_
        stored = np.asarray(p.vector["global"], dtype=np.float32)
        cos = float(fresh @ stored / (np.linalg.norm(fresh) * np.linalg.norm(stored) + 1e-12))
        if cos < 0.999:
            raise ReindexError(f"stored vector of {payload['source_uri']} does not recompute (cosine {cos:.4f})")
    return checked


def switch_alias(client, collection: str, target: str) -> None:
    """Point `collection` at `target` in one request: readers see the old or the new one, never neither."""
    from qdrant_client import models

    operations = []
    if any(a.alias_name == collection for a in client.get_aliases().aliases):
        operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=collection)))
    operations.append(models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=target,
                                                                                  alias_name=collection)))
    client.update_collection_aliases(change_aliases_operations=operations)


def finish(settings: Settings, client, store: JobStore, collection: str,
           allow_failures: bool = False) -> dict[str, Any]:
    """Verify the new collection, switch the alias, prune old versions, clear the re-index mark.

    A switch without some files (`allow_failures`) prunes nothing: the previous collection still holds them.
    """
    state = store.reindex_state(collection)
    if not state or not state.get("job"):
        raise ReindexError(f"no re-index of '{collection}' in progress")
    pinned = active_pin(settings, collection)
    if pinned is not None and pinned != state["version"]:
        raise ReindexError(f"'{collection}' is pinned to version {pinned} (a rollback); the re-index to "
                           f"{state['version']} does not switch it. Lift the pin (hark models unpin) first")
    report = verify(settings, client, store, state, allow_failures)
    switch_alias(client, collection, state["target"])
    store.set_reindex(collection, None)
    pruned = prune(settings, client, collection) if not report["failed_files"] else []
    log.info("re-index of %s: %s is live (%s)", collection, state["target"], report)
    return {**report, "collection": collection, "live": state["target"], "previous": state["from"],
            "pruned": pruned}


def resume(settings: Settings, client, store: JobStore, state: dict[str, Any],
           only: set[str] | None = None) -> dict[str, Any]:
    """Submit a re-index's sources again under a new job: what is stored already is skipped as a duplicate, so
    this finishes an interrupted job. `only`: just these sources (the files that failed in a finished job; the
    others would only be hashed again to be found stored)."""
    items, _ = _sources(client, state["from"])
    if only is not None:
        items = [item for item in items if item.path in only]
    collection = state["collection"]

    def remember(job_id: str) -> None:
        state["job"] = job_id
        store.set_reindex(collection, state)

    submit_job(settings, items, collection, state["bundle"], client=client, on_created=remember)
    return state


def reindex(settings: Settings, store: JobStore, collection: str, bundle_ref: str, client=None,
            timeout: float | None = None, on_update=None, allow_failures: bool = False) -> dict[str, Any]:
    """The whole re-index; resumes one that was interrupted (same bundle) instead of starting over, and retries
    the files that failed in the last run (switching without them only with `allow_failures`).

    Without a client, the embedded folder is opened only while this process needs it, so the workers can
    write to it in between.
    """
    bundle_path = str(resolve_bundle(settings, bundle_ref).resolve())
    c = client if client is not None else connect(settings)
    try:
        state = store.reindex_state(collection)
        if not state or state.get("bundle") != bundle_path or not state.get("job"):
            state = start(settings, c, store, collection, bundle_ref)
        else:
            status = store.status(state["job"])
            if status["state"] != "done":
                state = resume(settings, c, store, state)
            elif status["failures"] and not allow_failures:
                state = resume(settings, c, store, state, only=set(status["failures"]))
    finally:
        if client is None:
            c.close()
    wait_for(store, state["job"], timeout=timeout, on_update=on_update)
    c = client if client is not None else connect(settings)
    try:
        return finish(settings, c, store, collection, allow_failures)
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
    errors: list[str] = []
    client = connect(settings)
    try:
        for alias in client.get_aliases().aliases:
            name = alias.alias_name
            # One collection's trouble (a file that failed, a pin) is reported, never stops the others' work.
            try:
                _tick_one(settings, client, store, name, actions)
            except Exception as exc:
                log.error("re-index tick, %s: %s", name, exc)
                errors.append(f"{name}: {exc}")
        for collection, bundle in pending_reindexes(settings, client):
            if store.reindex_state(collection) is None:
                try:
                    actions["started"].append(start(settings, client, store, collection, str(bundle))["target"])
                except Exception as exc:
                    log.error("re-index tick, starting %s: %s", collection, exc)
                    errors.append(f"{collection}: {exc}")
        # Windows a killed worker left incomplete: older than a visibility timeout (a redelivery rewrites the file
        # with a newer time) and of a job that is over (in the solo pool nothing ends a long file's batch).
        try:
            before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=settings.visibility_timeout + INCOMPLETE_GRACE_S)
            swept = sweep_all_incomplete(client, before, _job_running(store))
            if swept:
                actions["swept"] = [f"{name}: {n} windows" for name, n in swept.items()]
        except Exception as exc:
            log.error("re-index tick, removing incomplete windows: %s", exc)
            errors.append(f"incomplete windows: {exc}")
    finally:
        client.close()
        store.unlock("reindex-tick")
    if errors:
        actions["errors"] = errors
    return actions


def _job_running(store: JobStore):
    """job id -> whether that job is still in progress (an unknown or expired job is not), asked once per job."""
    known: dict[str, bool] = {}

    def running(job: str) -> bool:
        if job not in known:
            try:
                known[job] = bool(job) and store.status(job)["state"] != "done"
            except KeyError:
                known[job] = False
        return known[job]

    return running


def _tick_one(settings: Settings, client, store: JobStore, name: str, actions: dict[str, list]) -> None:
    state = store.reindex_state(name)
    if not state:
        return
    pinned = active_pin(settings, name)
    if pinned is not None and pinned != state.get("version"):
        # Rolled back while the re-index ran: the pin wins, the new collection stays for a later re-index.
        store.set_reindex(name, None)
        actions.setdefault("abandoned", []).append(state.get("target"))
        return
    if not state.get("job"):
        # `start` records the re-index before it submits the job; one that died in between is started again
        # once it is clearly not merely slow (listing the sources of a large collection takes a while).
        if time.time() - float(state.get("started", 0)) > STALE_START_S:
            resume(settings, client, store, state)
            actions["running"].append(name)
        return
    status = store.status(state["job"])
    if status["state"] != "done":
        actions["running"].append(name)
        return
    failed = set(status["failures"])
    retries = int(state.get("tick_retries", 0))
    if failed and retries < TICK_RETRIES:
        # A failure may be passing (a storage hiccup, a worker lost mid-batch): the tick retries the failed files
        # a few times by itself before the refused switch waits for an operator (`hark reindex`).
        state["tick_retries"] = retries + 1  # recorded with the retry's job (`resume`), so a failed submit costs none
        resume(settings, client, store, state, only=failed)
        actions.setdefault("retried", []).append(f"{name}: {len(failed)} files")
        return
    actions["finished"].append(finish(settings, client, store, name)["live"])
