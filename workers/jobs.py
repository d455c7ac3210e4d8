"""Job status and the dead-letter list: in Redis with a broker, in files for the embedded mode.

Per-file outcomes are recorded by path in sets/hashes, so a redelivered batch that processes a file again
does not count it twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

STATES = ("ingested", "duplicate", "failed")


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def summarize(meta: dict[str, Any], outcomes: dict[str, dict[str, str]]) -> dict[str, Any]:
    counts = {s: 0 for s in STATES}
    failures = {}
    for path, outcome in outcomes.items():
        counts[outcome["status"]] += 1
        if outcome["status"] == "failed":
            failures[path] = outcome["reason"]
    total = int(meta.get("total", 0))
    finished = sum(counts.values())
    return {**meta, **counts, "total": total, "pending": max(0, total - finished),
            "state": "done" if finished >= total else "running", "failures": failures,
            "finished": sorted(outcomes)}


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


def dead_letter_entry(job_id: str, path: str, reason: str, collection: str, bundle: str,
                      meta: dict[str, Any] | None = None) -> dict[str, Any]:
    # One entry per (collection, file): failing the same file again updates it instead of piling up.
    entry_id = hashlib.sha256(f"{collection}\0{path}".encode()).hexdigest()[:12]
    return {"id": entry_id, "job": job_id, "path": path, "reason": reason, "collection": collection,
            "bundle": bundle, "meta": meta or {}, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class RedisJobStore:
    def __init__(self, url: str, prefix: str = "hark") -> None:
        import redis

        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.prefix = prefix

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def create(self, job_id: str, collection: str, total: int, bundle: str) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(self._k("job", job_id), mapping={"id": job_id, "collection": collection, "total": total,
                                                   "bundle": bundle, "created": time.time()})
        pipe.zadd(self._k("jobs"), {job_id: time.time()})
        pipe.execute()

    def record(self, job_id: str, path: str, status: str, reason: str = "") -> None:
        self.redis.hset(self._k("job", job_id, "files"), path, json.dumps({"status": status, "reason": reason}))

    def status(self, job_id: str) -> dict[str, Any]:
        meta = self.redis.hgetall(self._k("job", job_id))
        if not meta:
            raise KeyError(job_id)
        files = {p: json.loads(v) for p, v in self.redis.hgetall(self._k("job", job_id, "files")).items()}
        return summarize(meta, files)

    def jobs(self) -> list[dict[str, Any]]:
        return [self.status(j) for j in self.redis.zrange(self._k("jobs"), 0, -1)
                if self.redis.exists(self._k("job", j))]

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
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return default

    def _job(self, job_id: str) -> Path:
        return self.root / "jobs" / f"{job_id}.json"

    def create(self, job_id: str, collection: str, total: int, bundle: str) -> None:
        self._write(self._job(job_id), {"meta": {"id": job_id, "collection": collection, "total": total,
                                                 "bundle": bundle, "created": time.time()}, "files": {}})

    def record(self, job_id: str, path: str, status: str, reason: str = "") -> None:
        data = self._read(self._job(job_id), None)
        if data is None:
            raise KeyError(job_id)
        data["files"][path] = {"status": status, "reason": reason}
        self._write(self._job(job_id), data)

    def status(self, job_id: str) -> dict[str, Any]:
        data = self._read(self._job(job_id), None)
        if data is None:
            raise KeyError(job_id)
        return summarize(data["meta"], data["files"])

    def jobs(self) -> list[dict[str, Any]]:
        found = [self.status(p.stem) for p in (self.root / "jobs").glob("*.json")]
        return sorted(found, key=lambda j: float(j.get("created", 0)))

    def dead_letter(self, entry: dict[str, Any]) -> None:
        data = self._read(self.root / "deadletter.json", {})
        data[entry["id"]] = entry
        self._write(self.root / "deadletter.json", data)

    def dead_letters(self) -> list[dict[str, Any]]:
        return sorted(self._read(self.root / "deadletter.json", {}).values(), key=lambda e: e["at"])

    def clear_dead_letters(self, ids: set[str]) -> None:
        data = self._read(self.root / "deadletter.json", {})
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

    def count_delivery(self, key: str) -> int:
        counts = self._read(self.root / "deliveries.json", {})
        counts[key] = counts.get(key, 0) + 1
        self._write(self.root / "deliveries.json", counts)
        return counts[key]


def job_store(settings) -> JobStore:
    if settings.broker_url:
        return RedisJobStore(settings.broker_url)
    return FileJobStore(settings.state_dir)
