"""Job status and the dead-letter list: in Redis with a broker, in files for the embedded mode.

Per-file outcomes are recorded by path in sets/hashes, so a redelivered batch that processes a file again
does not count it twice.

Batches in flight are recorded with the worker that took them and when; workers send heartbeats, so a
batch whose worker went silent shows as "waiting for redelivery" (and `recovery` puts it back on the queue).
A finished job's keys expire after HARK_JOB_TTL_DAYS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from hark.errors import SourcedError, json_excerpt

log = logging.getLogger(__name__)

STATES = ("ingested", "duplicate", "failed")
UNREADABLE = "unreadable"  # the state `FileJobStore.jobs` lists a job record it cannot read as

# The fields of a dead-letter entry (`dead_letter_entry`), all text; `meta` is an object.
_DEAD_LETTER_FIELDS = ("id", "job", "path", "reason", "collection", "bundle", "at")


class StateFileError(SourcedError):
    """A file of the embedded job state (a job record, the dead-letter list) that is unreadable or of the wrong
    shape. Never rewritten: a write would lose what it holds; the message names the file to fix or move."""


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


WAITING = "waiting for redelivery"


def summarize(meta: dict[str, Any], outcomes: dict[str, dict[str, str]],
              batches: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A job's status; `batches` are its batches in flight, each with `state` "running" or WAITING."""
    counts = {s: 0 for s in STATES}
    failures, duplicates = {}, {}
    for path, outcome in outcomes.items():
        counts[outcome["status"]] += 1
        if outcome["status"] == "failed":
            failures[path] = outcome.get("reason", "")
        elif outcome["status"] == "duplicate" and outcome.get("reason"):
            duplicates[path] = outcome["reason"]
    total = int(meta.get("total", 0))
    finished = sum(counts.values())
    batches = batches or []
    state = "done" if finished >= total else "running"
    if state == "running" and batches and all(b["state"] == WAITING for b in batches):
        state = WAITING
    return {**meta, **counts, "total": total, "pending": max(0, total - finished), "state": state,
            "failures": failures, "duplicates": duplicates, "batches": batches, "finished": sorted(outcomes)}


def worker_name() -> str:
    """This process as a worker: host and pid (a restarted worker is a new one)."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


class JobStore(Protocol):
    def create(self, job_id: str, collection: str, total: int, bundle: str) -> None: ...
    def record(self, job_id: str, path: str, status: str, reason: str = "") -> None: ...
    def status(self, job_id: str) -> dict[str, Any]: ...
    def jobs(self) -> list[dict[str, Any]]: ...
    def dead_letter(self, entry: dict[str, Any]) -> None: ...
    def dead_letters(self) -> list[dict[str, Any]]: ...
    def clear_dead_letters(self, ids: set[str]) -> None: ...
    def count_delivery(self, key: str) -> int: ...
    def set_reindex(self, collection: str, state: dict[str, Any] | None) -> None: ...
    def reindex_state(self, collection: str) -> dict[str, Any] | None: ...
    def lock(self, name: str, seconds: int) -> bool: ...
    def unlock(self, name: str) -> None: ...
    def take(self, job_id: str, task_id: str, worker: str) -> None: ...
    def release(self, job_id: str, task_id: str) -> None: ...
    def in_flight(self, job_id: str | None = None) -> list[dict[str, Any]]: ...
    def mark_requeued(self, job_id: str, task_id: str) -> None: ...
    def heartbeat(self, worker: str, seconds: float) -> None: ...
    def alive(self, worker: str) -> bool: ...


def dead_letter_entry(job_id: str, path: str, reason: str, collection: str, bundle: str,
                      meta: dict[str, Any] | None = None) -> dict[str, Any]:
    # One entry per (collection, file): failing the same file again updates it instead of piling up.
    entry_id = hashlib.sha256(f"{collection}\0{path}".encode()).hexdigest()[:12]
    return {"id": entry_id, "job": job_id, "path": path, "reason": reason, "collection": collection,
            "bundle": bundle, "meta": meta or {}, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class RedisJobStore:
    def __init__(self, url: str, prefix: str = "hark", ttl_seconds: float = 30 * 86400) -> None:
        import redis

        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def create(self, job_id: str, collection: str, total: int, bundle: str) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(self._k("job", job_id), mapping={"id": job_id, "collection": collection, "total": total,
                                                   "bundle": bundle, "created": time.time()})
        pipe.zadd(self._k("jobs"), {job_id: time.time()})
        pipe.execute()

    def record(self, job_id: str, path: str, status: str, reason: str = "") -> None:
        files = self._k("job", job_id, "files")
        pipe = self.redis.pipeline()
        pipe.hset(files, path, json.dumps({"status": status, "reason": reason}))
        pipe.hlen(files)
        pipe.hget(self._k("job", job_id), "total")
        _, finished, total = pipe.execute()
        if total is not None and finished >= int(total):
            # Finished: the status stays readable for the retention period, then the keys go.
            ttl = max(1, int(self.ttl_seconds))
            pipe = self.redis.pipeline()
            pipe.hset(self._k("job", job_id), "finished_at", time.time())
            pipe.expire(self._k("job", job_id), ttl)
            pipe.expire(files, ttl)
            pipe.execute()

    def status(self, job_id: str) -> dict[str, Any]:
        meta = self.redis.hgetall(self._k("job", job_id))
        if not meta:
            raise KeyError(job_id)
        files = {p: json.loads(v) for p, v in self.redis.hgetall(self._k("job", job_id, "files")).items()}
        return summarize(meta, files, self.in_flight(job_id))

    def jobs(self) -> list[dict[str, Any]]:
        found = []
        for j in self.redis.zrange(self._k("jobs"), 0, -1):
            if self.redis.exists(self._k("job", j)):
                found.append(self.status(j))
            else:
                self.redis.zrem(self._k("jobs"), j)  # expired: drop it from the index too
        return found

    def take(self, job_id: str, task_id: str, worker: str) -> None:
        self.redis.hset(self._k("inflight"), f"{job_id}:{task_id}",
                        json.dumps({"job": job_id, "task": task_id, "worker": worker, "taken": time.time()}))

    def release(self, job_id: str, task_id: str) -> None:
        self.redis.hdel(self._k("inflight"), f"{job_id}:{task_id}")

    def mark_requeued(self, job_id: str, task_id: str) -> None:
        key = f"{job_id}:{task_id}"
        raw = self.redis.hget(self._k("inflight"), key)
        if raw:
            entry = json.loads(raw)
            entry["requeued"] = time.time()
            self.redis.hset(self._k("inflight"), key, json.dumps(entry))

    def in_flight(self, job_id: str | None = None) -> list[dict[str, Any]]:
        entries = [json.loads(v) for v in self.redis.hvals(self._k("inflight"))]
        entries = [e for e in entries if job_id is None or e["job"] == job_id]
        for e in entries:
            e["state"] = "running" if not e.get("requeued") and self.alive(e["worker"]) else WAITING
        return sorted(entries, key=lambda e: e["taken"])

    def heartbeat(self, worker: str, seconds: float) -> None:
        self.redis.set(self._k("worker", worker), time.time(), px=max(1, int(seconds * 1000)))

    def alive(self, worker: str) -> bool:
        return bool(self.redis.exists(self._k("worker", worker)))

    def dead_letter(self, entry: dict[str, Any]) -> None:
        self.redis.hset(self._k("deadletter"), entry["id"], json.dumps(entry))

    def dead_letters(self) -> list[dict[str, Any]]:
        return sorted((json.loads(v) for v in self.redis.hvals(self._k("deadletter"))), key=lambda e: e["at"])

    def clear_dead_letters(self, ids: set[str]) -> None:
        if ids:
            self.redis.hdel(self._k("deadletter"), *ids)

    def set_reindex(self, collection: str, state: dict[str, Any] | None) -> None:
        if state is None:
            self.redis.delete(self._k("reindex", collection))
        else:
            self.redis.set(self._k("reindex", collection), json.dumps(state))

    def reindex_state(self, collection: str) -> dict[str, Any] | None:
        raw = self.redis.get(self._k("reindex", collection))
        return json.loads(raw) if raw else None

    def lock(self, name: str, seconds: int) -> bool:
        """A single-flight lock that expires by itself (a crashed holder never blocks for long)."""
        return bool(self.redis.set(self._k("lock", name), "1", nx=True, ex=seconds))

    def unlock(self, name: str) -> None:
        self.redis.delete(self._k("lock", name))

    def count_delivery(self, key: str) -> int:
        name = self._k("deliveries", key)
        count = self.redis.incr(name)
        self.redis.expire(name, 7 * 24 * 3600)  # bounded: a finished task's counter expires
        return int(count)


class FileJobStore:
    """Embedded mode: one JSON file per job and a JSON dead-letter file, written atomically."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)

    def _write(self, path: Path, data: Any) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def _read(self, path: Path, default: Any) -> Any:
        """The JSON in `path`, `default` when there is no such file; anything else unreadable, or not the object
        every state file holds, is a `StateFileError` naming the file."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return default
        except (OSError, ValueError) as exc:  # ValueError: broken JSON, bytes that are not UTF-8
            raise StateFileError(str(path), f"unreadable ({exc})") from exc
        if not isinstance(data, dict):
            raise StateFileError(str(path), f"expected a JSON object, found {json_excerpt(data)}")
        return data

    def _job(self, job_id: str) -> Path:
        # Ids are ours (`new_job_id`): one that could name a file outside jobs/ is no job.
        if not job_id or "/" in job_id or "\\" in job_id or "\0" in job_id or job_id.startswith("."):
            raise KeyError(job_id)
        return self.root / "jobs" / f"{job_id}.json"

    def _read_job(self, job_id: str) -> dict[str, Any]:
        path = self._job(job_id)
        data = self._read(path, None)
        if data is None:
            raise KeyError(job_id)
        problem = _job_problem(data)
        if problem:
            raise StateFileError(str(path), f"not a job record: {problem}")
        return data

    def create(self, job_id: str, collection: str, total: int, bundle: str) -> None:
        self._write(self._job(job_id), {"meta": {"id": job_id, "collection": collection, "total": total,
                                                 "bundle": bundle, "created": time.time()}, "files": {}})

    def record(self, job_id: str, path: str, status: str, reason: str = "") -> None:
        data = self._read_job(job_id)
        data["files"][path] = {"status": status, "reason": reason}
        self._write(self._job(job_id), data)

    def status(self, job_id: str) -> dict[str, Any]:
        data = self._read_job(job_id)
        return summarize(data["meta"], data["files"])

    def jobs(self) -> list[dict[str, Any]]:
        """Every job; one whose record cannot be read is listed in state UNREADABLE (with `error`), and logged,
        so that one broken file does not hide the others."""
        found = []
        for path in (self.root / "jobs").glob("*.json"):
            try:
                found.append(self.status(path.stem))
            except KeyError:
                continue  # gone since the listing (or a name that is no job id)
            except StateFileError as exc:
                log.warning("%s", exc)
                found.append(_unreadable_job(path, exc.reason))
        return sorted(found, key=lambda j: (float(j.get("created", 0)), j["id"]))

    def _dead_letter_list(self) -> dict[str, dict[str, Any]]:
        path = self.root / "deadletter.json"
        data = self._read(path, {})
        for key, entry in data.items():
            problem = _dead_letter_problem(key, entry)
            if problem:
                raise StateFileError(str(path), f"not a dead-letter list ({problem}); fix or move the file, "
                                     "it is never rewritten while unreadable")
        return data

    def dead_letter(self, entry: dict[str, Any]) -> None:
        data = self._dead_letter_list()
        data[entry["id"]] = entry
        self._write(self.root / "deadletter.json", data)

    def dead_letters(self) -> list[dict[str, Any]]:
        return sorted(self._dead_letter_list().values(), key=lambda e: e["at"])

    def clear_dead_letters(self, ids: set[str]) -> None:
        data = self._dead_letter_list()
        for i in ids:
            data.pop(i, None)
        self._write(self.root / "deadletter.json", data)

    def set_reindex(self, collection: str, state: dict[str, Any] | None) -> None:
        data = self._read(self.root / "reindex.json", {})
        if state is None:
            data.pop(collection, None)
        else:
            data[collection] = state
        self._write(self.root / "reindex.json", data)

    def reindex_state(self, collection: str) -> dict[str, Any] | None:
        return self._read(self.root / "reindex.json", {}).get(collection)

    def lock(self, name: str, seconds: int) -> bool:
        path = self.root / f"lock-{name}"
        if path.exists() and time.time() - path.stat().st_mtime < seconds:
            return False
        path.write_text(str(time.time()))
        return True

    def unlock(self, name: str) -> None:
        (self.root / f"lock-{name}").unlink(missing_ok=True)

    # The in-process worker runs in the submitting process: nothing is redelivered, nothing is in flight.
    def take(self, job_id: str, task_id: str, worker: str) -> None:
        pass

    def release(self, job_id: str, task_id: str) -> None:
        pass

    def mark_requeued(self, job_id: str, task_id: str) -> None:
        pass

    def in_flight(self, job_id: str | None = None) -> list[dict[str, Any]]:
        return []

    def heartbeat(self, worker: str, seconds: float) -> None:
        pass

    def alive(self, worker: str) -> bool:
        return True

    def count_delivery(self, key: str) -> int:
        counts = self._read(self.root / "deliveries.json", {})
        counts[key] = counts.get(key, 0) + 1
        self._write(self.root / "deliveries.json", counts)
        return counts[key]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _job_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a job record (as `FileJobStore.create` / `record` write it), None when nothing."""
    meta, files = data.get("meta"), data.get("files")
    if not isinstance(meta, dict) or not isinstance(files, dict):
        return f'expected {{"meta": {{...}}, "files": {{...}}}}, found {json_excerpt(data)}'
    for key in ("id", "collection"):
        if not isinstance(meta.get(key), str):
            return f"meta.{key} is {json_excerpt(meta.get(key))}, not text"
    if not isinstance(meta.get("total"), int) or isinstance(meta["total"], bool) or meta["total"] < 0:
        return f"meta.total is {json_excerpt(meta.get('total'))}, not a count"
    if "created" in meta and not _is_number(meta["created"]):
        return f"meta.created is {json_excerpt(meta['created'])}, not a time"
    for path, outcome in files.items():
        if (not isinstance(outcome, dict) or outcome.get("status") not in STATES
                or not isinstance(outcome.get("reason", ""), str)):
            return f"the outcome of {path} is {json_excerpt(outcome)}"
    return None


def _unreadable_job(path: Path, reason: str) -> dict[str, Any]:
    """A job record that cannot be read, as a `jobs()` entry: the fields of a status, nothing counted."""
    try:
        created = path.stat().st_mtime
    except OSError:
        created = 0.0
    return {"id": path.stem, "collection": "?", "bundle": "", "created": created, "total": 0,
            **{s: 0 for s in STATES}, "pending": 0, "state": UNREADABLE, "error": f"{path}: {reason}",
            "failures": {}, "duplicates": {}, "batches": [], "finished": []}


def _dead_letter_problem(key: Any, entry: Any) -> str | None:
    """What is wrong with one entry of the dead-letter list (as `dead_letter_entry` makes it), None when nothing."""
    if not isinstance(entry, dict):
        return f"entry {key} is {json_excerpt(entry)}, not an object"
    for field in _DEAD_LETTER_FIELDS:
        if not isinstance(entry.get(field), str):
            return f"entry {key}: {field} is {json_excerpt(entry.get(field))}, not text"
    if not isinstance(entry.get("meta") or {}, dict):
        return f"entry {key}: meta is {json_excerpt(entry['meta'])}, not an object"
    return None


def job_store(settings) -> JobStore:
    if settings.broker_url:
        return RedisJobStore(settings.broker_url, ttl_seconds=settings.job_ttl_days * 86400)
    return FileJobStore(settings.state_dir)
