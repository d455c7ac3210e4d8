"""Redelivering a killed worker's batch within a minute instead of one visibility timeout.

Celery's Redis transport keeps an unacknowledged message in the `unacked` hash until the visibility timeout
(HARK_VISIBILITY_TIMEOUT, an hour by default, sized for the longest batch) has passed. Every batch a worker
takes is recorded in the job store with the worker's name (`JobStore.take`), and every worker process sends a
heartbeat every HARK_WORKER_HEARTBEAT seconds. Each worker also runs a reaper at start and at each heartbeat:
a batch whose worker has been silent for `MISSED_HEARTBEATS` heartbeats is put back on its queue (the
transport's own restore, so it is not restored twice). Bound: 3 heartbeats + 1 reaper period + the time to
pick it up, about 40 s with the defaults, as long as any worker is running (a restarted one reaps at start).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from .jobs import JobStore, worker_name

log = logging.getLogger(__name__)

MISSED_HEARTBEATS = 3
_started: dict[str, threading.Thread] = {}
_lock = threading.Lock()


def _unacked_tag(app, task_id: str) -> str | None:
    """The transport's delivery tag of the unacknowledged message carrying `task_id`, if any."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for tag, raw in channel.client.hgetall(channel.qos.unacked_key).items():
            try:
                message = json.loads(raw)[0]
            except (ValueError, IndexError, TypeError):
                continue
            if (message.get("headers") or {}).get("id") == task_id:
                return tag.decode() if isinstance(tag, bytes) else tag
    return None


def restore_orphans(app, store: JobStore) -> list[dict[str, Any]]:
    """Put back on the queue every batch in flight whose worker stopped sending heartbeats."""
    restored = []
    for entry in store.in_flight():
        if entry.get("requeued") or store.alive(entry["worker"]):
            continue
        tag = _unacked_tag(app, entry["task"])
        if tag is None:
            # Already acknowledged or restored by the transport: nothing left to redeliver.
            store.release(entry["job"], entry["task"])
            continue
        with app.connection_for_write() as conn:
            conn.default_channel.qos.restore_by_tag(tag, leftmost=True)
        store.mark_requeued(entry["job"], entry["task"])
        log.warning("worker %s is gone: batch %s of job %s put back on the queue", entry["worker"],
                    entry["task"], entry["job"])
        restored.append(entry)
    return restored


def start(app, store: JobStore, interval: float, reap: bool = True) -> None:
    """Heartbeats (and the reaper) for this process, once per process; a daemon thread."""
    name = worker_name()
    with _lock:
        if name in _started and _started[name].is_alive():
            return
        store.heartbeat(name, interval * MISSED_HEARTBEATS)
        stop = threading.Event()

        def loop() -> None:
            while True:
                try:
                    store.heartbeat(name, interval * MISSED_HEARTBEATS)
                    if reap:
                        restore_orphans(app, store)
                except Exception as exc:  # Redis briefly unreachable: try again at the next beat
                    log.warning("heartbeat failed: %s", exc)
                if stop.wait(interval):
                    return

        thread = threading.Thread(target=loop, name="hark-heartbeat", daemon=True)
        thread.start()
        _started[name] = thread
