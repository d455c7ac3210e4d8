"""Submitting ingestion jobs: one task per batch of files to the broker, or the in-process worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from hark.settings import Settings

from .ingest import Item, run_inline
from .jobs import JobStore, job_store, new_job_id


def batches_of(items: Sequence[Item], size: int) -> list[list[Item]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def submit_job(settings: Settings, items: Sequence[Item], collection: str, bundle_path: str,
               on_batch: Callable[[], None] | None = None,
               on_created: Callable[[str, JobStore], None] | None = None, client=None) -> tuple[str, JobStore]:
    """Create a job and hand its batches to the broker, or run them here when no broker is configured."""
    store = job_store(settings)
    job_id = new_job_id()
    store.create(job_id, collection, len(items), bundle_path)
    if on_created is not None:
        on_created(job_id, store)
    batches = batches_of(items, settings.batch_files)
    if settings.broker_url:
        from .app import make_app

        app = make_app(settings)
        for batch in batches:
            app.ingest_batch.apply_async(args=(job_id, [i.to_json() for i in batch], collection, bundle_path))
    else:
        run_inline(job_id, batches, collection, bundle_path, store, settings, on_batch=on_batch, client=client)
    return job_id, store


def wait_for(store: JobStore, job_id: str, timeout: float | None = None,
             on_update: Callable[[dict[str, Any]], None] | None = None, poll: float = 0.5) -> dict[str, Any]:
    """Poll a job's status until every file has an outcome (or the timeout passes)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = store.status(job_id)
        if on_update is not None:
            on_update(status)
        if status["state"] == "done":
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still has {status['pending']} pending files")
        time.sleep(poll)
