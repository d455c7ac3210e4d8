"""The embedded store on Qdrant's own engine (`qdrant-edge-py`), behind the subset of `QdrantClient` hark calls.

Methods take and return `qdrant_client` models, so workers, re-index, the facade and `hark serve` run unchanged on a
Qdrant server or on this folder. The engine knows one shard; what a server adds on top is done here:

- folder layout: `<path>/collections/<name>/` is one engine shard per collection, `<path>/aliases.json` maps alias
  -> collection (replaced atomically, re-read on every lookup), `<path>/.lock` is held (flock) while a store is open:
  one owner per folder, a second opener gets `StoreUnavailableError`;
- filters: converted by `hark.store.filters` (unknown conditions are errors, never dropped);
- the HNSW index: the engine has no background optimiser. `optimize()` builds it; `maybe_optimize()` does so once
  `OPTIMIZE_MIN_UNINDEXED` points are unindexed. Until then every search is a scan;
- the write-ahead log: the engine has no background flush either, and it drops acknowledged WAL segments only when
  flushed, so writes flush at most every `FLUSH_INTERVAL_S` (as a server's flush_interval_sec) and a writer's last
  flush first logs an empty operation, because the engine replays the newest WAL entry on every load (see `_seal`).

Search defaults (`search_params` from the caller always wins). Measured with `benchmarks/edge_engine.py` (qdrant-edge-py
0.9.0, the shared 2-core machine under a load average of 4-8, so absolute times are pessimistic), cosine `global`
only, no filter, 20 queries, p50 latency through this class, recall against exact search. "noise" is the spread of
the synthetic points around their cluster centres (0.6 = tight clusters, 1.5 = hard):

    points x dim  noise | K=200: exact, ef=200 (ms recall), ef=400 | K=1000: exact, ef=1000, ef=2000
    20k x 256     0.6   |  1.7 ms,  0.9 0.998,  1.2 1.000          |  5.2 ms,  4.5 0.935,  4.9 0.985
    50k x 1024    0.6   | 16.7 ms,  1.7 0.986,  2.6 0.996          | 19.4 ms,  7.5 0.877, 10.6 0.959
    50k x 1024    1.5   | 39.7 ms,  5.3 0.980, 10.4 0.988          | 56.1 ms, 35.2 0.711, 47.8 0.844
    100k x 256    1.5   | 27.8 ms,  4.0 0.951,  6.5 0.966          | 35.4 ms, 21.8 0.668, 31.8 0.806

    optimize (full build): 20k x 256 / 0.6: 1.3 s; 50k x 1024 / 0.6: 13.6 s; 50k x 1024 / 1.5: 154 s;
    100k x 256 / 1.5: 107 s. Then +10k points on the indexed 100k x 256: HNSW K=200 p50 9.0 ms while the 10k are
    unindexed (scanned), re-optimize 12.4 s (incremental: the 100k are not rebuilt), 2.5 ms after.

So: exact search when K >= EXACT_MIN_K (at K=1000 HNSW lost 4-33 % of the true neighbours and saved little time),
or when the collection holds fewer than EXACT_MAX_POINTS points (a scan of 20k points costs a few ms, recall 1.0);
otherwise HNSW with hnsw_ef = HNSW_EF_FACTOR * K (at K=200: recall 0.97-1.0, 6-16x faster than exact).
A scan costs about 0.3 ms per 1k points at 256-d and 0.8 ms at 1024-d (under load), so `maybe_optimize` re-indexes
once OPTIMIZE_MIN_UNINDEXED (10k) points are unindexed: at most ~3 / ~8 ms of scan per query, ~1.2 s of build per
1k points. The engine holds the GIL while it optimizes (measured: a second thread made no progress for the 48 s of
a build), so call it from the ingesting process (worker), never from a request handler.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hark.errors import json_excerpt
from hark.store.errors import StoreError, StoreUnavailableError
from hark.store.filters import edge_point_id, to_edge
from hark.store.rowcache import RowCache

log = logging.getLogger(__name__)

ALIASES_FILE = "aliases.json"
LOCK_FILE = ".lock"
COLLECTIONS_DIR = "collections"

# Search defaults, from the measurements in the module docstring.
EXACT_MIN_K = 500  # at K >= this, exact search (HNSW recall@1000 was 0.67-0.98 and it saved little time)
EXACT_MAX_POINTS = 20_000  # below this many points a full scan costs a few ms: exact, recall 1.0
HNSW_EF_FACTOR = 2  # hnsw_ef = factor * K (recall@200 0.951 -> 0.966 at 100k x 256 for +2.5 ms)
# `maybe_optimize` re-indexes once this many points are outside the index (each 1k adds ~0.3-0.8 ms of scan).
OPTIMIZE_MIN_UNINDEXED = 10_000

# A writing shard is flushed at most this often (a Qdrant server's default flush_interval_sec). The engine drops
# WAL segments only on flush: a 1M-clip ingest without one had written 12 GB of WAL by 200k points.
FLUSH_INTERVAL_S = 5.0

_DEFAULT_HNSW = {"m": 16, "ef_construct": 100, "full_scan_threshold": 10_000}

# `prewarm` reads a collection's on-disk vector storage only up to this share of the memory available at the time,
# so warming never pushes out what the process itself needs.
PREWARM_MAX_SHARE = 0.25

# Decoded rerank rows kept in memory by default (`hark.store.rowcache`; HARK_ROW_CACHE_MB): about 23k report-size
# clips of three rows each.
DEFAULT_ROW_CACHE_BYTES = 256 * 2**20


class NotFoundError(StoreError, LookupError):
    """A collection, alias or point that does not exist; a 404 for HTTP callers."""


class CollectionNotFoundError(NotFoundError):
    """No collection (or alias) of that name."""


def validate_name(name: str, what: str = "collection") -> str:
    # Names become folder names: nothing that could leave `collections/` or hide a file, and nothing the
    # filesystem refuses (its limit is 255 bytes, not characters; a lone surrogate has no UTF-8 form).
    if not isinstance(name, str) or not name:
        raise StoreError(f"invalid {what} name {name!r}: 1 to 255 characters")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise StoreError(f"invalid {what} name {name!r}: not valid Unicode text") from None
    if size > 255:
        raise StoreError(f"invalid {what} name {name!r}: at most 255 bytes in UTF-8 ({size} here)")
    if "/" in name or "\\" in name or "\0" in name or ".." in name or name.startswith(".") or name != name.strip():
        raise StoreError(f"invalid {what} name {name!r}: no path separators, '..', leading dot or outer spaces")
    return name


def _in_use_error(path: Path) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"the embedded Qdrant folder {path} is in use by another process (a running `hark worker` or `hark serve`?); "
        "stop it, or use a Qdrant server (HARK_QDRANT_URL) for concurrent access")


def _write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a torn one (also across a crash)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EdgeStore:
    """One embedded folder; the `QdrantClient` methods hark uses, on the qdrant-edge engine.

    Thread-safe: calls run under one lock. The engine itself took 4 threads of upsert / query / count without error,
    but this class's own state (shards opened on first use, close, the alias file's read-modify-write) needs it, and
    it costs no parallelism: the bindings hold the GIL during engine calls anyway.
    """

    def __init__(self, path: str | Path, row_cache_bytes: int = DEFAULT_ROW_CACHE_BYTES) -> None:
        self.path = Path(path)
        if (self.path / "meta.json").is_file() and (self.path / "collection").is_dir():
            # qdrant-client's local mode wrote this folder; its files are not the engine's.
            raise StoreError(f"{self.path} holds a qdrant-client local-mode store (meta.json, collection/), which "
                             "the embedded engine cannot read: re-ingest into a new HARK_QDRANT_PATH")
        self._lock = threading.RLock()
        self._shards: dict[str, Any] = {}
        self._dirty: set[str] = set()  # shards written to since their last seal (see `_seal`)
        self._flushed_at: dict[str, float] = {}  # monotonic time of each writing shard's last flush
        self._lock_fd: int | None = None
        self.prewarm_report: dict[str, Any] | None = None  # what the last `prewarm` did
        # Rows `query_candidates` decoded, by point; every write below invalidates what it touches.
        self.row_cache = RowCache(row_cache_bytes)
        (self.path / COLLECTIONS_DIR).mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # flock locks belong to the open file description, so a second open in this process conflicts too.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _in_use_error(self.path) from exc
            raise
        self._lock_fd = fd
        self._sweep()

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def close(self, **_ignored: Any) -> None:
        """Flush and close every shard, release the folder. Idempotent."""
        with self._lock:
            if self._lock_fd is None:
                return
            try:
                self._close_shards()
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._lock_fd is None

    def flush(self) -> None:
        with self._lock:
            self._check_open()
            for name, shard in self._shards.items():
                self._seal(name, shard)

    def backup(self, dest: str | Path) -> Path:
        """Copy the folder to `dest` (which must not exist) while no write can run: a consistent snapshot."""
        with self._lock:
            self._check_open()
            # Closed shards are plain files at rest; they reopen lazily on the next call.
            self._close_shards()
            return _copy_folder(self.path, Path(dest))

    def _close_shards(self) -> None:
        errors = []
        for name, shard in list(self._shards.items()):
            try:
                self._seal(name, shard)
                shard.close()
            except Exception as exc:  # close the others anyway; report the first failure
                errors.append(f"{name}: {exc}")
            self._shards.pop(name, None)
            self._flushed_at.pop(name, None)
        if errors:
            raise StoreError("closing the embedded store failed: " + "; ".join(errors))

    def _update(self, collection_name: str, op: Any, vectors_of: Sequence[Any] | None) -> None:
        """Apply one write (the caller holds the lock), flushing at most every FLUSH_INTERVAL_S so the WAL stays
        short during a long ingest. `vectors_of`: the engine ids whose vectors the write may change (None: any
        point's), dropped from the row cache first."""
        physical = self._resolve(collection_name)
        shard = self._open(physical)
        self.row_cache.invalidate(physical, vectors_of)
        shard.update(op)
        self._dirty.add(physical)
        now = time.monotonic()
        if now - self._flushed_at.setdefault(physical, now) >= FLUSH_INTERVAL_S:
            self._seal(physical, shard)

    def _seal(self, physical: str, shard: Any) -> None:
        """Flush a shard; when it was written to, log an empty delete first.

        Why: loading a shard replays its newest WAL entry even when that entry is acknowledged, so a folder whose
        last write was a batch of upserts paid for decoding the whole batch on every open (measured on a 20k-clip
        folder whose last batch held 1,000 clips with `tokens` and `moments`: 0.60-0.92 s per load, 0.07 s once
        an empty operation came last; `benchmarks/README.md`). The empty delete changes no point.
        """
        if physical in self._dirty:
            shard.update(_empty_operation())
            self._dirty.discard(physical)
        shard.flush()
        self._flushed_at[physical] = time.monotonic()

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise StoreError(f"the embedded store {self.path} is closed")

    def _sweep(self) -> None:
        """Remove what an interrupted create or delete left behind (names starting with a dot are never ours)."""
        for entry in (self.path / COLLECTIONS_DIR).iterdir():
            if entry.name.startswith("."):
                shutil.rmtree(entry, ignore_errors=True)
        for entry in self.path.glob(f".{ALIASES_FILE}.*.tmp"):
            entry.unlink(missing_ok=True)

    # -- collections -------------------------------------------------------------------------------------------
    def _collection_dir(self, name: str) -> Path:
        return self.path / COLLECTIONS_DIR / name

    def _is_collection(self, name: str) -> bool:
        try:
            validate_name(name)
        except StoreError:
            return False
        return (self._collection_dir(name) / "edge_config.json").is_file()

    def _resolve(self, name: str) -> str:
        """The collection behind `name`: an alias first (as on a server), else the collection itself."""
        self._check_open()
        target = self._read_aliases().get(name, name)
        if not self._is_collection(target):
            raise CollectionNotFoundError(f"Collection `{name}` doesn't exist!")
        return target

    def _shard(self, name: str):
        """The open engine shard for a collection or alias (opened on first use)."""
        return self._open(self._resolve(name))

    def _open(self, physical: str):
        """The open engine shard of a collection already resolved (`_resolve` re-reads the alias file)."""
        import qdrant_edge as qe

        shard = self._shards.get(physical)
        if shard is None:
            try:
                shard = qe.EdgeShard.load(str(self._collection_dir(physical)))
            except Exception as exc:
                if "WouldBlock" in str(exc):
                    raise _in_use_error(self.path) from exc
                raise StoreError(f"cannot open collection {physical}: {exc}") from exc
            self._shards[physical] = shard
        return shard

    def collection_exists(self, collection_name: str, **_ignored: Any) -> bool:
        with self._lock:
            try:
                self._resolve(collection_name)
            except CollectionNotFoundError:
                return False
            return True

    def create_collection(self, collection_name: str, vectors_config: Any = None, shard_number: int | None = None,
                          replication_factor: int | None = None, on_disk_payload: bool | None = None,
                          hnsw_config: Any = None, quantization_config: Any = None, optimizers_config: Any = None,
                          **_ignored: Any) -> bool:
        """A new shard folder from qdrant-client `VectorParams` (a dict of named vectors, or one unnamed)."""
        import qdrant_edge as qe


        validate_name(collection_name)
        if quantization_config is not None:
            raise StoreError("quantization_config is not supported by the embedded store")
        if vectors_config is None:
            raise StoreError("create_collection needs vectors_config (sparse-only collections are not supported)")
        hnsw = {**_DEFAULT_HNSW, **_hnsw_diff(hnsw_config)}
        if isinstance(vectors_config, dict):
            vectors = {name: _vector_params(params, hnsw) for name, params in vectors_config.items()}
        else:
            vectors = {"": _vector_params(vectors_config, hnsw)}
        config = qe.EdgeConfig(vectors=vectors, on_disk_payload=on_disk_payload,
                               hnsw_config=qe.HnswIndexConfig(**hnsw), optimizers=_optimizers(optimizers_config))
        with self._lock:
            self._check_open()
            if self._is_collection(collection_name):
                raise StoreError(f"Wrong input: Collection `{collection_name}` already exists!")
            if collection_name in self._read_aliases():
                raise StoreError(f"Wrong input: an alias named `{collection_name}` already exists")
            final = self._collection_dir(collection_name)
            # Built under a dot-name and renamed: a crash never leaves a half-made collection under its real name.
            tmp = final.with_name(f".new-{collection_name}-{uuid.uuid4().hex[:8]}")
            try:
                qe.EdgeShard.create(str(tmp), config).close()
            except Exception as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise StoreError(f"cannot create collection {collection_name}: {exc}") from exc
            shutil.rmtree(final, ignore_errors=True)  # a leftover without edge_config.json
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        return True

    def delete_collection(self, collection_name: str, **_ignored: Any) -> bool:
        """Delete a collection and the aliases that point at it (as a server does). False when missing."""
        with self._lock:
            self._check_open()
            if not self._is_collection(collection_name):
                return False
            shard = self._shards.pop(collection_name, None)
            self.row_cache.invalidate(collection_name)
            self._dirty.discard(collection_name)
            self._flushed_at.pop(collection_name, None)
            if shard is not None:
                shard.close()
            aliases = self._read_aliases()
            kept = {a: c for a, c in aliases.items() if c != collection_name}
            if kept != aliases:
                self._write_aliases(kept)
            final = self._collection_dir(collection_name)
            trash = final.with_name(f".deleted-{collection_name}-{uuid.uuid4().hex[:8]}")
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        return True

    def get_collections(self, **_ignored: Any):
        from qdrant_client.http import models

        with self._lock:
            self._check_open()
            names = sorted(p.name for p in (self.path / COLLECTIONS_DIR).iterdir() if self._is_collection(p.name))
        return models.CollectionsResponse(collections=[models.CollectionDescription(name=n) for n in names])

    def get_collection(self, collection_name: str, **_ignored: Any):
        """`CollectionInfo` in a server's shape: vector params, counts, payload schema; status green."""
        from qdrant_client.http import models


        with self._lock:
            physical = self._resolve(collection_name)
            shard = self._open(physical)
            info = shard.info()
            stored = json.loads((self._collection_dir(physical) / "edge_config.json").read_text())
        vectors = {name: _stored_vector_params(spec) for name, spec in stored.get("vectors", {}).items()}
        hnsw = {**_DEFAULT_HNSW, **(stored.get("hnsw_config") or {})}
        schema = {key: models.PayloadIndexInfo(data_type=_schema_type_out(index.data_type), points=index.points)
                  for key, index in info.payload_schema.items()}
        return models.CollectionInfo(
            status=models.CollectionStatus.GREEN, optimizer_status=models.OptimizersStatusOneOf.OK,
            indexed_vectors_count=info.indexed_vectors_count, points_count=info.points_count,
            segments_count=info.segments_count, payload_schema=schema,
            config=models.CollectionConfig(
                params=models.CollectionParams(vectors=vectors.get("") if list(vectors) == [""] else vectors,
                                               shard_number=1, replication_factor=1,
                                               on_disk_payload=stored.get("on_disk_payload")),
                hnsw_config=models.HnswConfig(m=hnsw["m"], ef_construct=hnsw["ef_construct"],
                                              full_scan_threshold=hnsw["full_scan_threshold"]),
                optimizer_config=models.OptimizersConfig(default_segment_number=0, flush_interval_sec=5)))

    def create_payload_index(self, collection_name: str, field_name: str, field_schema: Any = None,
                             field_type: Any = None, **_ignored: Any):
        """A real payload index in the engine (keyword, integer, float, bool, datetime, uuid, text, geo)."""
        import qdrant_edge as qe


        schema = _index_schema(field_schema if field_schema is not None else field_type)
        with self._lock:
            self._update(collection_name, qe.UpdateOperation.create_field_index(field_name, schema), ())
        return _update_result()

    # -- aliases ----------------------------------------------------------------------------------------------
    def _read_aliases(self) -> dict[str, str]:
        # Re-read every time: another process may have switched an alias since (a re-index run by the CLI).
        path = self.path / ALIASES_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        # Only the shape `_write_aliases` writes: anything else (a list, numbers, a missing key) is as unreadable
        # as broken JSON, and is never rewritten (an alias switch would drop the aliases it holds).
        aliases = data.get("aliases") if isinstance(data, dict) else None
        if not isinstance(aliases, dict) or not all(isinstance(a, str) and isinstance(c, str)
                                                    for a, c in aliases.items()):
            raise StoreError(f"cannot read {path}: expected {{\"aliases\": {{alias: collection, ...}}}} with "
                             f"text names, found {json_excerpt(data)}")
        return dict(aliases)

    def _write_aliases(self, aliases: dict[str, str]) -> None:
        _write_atomic(self.path / ALIASES_FILE,
                      json.dumps({"aliases": dict(sorted(aliases.items()))}, indent=1).encode())

    def alias_map(self) -> dict[str, str]:
        """alias -> collection as plain strings (`get_aliases` without response models)."""
        with self._lock:
            self._check_open()
            return self._read_aliases()

    def get_aliases(self, **_ignored: Any):
        from qdrant_client.http import models

        with self._lock:
            self._check_open()
            aliases = self._read_aliases()
        return models.CollectionsAliasesResponse(aliases=[
            models.AliasDescription(alias_name=a, collection_name=c) for a, c in sorted(aliases.items())])

    def get_collection_aliases(self, collection_name: str, **_ignored: Any):
        from qdrant_client.http import models

        with self._lock:
            self._check_open()
            aliases = self._read_aliases()
        return models.CollectionsAliasesResponse(aliases=[
            models.AliasDescription(alias_name=a, collection_name=c)
            for a, c in sorted(aliases.items()) if c == collection_name])

    def update_collection_aliases(self, change_aliases_operations: Sequence[Any], **_ignored: Any) -> bool:
        """Create / delete / rename aliases, all or nothing, in one atomic file write."""
        from qdrant_client.http import models

        with self._lock:
            self._check_open()
            aliases = self._read_aliases()
            for op in change_aliases_operations:
                if isinstance(op, models.CreateAliasOperation):
                    alias = validate_name(op.create_alias.alias_name, "alias")
                    target = op.create_alias.collection_name
                    if not self._is_collection(target):
                        raise CollectionNotFoundError(f"Collection `{target}` doesn't exist!")
                    if self._is_collection(alias):
                        raise StoreError(f"Wrong input: a collection named `{alias}` already exists")
                    aliases[alias] = target
                elif isinstance(op, models.DeleteAliasOperation):
                    if aliases.pop(op.delete_alias.alias_name, None) is None:
                        raise StoreError(f"Alias `{op.delete_alias.alias_name}` does not exist")
                elif isinstance(op, models.RenameAliasOperation):
                    old, new = op.rename_alias.old_alias_name, validate_name(op.rename_alias.new_alias_name, "alias")
                    if old not in aliases:
                        raise StoreError(f"Alias `{old}` does not exist")
                    if self._is_collection(new):
                        raise StoreError(f"Wrong input: a collection named `{new}` already exists")
                    aliases[new] = aliases.pop(old)
                else:
                    raise StoreError(f"alias operation {type(op).__name__} is not supported by the embedded store")
            self._write_aliases(aliases)
        return True

    # -- points -----------------------------------------------------------------------------------------------
    def upsert(self, collection_name: str, points: Any, wait: bool = True, **_ignored: Any):
        """Insert or replace points (`PointStruct`s or a `Batch`). Durable on return: the engine logs it first."""
        import qdrant_edge as qe


        edge_points = _points_in(points)
        with self._lock:
            self._shard(collection_name)  # a missing collection is an error even for an empty batch
            if edge_points:
                self._update(collection_name, qe.UpdateOperation.upsert_points(edge_points),
                             [p.id for p in edge_points])
        return _update_result()

    def retrieve(self, collection_name: str, ids: Sequence[Any], with_payload: Any = True,
                 with_vectors: Any = False, **_ignored: Any) -> list:
        """Records for the ids that exist, in the order asked."""

        wanted = [edge_point_id(i) for i in ids]
        if not wanted:
            return []
        with self._lock:
            found = self._shard(collection_name).retrieve(wanted, _with_payload(with_payload),
                                                          _with_vectors(with_vectors))
        by_id = {r.id: r for r in found}
        out, seen = [], set()
        for pid in wanted:
            if pid in by_id and pid not in seen:
                seen.add(pid)
                out.append(_record_out(by_id[pid]))
        return out

    def vectors_of(self, collection_name: str, ids: Sequence[Any], name: str) -> dict[Any, Any]:
        """`hark.store.vectors_of` on the engine: {id: stored value of the named vector} for the ids that exist,
        with no qdrant-client models on the way (a one-shot `hark search` otherwise imported qdrant-client, 0.45 s
        on an idle machine, for its moments read alone)."""
        wanted = [edge_point_id(i) for i in ids]
        if not wanted:
            return {}
        with self._lock:
            found = self._shard(collection_name).retrieve(wanted, False, [name])
        out = {}
        for record in found:
            value = record.vector.get(name) if isinstance(record.vector, dict) else None
            if value is not None:
                out[_id_out(record.id)] = value
        return out

    def scroll(self, collection_name: str, scroll_filter: Any = None, limit: int = 10, order_by: Any = None,
               offset: Any = None, with_payload: Any = True, with_vectors: Any = False,
               **_ignored: Any) -> tuple[list, Any]:
        import qdrant_edge as qe


        request = qe.ScrollRequest(offset=None if offset is None else edge_point_id(offset), limit=limit,
                                   filter=to_edge(scroll_filter), with_payload=_with_payload(with_payload),
                                   with_vector=_with_vectors(with_vectors), order_by=_order_by(order_by))
        with self._lock, _engine_errors():
            records, next_offset = self._shard(collection_name).scroll(request)
        return [_record_out(r) for r in records], _id_out(next_offset)

    def count(self, collection_name: str, count_filter: Any = None, exact: bool = True, **_ignored: Any):
        import qdrant_edge as qe
        from qdrant_client.http import models

        request = qe.CountRequest(exact=exact, filter=to_edge(count_filter))
        with self._lock, _engine_errors():
            n = self._shard(collection_name).count(request)
        return models.CountResult(count=n)

    def query_points(self, collection_name: str, query: Any = None, using: str | None = None, prefetch: Any = None,
                     query_filter: Any = None, search_params: Any = None, limit: int = 10, offset: int | None = 0,
                     with_payload: Any = True, with_vectors: Any = False, score_threshold: float | None = None,
                     lookup_from: Any = None, **_ignored: Any):
        """Qdrant's universal query on the engine: a vector (dense or multi), a point id, a fusion / order-by /
        sample query, or None (ids in storage order), with prefetch stages."""
        from qdrant_client.http import models

        request = models.QueryRequest(
            query=None, using=using, prefetch=prefetch, filter=query_filter, params=search_params, limit=limit,
            offset=offset, with_payload=with_payload, with_vector=with_vectors, score_threshold=score_threshold,
            lookup_from=lookup_from)
        return self.query_batch_points(collection_name, [request], _queries=[query])[0]

    def query_batch_points(self, collection_name: str, requests: Sequence[Any], _queries: list | None = None,
                           **_ignored: Any) -> list:
        """Several queries in one planned engine batch (one pass over the segments)."""
        import qdrant_edge as qe


        queries = _queries if _queries is not None else [r.query for r in requests]
        with self._lock:
            shard = self._shard(collection_name)
            points_count = shard.info().points_count
            edge_requests = [_query_request(shard, r, q, points_count) for r, q in zip(requests, queries,
                                                                                          strict=True)]
            with _engine_errors():
                if len(edge_requests) == 1:
                    results = [shard.query(edge_requests[0])]
                else:
                    results = shard.query_batch(qe.QueryBatchRequest(edge_requests))
        return [_query_response(points) for points in results]

    def query_candidates(self, collection_name: str, queries: Any, using: str, limit: int, query_filter: Any = None,
                         rows: str | None = None) -> list:
        """`hark.store.query_candidates` on the engine: the nearest `limit` points to each query vector, straight
        from the engine's objects into `Candidates`, with no qdrant-client models on the way. With the row cache
        on, the search returns no vectors and the rows come from the cache, the engine read only for the
        candidates it lacks (`_cached_rows`)."""
        import qdrant_edge as qe

        from hark.store.candidates import from_points

        edge_filter = to_edge(query_filter)
        cached = bool(rows) and self.row_cache.enabled
        with_vector = [rows] if rows and not cached else False
        vectors = [q.tolist() if hasattr(q, "tolist") else list(q) for q in queries]
        if not vectors:
            return []
        with self._lock:
            physical = self._resolve(collection_name)
            shard = self._open(physical)
            params = _search_params(None, limit, shard.info().points_count)
            requests = [qe.QueryRequest(limit=limit, offset=0, query=qe.Query.Nearest(v, using=using),
                                        with_vector=with_vector, with_payload=True, filter=edge_filter, params=params)
                        for v in vectors]
            with _engine_errors():
                if len(requests) == 1:
                    results = [shard.query(requests[0])]
                else:
                    results = shard.query_batch(qe.QueryBatchRequest(requests))
        # Outside the lock: turning the rows into arrays is Python work that another query's engine call can overlap.
        if not cached:
            return [from_points(points, rows, _id_out) for points in results]
        return self._cached_rows(collection_name, physical, rows, results)

    def _cached_rows(self, collection_name: str, physical: str, name: str, results: list) -> list:
        """Candidates for the engine's scored points, each with its `name` rows from the row cache; the rows
        missing there are read in one engine call for all queries, decoded, and cached."""
        from hark.store.candidates import from_points, pack_rows, with_rows

        engine_ids = [[p.id for p in points] for points in results]
        found = [self.row_cache.get(physical, name, ids) for ids in engine_ids]
        missing = list(dict.fromkeys(pid for ids, arrays in zip(engine_ids, found, strict=True)
                                     for pid, rows in zip(ids, arrays, strict=True) if rows is None))
        decoded: dict[Any, Any] = {}
        if missing:
            with self._lock:
                self._check_open()
                # The very collection that was searched, never what an alias of its name might point at by now.
                if not self._is_collection(physical):
                    raise CollectionNotFoundError(f"Collection `{collection_name}` doesn't exist!")
                generation = self.row_cache.generation(physical)
                with _engine_errors():
                    records = self._open(physical).retrieve(missing, False, [name])
            per_point = [(r.id, r.vector.get(name) if isinstance(r.vector, dict) else None) for r in records]
            flat = [row for _, value in per_point if value for row in value]
            block = pack_rows(flat) if flat else None
            start = 0
            for pid, value in per_point:
                count = len(value) if value else 0
                decoded[pid] = block[start:start + count].copy() if count else _NO_ROWS
                start += count
            self.row_cache.put(physical, name, decoded.items(), generation)
        out = []
        for points, ids, arrays in zip(results, engine_ids, found, strict=True):
            # A point deleted between the search and the read has no rows left: it is reranked as row-less.
            per_candidate = [rows if rows is not None else decoded.get(pid) for pid, rows in zip(ids, arrays,
                                                                                                 strict=True)]
            out.append(with_rows(from_points(points, None, _id_out), per_candidate))
        return out

    def delete(self, collection_name: str, points_selector: Any, wait: bool = True, **_ignored: Any):
        import qdrant_edge as qe


        ids, flt = _selector(points_selector)
        op = (qe.UpdateOperation.delete_points(ids) if flt is None
              else qe.UpdateOperation.delete_points_by_filter(flt))
        with self._lock:
            self._update(collection_name, op, ids)
        return _update_result()

    def set_payload(self, collection_name: str, payload: dict[str, Any], points: Any, key: str | None = None,
                    wait: bool = True, **_ignored: Any):
        import qdrant_edge as qe


        ids, flt = _selector(points)
        op = (qe.UpdateOperation.set_payload(ids, payload, key) if flt is None
              else qe.UpdateOperation.set_payload_by_filter(flt, payload, key))
        with self._lock:
            self._update(collection_name, op, ())  # payloads are never cached
        return _update_result()

    # -- the index ---------------------------------------------------------------------------------------------
    def optimize(self, collection_name: str) -> bool:
        """Merge segments and build the HNSW index now (blocking). True when anything changed."""
        with self._lock, _engine_errors():  # e.g. "Not enough space available for optimization": a StoreError
            return bool(self._shard(collection_name).optimize())

    def unindexed_count(self, collection_name: str) -> int:
        """Points whose vectors are not in an HNSW index yet (searches scan them)."""
        with self._lock:
            info = self._shard(collection_name).info()
        # indexed_vectors_count counts every indexed named vector; multivectors with m=0 are never indexed.
        per_point = max(1, self._indexed_vector_names(collection_name))
        return max(0, info.points_count - info.indexed_vectors_count // per_point)

    # -- page cache --------------------------------------------------------------------------------------------
    def prewarm(self, collection_name: str, max_share: float = PREWARM_MAX_SHARE) -> threading.Thread:
        """In a daemon thread: open the collection's shard, then read its on-disk vector storage (the `tokens`
        rows) through once so that the page cache holds it. Returns the thread; its outcome is logged and kept in
        `prewarm_report`. Never raises, in the thread or here: a missing collection or odd file is skipped.

        Why: `on_disk` storage is memory-mapped and read a page at a time, and the engine drops its pages from the
        cache when a shard closes, so every fresh process paid page faults on each candidate's rows (measured at
        30k clips, K=200, 2 busy cores: first-pass prefilter 40-43 ms cold, 22-24 ms after this 0.2 s read;
        posix_fadvise(WILLNEED) brought in a quarter of the files and did not help).
        """
        thread = threading.Thread(target=self._prewarm, args=(collection_name, max_share), daemon=True,
                                  name=f"hark-prewarm-{collection_name}")
        thread.start()
        return thread

    def _prewarm(self, collection_name: str, max_share: float) -> None:
        try:
            with self._lock:
                physical = self._resolve(collection_name)
                self._open(physical)
                files = _on_disk_files(self._collection_dir(physical))
            budget = int(_available_memory() * max_share)
            self.prewarm_report = report = warm_files(files, budget, stop=lambda: self.closed)
        except Exception as exc:  # best effort by design: a cold cache is slower, never wrong
            log.info("pre-warm of %s skipped: %s", collection_name, exc)
            self.prewarm_report = {"error": str(exc)}
            return
        log.info("pre-warmed %s: read %d files (%.1f MiB) in %.2f s; skipped %d over the %.0f MiB budget, "
                 "%d unreadable", physical, report["files"], report["bytes"] / 2**20, report["seconds"],
                 report["over_budget"], budget / 2**20, report["unreadable"])

    def _indexed_vector_names(self, collection_name: str) -> int:
        stored = json.loads((self._collection_dir(self._resolve(collection_name)) / "edge_config.json").read_text())
        return sum(1 for spec in stored.get("vectors", {}).values() if (spec.get("hnsw_config") or {}).get("m") != 0)

    def maybe_optimize(self, collection_name: str, min_unindexed: int = OPTIMIZE_MIN_UNINDEXED) -> bool:
        """Build the index when at least `min_unindexed` points are outside it; call after ingest batches."""
        if self.unindexed_count(collection_name) < min_unindexed:
            return False
        log.info("building the HNSW index of %s", collection_name)
        return self.optimize(collection_name)


_NO_ROWS = np.zeros((0, 0), dtype=np.float32)  # a cached point that has no stored rows


# -- write-ahead log -------------------------------------------------------------------------------------------------
def _empty_operation() -> Any:
    """An update that changes nothing: deleting no points (`EdgeStore._seal` logs it last)."""
    import qdrant_edge as qe

    return qe.UpdateOperation.delete_points([])


# -- backup / restore ------------------------------------------------------------------------------------------------
def _check_apart(src: Path, dest: Path, what: str) -> None:
    """Refuse a copy whose destination lies inside its source, or the other way round (after resolving symlinks):
    copying a folder into itself recurses until the disk fills, and a copy inside the live store is in its way."""
    try:
        real_src, real_dest = src.resolve(), dest.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise StoreError(f"cannot resolve the {what} folders {src} and {dest}: {exc}") from exc
    if real_dest == real_src or real_src in real_dest.parents:
        raise StoreError(f"{what} destination {dest} is inside its source {src}: choose a folder outside it")
    if real_dest in real_src.parents:
        raise StoreError(f"{what} source {src} is inside its destination {dest}: choose a folder outside it")


def _copy_folder(src: Path, dest: Path, what: str = "backup") -> Path:
    _check_apart(src, dest, what)
    if dest.exists() and not dest.is_dir():
        raise StoreError(f"{what} destination {dest} exists and is not a folder")
    if dest.exists() and any(dest.iterdir()):
        raise StoreError(f"{what} destination {dest} exists and is not empty")
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        # The lock file belongs to the running store, not to the data.
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(LOCK_FILE), symlinks=True)
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no half copy left behind
        raise
    return dest


@contextlib.contextmanager
def _engine_errors():
    """The engine raises plain Exceptions for requests it rejects ("Validation failed: ..."): as StoreError,
    so that callers can tell a bad request from a bug. hark's own errors pass through unchanged."""
    try:
        yield
    except (StoreError, StoreUnavailableError):
        raise
    except Exception as exc:
        if type(exc) is not Exception:  # a Python-side error (TypeError, ...) is a bug: keep it
            raise
        raise StoreError(str(exc).splitlines()[0] if str(exc) else "the engine rejected the request") from exc


def backup(path: str | Path, dest: str | Path, store: EdgeStore | None = None) -> Path:
    """Copy the embedded folder `path` to `dest` consistently.

    With `store` (the open store of `path` in this process) writes are held off while the copy runs; without it the
    folder is opened (locked) for the copy, so a folder held by another process raises `StoreUnavailableError`:
    stop the worker / server first, or back up through its own store.
    """
    path, dest = Path(path), Path(dest)
    if store is not None:
        if Path(store.path).resolve() != path.resolve():
            raise StoreError(f"the store given is for {store.path}, not {path}")
        return store.backup(dest)
    # Checked before the folder is opened: opening would create a missing one (and back up an empty store).
    if not path.is_dir():
        raise StoreError(f"no embedded store to back up at {path} (no such folder)")
    if not (path / COLLECTIONS_DIR).is_dir():
        raise StoreError(f"{path} is not an embedded store (no {COLLECTIONS_DIR}/ folder)")
    _check_apart(path, dest, "backup")
    with EdgeStore(path) as owner:
        return owner.backup(dest)


def restore(backup_path: str | Path, path: str | Path) -> Path:
    """Put a backup in place as the folder `path` (which must not exist or be empty)."""
    src = Path(backup_path)
    if not (src / COLLECTIONS_DIR).is_dir():
        raise StoreError(f"{src} is not a backup of an embedded store (no {COLLECTIONS_DIR}/ folder)")
    return _copy_folder(src, Path(path), "restore")


def _on_disk_files(collection_dir: Path) -> list[Path]:
    """The files of the vectors a collection keeps on disk, in the engine's segment layout
    (`segments/<uuid>/vector_storage-<name>/...`); an unknown layout yields nothing."""
    try:
        vectors = json.loads((collection_dir / "edge_config.json").read_text()).get("vectors") or {}
        names = [name for name, spec in vectors.items() if isinstance(spec, dict) and spec.get("on_disk")]
    except (OSError, ValueError, AttributeError):
        return []
    files: list[Path] = []
    for name in names:
        for storage in sorted(collection_dir.glob(f"segments/*/vector_storage-{name}")):
            files.extend(sorted(p for p in storage.rglob("*") if p.is_file()))
    return files


def _available_memory() -> int:
    """Bytes of memory available without swapping (MemAvailable), else free pages; 0 when neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 0


def warm_files(paths: Sequence[str | Path], max_bytes: int, stop=lambda: False, block: int = 1 << 20) -> dict[str, Any]:
    """Read regular files through once, in order, while their total stays within `max_bytes`; `stop()` is checked
    between blocks. Files that are missing, unreadable or not regular (a FIFO would block) are counted and skipped."""
    start = time.perf_counter()
    report = {"files": 0, "bytes": 0, "over_budget": 0, "unreadable": 0, "seconds": 0.0}
    buf = bytearray(block)
    for path in paths:
        if stop():
            break
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            report["unreadable"] += 1
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                report["unreadable"] += 1
                continue
            if report["bytes"] + info.st_size > max_bytes:
                report["over_budget"] += 1
                continue
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while not stop():
                n = os.readv(fd, [buf])
                if n <= 0:
                    break
                report["bytes"] += n
            report["files"] += 1
        except OSError:
            report["unreadable"] += 1
        finally:
            os.close(fd)
    report["seconds"] = round(time.perf_counter() - start, 3)
    return report


def folder_size(path: str | Path) -> int:
    """Bytes on disk under `path` (for benchmarks and `hark status`)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


# -- qdrant-client models <-> engine objects --------------------------------------------------------------------------
def _enum_name(value: Any) -> str:
    return str(getattr(value, "value", value)).lower()


def _hnsw_diff(diff: Any) -> dict[str, int]:
    if diff is None:
        return {}
    data = diff if isinstance(diff, dict) else diff.model_dump(exclude_none=True)
    return {k: int(data[k]) for k in ("m", "ef_construct", "full_scan_threshold") if data.get(k) is not None}


def _optimizers(diff: Any):
    import qdrant_edge as qe

    if diff is None:
        return None
    data = diff if isinstance(diff, dict) else diff.model_dump(exclude_none=True)
    keys = ("deleted_threshold", "vacuum_min_vector_number", "default_segment_number", "max_segment_size",
            "indexing_threshold", "prevent_unoptimized")
    return qe.EdgeOptimizersConfig(**{k: data[k] for k in keys if data.get(k) is not None})


def _vector_params(params: Any, hnsw: dict[str, int]):
    import qdrant_edge as qe
    from qdrant_client.http import models

    if isinstance(params, dict):
        params = models.VectorParams.model_validate(params)
    distances = {"cosine": qe.Distance.Cosine, "dot": qe.Distance.Dot, "euclid": qe.Distance.Euclid,
                 "manhattan": qe.Distance.Manhattan}
    kwargs: dict[str, Any] = {"size": params.size, "distance": distances[_enum_name(params.distance)]}
    if params.quantization_config is not None:
        raise StoreError("vector quantization_config is not supported by the embedded store")
    if params.multivector_config is not None:
        kwargs["multivector_config"] = qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim)
    if params.hnsw_config is not None:
        kwargs["hnsw_config"] = qe.HnswIndexConfig(**{**hnsw, **_hnsw_diff(params.hnsw_config)})
    if params.on_disk:
        kwargs["on_disk"] = True  # vectors memory-mapped from disk rather than held in RAM
    if params.datatype is not None:
        kwargs["datatype"] = {"float32": qe.VectorStorageDatatype.Float32, "float16": qe.VectorStorageDatatype.Float16,
                              "uint8": qe.VectorStorageDatatype.Uint8}[_enum_name(params.datatype)]
    return qe.EdgeVectorParams(**kwargs)


def _stored_vector_params(spec: dict[str, Any]):
    """qdrant-client `VectorParams` from the engine's edge_config.json entry."""
    from qdrant_client.http import models

    kwargs: dict[str, Any] = {"size": spec["size"], "distance": models.Distance(spec["distance"])}
    if spec.get("multivector_config"):
        kwargs["multivector_config"] = models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM)
    if spec.get("hnsw_config"):
        kwargs["hnsw_config"] = models.HnswConfigDiff(**_hnsw_diff(spec["hnsw_config"]))
    if spec.get("on_disk") or spec.get("memory") == "cold":
        kwargs["on_disk"] = True
    if spec.get("datatype"):
        kwargs["datatype"] = models.Datatype(spec["datatype"])
    return models.VectorParams(**kwargs)


_SCHEMA_TYPES = ("keyword", "integer", "float", "geo", "text", "bool", "datetime", "uuid")


def _index_schema(schema: Any):
    import qdrant_edge as qe

    if schema is None:
        raise StoreError("create_payload_index needs a field_schema")
    kind = getattr(schema, "type", schema)
    name = _enum_name(kind)
    if name not in _SCHEMA_TYPES:
        raise StoreError(f"payload index type {name!r} is not supported by the embedded store")
    if name == "text" and hasattr(schema, "tokenizer"):
        # The tokenizer decides what a text match finds, so it must reach the engine.
        tokenizers = {"prefix": qe.TokenizerType.Prefix, "whitespace": qe.TokenizerType.Whitespace,
                      "word": qe.TokenizerType.Word, "multilingual": qe.TokenizerType.Multilingual}
        return qe.TextIndexParams(
            tokenizer=tokenizers.get(_enum_name(schema.tokenizer)) if schema.tokenizer else None,
            min_token_len=schema.min_token_len, max_token_len=schema.max_token_len, lowercase=schema.lowercase)
    return getattr(qe.PayloadSchemaType, name.capitalize())


def _schema_type_out(kind: Any):
    from qdrant_client.http import models

    return models.PayloadSchemaType(str(kind).rsplit(".", 1)[-1].lower())


def _update_result():
    from qdrant_client.http import models

    return models.UpdateResult(operation_id=0, status=models.UpdateStatus.COMPLETED)


def _vector_in(vector: Any) -> Any:
    from qdrant_client.http import models

    if hasattr(vector, "tolist"):
        return vector.tolist()
    if isinstance(vector, models.SparseVector):
        import qdrant_edge as qe

        return qe.SparseVector(list(vector.indices), list(vector.values))
    if isinstance(vector, dict):
        return {name: _vector_in(v) for name, v in vector.items()}
    if isinstance(vector, list) and vector and hasattr(vector[0], "tolist"):
        return [v.tolist() for v in vector]
    if isinstance(vector, models.Document | models.Image | models.InferenceObject):
        raise StoreError("the embedded store has no inference: upsert vectors, not documents")
    return vector


def _points_in(points: Any) -> list:
    import qdrant_edge as qe
    from qdrant_client.http import models

    if isinstance(points, models.Batch):
        ids = list(points.ids)
        vectors = points.vectors
        if isinstance(vectors, dict):
            per_point = [{name: vs[i] for name, vs in vectors.items()} for i in range(len(ids))]
        else:
            per_point = list(vectors)
        payloads = points.payloads or [None] * len(ids)
        points = [models.PointStruct.model_construct(id=i, vector=v, payload=p)
                  for i, v, p in zip(ids, per_point, payloads, strict=True)]
    out = []
    for p in points:
        if isinstance(p, dict):
            p = models.PointStruct.model_validate(p)
        vector = _vector_in(p.vector)
        if not isinstance(vector, dict):
            vector = {"": vector}
        out.append(qe.Point(edge_point_id(p.id), vector, p.payload))
    return out


def _with_payload(value: Any) -> Any:
    import qdrant_edge as qe
    from qdrant_client.http import models

    if value is None:
        return False
    if isinstance(value, models.PayloadSelectorInclude):
        return qe.PayloadSelector.Include(list(value.include))
    if isinstance(value, models.PayloadSelectorExclude):
        return qe.PayloadSelector.Exclude(list(value.exclude))
    if isinstance(value, bool):
        return value
    return list(value)


def _with_vectors(value: Any) -> Any:
    if value is None:
        return False
    return value if isinstance(value, bool) else list(value)


def _id_out(pid: Any) -> Any:
    if pid is None or isinstance(pid, int):
        return pid
    return str(pid)


def _vector_out(vector: Any) -> Any:
    if isinstance(vector, dict) and list(vector) == [""]:
        return vector[""]
    return vector


def _record_out(r: Any):
    from qdrant_client.http import models

    # model_construct: returned vectors can be 200 x 3 x 1024 floats; validating them again costs tens of ms.
    return models.Record.model_construct(id=_id_out(r.id), payload=r.payload, vector=_vector_out(r.vector),
                                         shard_key=None, order_value=r.order_value)


def _query_response(points: list):
    from qdrant_client.http import models

    return models.QueryResponse.model_construct(points=[
        models.ScoredPoint.model_construct(id=_id_out(p.id), version=p.version, score=p.score, payload=p.payload,
                                           vector=_vector_out(p.vector), shard_key=None, order_value=p.order_value)
        for p in points])


def _order_by(value: Any):
    import qdrant_edge as qe
    from qdrant_client.http import models

    if value is None:
        return None
    if isinstance(value, str):
        return qe.OrderBy(value)
    if isinstance(value, dict):
        value = models.OrderBy.model_validate(value)
    direction = None
    if value.direction is not None:
        direction = qe.Direction.Desc if _enum_name(value.direction) == "desc" else qe.Direction.Asc
    start = value.start_from
    if hasattr(start, "isoformat"):
        start = start.isoformat()
    return qe.OrderBy(value.key, direction=direction, start_from=start)


def _selector(selector: Any) -> tuple[list | None, Any]:
    """(ids, None) or (None, engine filter) for a points selector."""
    from qdrant_client.http import models

    if isinstance(selector, models.PointIdsList):
        return [edge_point_id(i) for i in selector.points], None
    if isinstance(selector, models.FilterSelector):
        return None, to_edge(selector.filter)
    if isinstance(selector, models.Filter | dict):
        return None, to_edge(selector)
    if isinstance(selector, list | tuple):
        return [edge_point_id(i) for i in selector], None
    raise StoreError(f"points selector {type(selector).__name__} is not supported by the embedded store")


def _search_params(params: Any, limit: int, points_count: int):
    """The caller's search params, else the measured default (see the module docstring)."""
    import qdrant_edge as qe

    if params is not None:
        quant = None
        if params.quantization is not None:
            q = params.quantization
            quant = qe.QuantizationSearchParams(ignore=bool(q.ignore), rescore=q.rescore, oversampling=q.oversampling)
        acorn = None
        if params.acorn is not None:
            acorn = qe.AcornSearchParams(enable=bool(params.acorn.enable), max_selectivity=params.acorn.max_selectivity)
        return qe.SearchParams(hnsw_ef=params.hnsw_ef, exact=bool(params.exact), quantization=quant,
                               indexed_only=bool(params.indexed_only), acorn=acorn)
    if limit >= EXACT_MIN_K or points_count < EXACT_MAX_POINTS:
        return qe.SearchParams(exact=True)
    return qe.SearchParams(hnsw_ef=max(HNSW_EF_FACTOR * limit, 64))


def _scoring_query(shard: Any, query: Any, using: str | None) -> tuple[Any, Any]:
    """(engine query, id to exclude) for a qdrant-client query; the id is set when searching by a stored point."""
    import qdrant_edge as qe
    from qdrant_client.http import models

    if query is None:
        return None, None
    if isinstance(query, models.NearestQuery):
        if query.mmr is not None:
            raise StoreError("query 'nearest' with mmr is not supported by the embedded store")
        query = query.nearest
    if hasattr(query, "tolist"):
        query = query.tolist()
    if isinstance(query, bool):
        raise StoreError(f"invalid query {query!r}")
    if isinstance(query, int | str | uuid.UUID):
        pid = edge_point_id(query)
        name = using or ""
        found = shard.retrieve([pid], False, [name])
        if not found or not found[0].vector or name not in found[0].vector:
            raise NotFoundError(f"Not found: No point with id {query} found (or it has no vector "
                                          f"'{name}')")
        # A server leaves the example point out of its own results.
        return qe.Query.Nearest(found[0].vector[name], using=using), pid
    if isinstance(query, list):
        return qe.Query.Nearest(query, using=using), None
    if isinstance(query, models.SparseVector):
        return qe.Query.Nearest(qe.SparseVector(list(query.indices), list(query.values)), using=using), None
    if isinstance(query, models.FusionQuery):
        # Qdrant's default RRF k is 2.
        return (qe.Fusion.Dbsf() if _enum_name(query.fusion) == "dbsf" else qe.Fusion.Rrf(k=2)), None
    if isinstance(query, models.RrfQuery):
        return qe.Fusion.Rrf(k=query.rrf.k if query.rrf.k is not None else 2, weights=query.rrf.weights), None
    if isinstance(query, models.OrderByQuery):
        return _order_by(query.order_by), None
    if isinstance(query, models.SampleQuery):
        return qe.Sample.Random, None
    raise StoreError(f"query type {type(query).__name__} is not supported by the embedded store")


def _is_vector_query(edge_query: Any) -> bool:
    import qdrant_edge as qe

    # Fusion / order-by / sample queries take no search params; a nearest query is a `Query`.
    return isinstance(edge_query, qe.Query)


def _exclude(edge_filter: Any, pid: Any):
    import qdrant_edge as qe

    if pid is None:
        return edge_filter
    return qe.Filter(must=[edge_filter] if edge_filter is not None else None,
                     must_not=[qe.HasIdCondition({pid})])


def _prefetches(shard: Any, prefetch: Any, points_count: int) -> list | None:
    import qdrant_edge as qe

    if prefetch is None:
        return None
    out = []
    for p in prefetch if isinstance(prefetch, list) else [prefetch]:
        if p.lookup_from is not None:
            raise StoreError("prefetch lookup_from is not supported by the embedded store")
        query, pid = _scoring_query(shard, p.query, p.using)
        limit = p.limit if p.limit is not None else 10
        params = _search_params(p.params, limit, points_count) if _is_vector_query(query) or p.params else None
        out.append(qe.Prefetch(limit=limit, query=query, prefetches=_prefetches(shard, p.prefetch, points_count),
                               params=params, filter=_exclude(to_edge(p.filter), pid),
                               score_threshold=p.score_threshold))
    return out or None


def _query_request(shard: Any, request: Any, query: Any, points_count: int):
    import qdrant_edge as qe

    if request.lookup_from is not None:
        raise StoreError("lookup_from is not supported by the embedded store")
    edge_query, pid = _scoring_query(shard, query, request.using)
    limit = request.limit if request.limit is not None else 10
    offset = request.offset or 0
    params = None
    if _is_vector_query(edge_query) or request.params is not None:
        params = _search_params(request.params, limit + offset, points_count)
    return qe.QueryRequest(limit=limit, offset=offset, query=edge_query,
                           prefetches=_prefetches(shard, request.prefetch, points_count),
                           with_vector=_with_vectors(request.with_vector),
                           with_payload=_with_payload(request.with_payload),
                           filter=_exclude(to_edge(request.filter), pid), score_threshold=request.score_threshold,
                           params=params)
