"""Submitting ingestion jobs: one task per batch of files to the broker, or the in-process worker.

Tasks are enqueued by name through a Celery client that registers no tasks, so submitting never imports the
worker application (which imports re-indexing, which submits: a cycle otherwise).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery

from hark.settings import Settings

from .ingest import Item, give_up, run_inline
from .jobs import JobStore, job_store, new_job_id

QUEUE = "hark.ingest"
TASK = "hark.ingest_batch"
TICK = "hark.reindex_tick"


def celery_app(settings: Settings) -> Celery:
    """A Celery application configured for hark's reliability rules (DESIGN.md), with no tasks registered.

    Late acks and reject-on-worker-lost, so a killed worker's batch is redelivered; prefetch 1; a
    visibility timeout above the longest task plus retry countdowns, set in every place Celery reads it.
    """
    app = Celery("hark", broker=settings.broker_url or "memory://")
    # Kombu sweeps for abandoned (unacked) messages every interval x throttle seconds, 100 s by default;
    # sweeping a few times per visibility timeout bounds how long a killed worker's batch waits.
    sweep = max(1, min(60, settings.visibility_timeout // 4))
    soft_limit = soft_time_limit(settings)
    transport = {"visibility_timeout": settings.visibility_timeout, "unacked_restore_interval": sweep,
                 "unacked_restore_throttle": 1}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        visibility_timeout=settings.visibility_timeout,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # A task still running when its visibility timeout ends is delivered again to another worker, and each
        # redelivery counts towards the poison verdict: a batch past the timeout runs twice, then is dead-lettered
        # while it still runs. The soft limit ends it first (its unfinished files are dead-lettered with the
        # reason; not transient, so never retried), the hard limit a worker stuck in C code. Both need the prefork
        # pool; the solo pool of the embedded store and CUDA ignores them, and there only the task's own deadline
        # (no file started after 90% of the soft limit, `process_batch`) bounds a batch.
        task_soft_time_limit=soft_limit,
        task_time_limit=max(soft_limit + 1, settings.visibility_timeout - 5),
    )
    return app


def soft_time_limit(settings: Settings) -> int:
    """Seconds a batch may run: 90% of the visibility timeout (HARK_VISIBILITY_TIMEOUT raises both)."""
    return max(1, int(settings.visibility_timeout * 0.9))


def batches_of(items: Sequence[Item], size: int) -> list[list[Item]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def submit_job(settings: Settings, items: Sequence[Item], collection: str, bundle_path: str,
               on_progress: Callable[[dict[str, Any]], None] | None = None, client=None,
               on_created: Callable[[str], None] | None = None) -> tuple[str, JobStore]:
    """Create a job and hand its batches to the broker, or run them here when no broker is configured.

    `on_created(job_id)` runs before any batch (so a caller can record the job first); in-process,
    `on_progress(status)` runs after each batch with the job's status.
    """
    store = job_store(settings)
    job_id = new_job_id()
    store.create(job_id, collection, len(items), bundle_path)
    if on_created is not None:
        on_created(job_id)
    batches = batches_of(items, settings.batch_files)
    if settings.broker_url:
        app = celery_app(settings)
        for sent, batch in enumerate(batches):
            try:
                app.send_task(TASK, args=(job_id, [i.to_json() for i in batch], collection, bundle_path), queue=QUEUE)
            except Exception as exc:
                # The job counts every file: the ones never queued get their outcome here, or it would wait for
                # them forever. They are dead-lettered, so `hark failed --retry` (or a re-index run) queues them again.
                unsent = [item for rest in batches[sent:] for item in rest]
                give_up(job_id, unsent, collection, bundle_path, store,
                        f"not queued: the broker refused the batch ({type(exc).__name__}: {exc})")
                raise
    else:
        def after_batch() -> None:
            if on_progress is not None:
                on_progress(store.status(job_id))

        run_inline(job_id, batches, collection, bundle_path, store, settings, on_batch=after_batch, client=client)
    return job_id, store


def resubmit_dead_letters(settings: Settings) -> list[dict[str, Any]]:
    """Re-submit every dead-lettered file, one job per (collection, bundle), and clear those entries."""
    store = job_store(settings)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in store.dead_letters():
        groups.setdefault((entry["collection"], entry["bundle"]), []).append(entry)
    jobs = []
    for (collection, bundle), group in groups.items():
        store.clear_dead_letters({e["id"] for e in group})
        job_id, _ = submit_job(settings, [Item(e["path"], e.get("meta") or {}) for e in group], collection, bundle)
        jobs.append({"job": job_id, "files": len(group)})
    return jobs


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
