"""The Celery worker application: the ingestion task and the re-index tick, over plain functions.

The task is thin: it calls `process_batch`, which the in-process mode calls too, with the one retry policy
(`ingest.retry_delay`). A delivery counter per attempt dead-letters a message that keeps killing workers
as poison instead of letting it loop forever (Redis rejects behave like acks, so deliveries are counted here).
"""

from __future__ import annotations

import logging
import time

from celery import Celery, signals

from hark.settings import Settings

from . import recovery
from .ingest import Item, give_up, process_batch, retry_delay
from .jobs import job_store, worker_name
from .reindex import run_tick
from .submit import QUEUE, TASK, TICK, celery_app, soft_time_limit

log = logging.getLogger(__name__)
# Share of the soft time limit after which a batch starts no further file.
BATCH_DEADLINE_SHARE = 0.9


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.load()
    app = celery_app(settings)
    app.hark_settings = settings

    @app.task(bind=True, name=TASK, acks_late=True, reject_on_worker_lost=True)
    def ingest_batch(self, job_id: str, items: list[dict], collection: str, bundle: str) -> dict:
        batch = [Item(i["path"], i.get("meta") or {}) for i in items]
        store = job_store(settings)
        recovery.start(app, store, settings.worker_heartbeat)  # this process's heartbeats (once)
        delivery = store.count_delivery(f"{self.request.id}:{self.request.retries}")
        if delivery > settings.max_deliveries:
            give_up(job_id, batch, collection, bundle, store,
                    f"poison message: delivered {delivery - 1} times without finishing")
            store.release(job_id, self.request.id)
            return {"job": job_id, "poison": True}
        # Who holds the batch: `hark jobs` shows it, and a batch whose worker dies is redelivered (recovery).
        store.take(job_id, self.request.id, worker_name())
        # No file starts past 90% of Celery's soft limit; this holds in the solo pool too, where that limit is
        # never enforced (a file already started may still run past it).
        deadline = time.monotonic() + soft_time_limit(settings) * BATCH_DEADLINE_SHARE
        try:
            outcomes = process_batch(job_id, batch, collection, bundle, store, settings, deadline=deadline)
        except Exception as exc:
            store.release(job_id, self.request.id)
            countdown = retry_delay(settings, exc, self.request.retries)
            if countdown is not None:
                log.warning("batch of job %s: %s; retry %d in %.1f s", job_id, exc, self.request.retries + 1,
                            countdown)
                raise self.retry(exc=exc, countdown=countdown, max_retries=settings.max_retries) from exc
            give_up(job_id, batch, collection, bundle, store, f"gave up: {type(exc).__name__}: {exc}")
            return {"job": job_id, "failed": True}
        store.release(job_id, self.request.id)
        return {"job": job_id, "files": len(outcomes)}

    @app.task(bind=True, name=TICK)
    def reindex_tick(self) -> dict:
        """Beat: finish re-indexes whose job is done, start one where a newer registered version exists."""
        return run_tick(settings)

    if settings.reindex_interval > 0:
        # A tick that waited longer than one interval is dropped (expires): ticks never pile up.
        app.conf.beat_schedule = {"hark-reindex": {"task": TICK, "schedule": float(settings.reindex_interval),
                                                   "options": {"expires": float(settings.reindex_interval)}}}
    @signals.worker_ready.connect(weak=False)
    def reap_at_start(sender=None, **_kwargs) -> None:
        # A restarted worker redelivers the batches of the one it replaces without waiting for a task.
        recovery.start(app, job_store(settings), settings.worker_heartbeat)

    app.ingest_batch = ingest_batch
    app.reindex_tick = reindex_tick
    return app


def worker_argv(pool: str, concurrency: int, loglevel: str = "INFO") -> list[str]:
    return ["worker", f"--pool={pool}", f"--concurrency={concurrency}", f"--loglevel={loglevel}", "-Q", QUEUE,
            "--without-gossip", "--without-mingle"]
