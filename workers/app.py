"""The Celery application (Redis broker) and its one ingestion task.

Reliability settings (DESIGN.md): late acks and reject-on-worker-lost, so a killed worker's batch is
redelivered; prefetch 1; a visibility timeout above the longest task plus retry countdowns, set in every
place Celery reads it; bounded retries with backoff only for transient errors; a delivery counter per
attempt so a message that keeps killing workers is dead-lettered as poison instead of looping forever.
The task is thin: it calls `process_batch`, which the in-process mode calls too.
"""

from __future__ import annotations

import logging

from celery import Celery

from hark.plugin.store import is_transient
from hark.settings import Settings

from .ingest import Item, give_up, process_batch
from .jobs import job_store

log = logging.getLogger(__name__)

QUEUE = "hark.ingest"
TASK = "hark.ingest_batch"
TICK = "hark.reindex_tick"


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.load()
    app = Celery("hark", broker=settings.broker_url or "memory://")
    # Kombu sweeps for abandoned (unacked) messages every interval x throttle seconds, 100 s by default;
    # sweeping a few times per visibility timeout bounds how long a killed worker's batch waits.
    sweep = max(1, min(60, settings.visibility_timeout // 4))
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
    )
    app.hark_settings = settings

    @app.task(bind=True, name=TASK, acks_late=True, reject_on_worker_lost=True)
    def ingest_batch(self, job_id: str, items: list[dict], collection: str, bundle: str) -> dict:
        batch = [Item(i["path"], i.get("meta") or {}) for i in items]
        store = job_store(settings)
        delivery = store.count_delivery(f"{self.request.id}:{self.request.retries}")
        if delivery > settings.max_deliveries:
            give_up(job_id, batch, collection, bundle, store,
                    f"poison message: delivered {delivery - 1} times without finishing")
            return {"job": job_id, "poison": True}
        try:
            outcomes = process_batch(job_id, batch, collection, bundle, store, settings)
        except Exception as exc:
            if is_transient(exc) and self.request.retries < settings.max_retries:
                countdown = settings.retry_backoff * 2**self.request.retries
                log.warning("batch of job %s: %s; retry %d in %.1f s", job_id, exc, self.request.retries + 1,
                            countdown)
                raise self.retry(exc=exc, countdown=countdown, max_retries=settings.max_retries) from exc
            give_up(job_id, batch, collection, bundle, store, f"gave up: {type(exc).__name__}: {exc}")
            return {"job": job_id, "failed": True}
        return {"job": job_id, "files": len(outcomes)}

    @app.task(bind=True, name=TICK)
    def reindex_tick(self) -> dict:
        """Beat: finish re-indexes whose job is done, start one where a newer registered version exists."""
        return run_tick(settings)

    if settings.reindex_interval > 0:
        # A tick that waited longer than one interval is dropped (expires): ticks never pile up.
        app.conf.beat_schedule = {"hark-reindex": {"task": TICK, "schedule": float(settings.reindex_interval),
                                                   "options": {"expires": float(settings.reindex_interval)}}}
    app.ingest_batch = ingest_batch
    app.reindex_tick = reindex_tick
    return app


def run_tick(settings: Settings) -> dict:
    from hark.plugin.store import connect

    from .reindex import finish, pending_reindexes, start

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


def worker_argv(pool: str, concurrency: int, loglevel: str = "INFO") -> list[str]:
    return ["worker", f"--pool={pool}", f"--concurrency={concurrency}", f"--loglevel={loglevel}", "-Q", QUEUE,
            "--without-gossip", "--without-mingle"]
