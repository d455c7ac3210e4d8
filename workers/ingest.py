"""Ingestion as plain functions: files -> decoded windows -> bundle vectors -> Qdrant points.

The Celery tasks and the in-process mode both call `process_batch`; it is idempotent (point ids derive from
the audio content and the window), so a redelivered or retried batch rewrites the same points.

Memory is bounded by a window, not a recording: a source is hashed chunk by chunk (remote ones are spooled to
a temporary file while hashed), decoded as a stream by a thread that runs ahead of the encoder, and written
a few windows at a time. A file's `windows` and `duration` payload fields are set last: they mark the file as
complete, so a file cut short by a crash or found truncated at its end is never taken for a stored one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hark.audio import AudioDecodeError, iter_audio
from hark.bundle import Bundle
from hark.plugin.encoders import AudioEncoder
from hark.settings import Settings
from hark.sources import LocalCopy, SourceError, display_name, expand, local_copy
from hark.store import (
    connect,
    ensure_collection,
    existing_ids,
    is_transient,
    live_version,
    maybe_build_index,
    point_id,
    scroll_payloads,
    version_of,
)

from .jobs import JobStore, dead_letter_entry

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".webm", ".aif", ".aiff",
                  ".wma", ".mp4"}
# A trailing piece of a long recording shorter than this is not stored as a window of its own.
MIN_TAIL_SECONDS = 1.0
# Windows embedded (and upserted) together; decoding runs this many windows ahead of the encoder.
WINDOWS_PER_WRITE = 4
DECODE_AHEAD = 2


@dataclass
class FileOutcome:
    path: str
    status: str  # "ingested", "duplicate" or "failed"
    reason: str = ""
    points: int = 0
    first_source: str = ""  # for a duplicate: the source the content was first stored from


@dataclass
class Item:
    path: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "meta": self.meta}


def collect_files(paths: Iterable[str | os.PathLike], recursive: bool = False) -> list[str]:
    """Sources named directly (any suffix) plus audio files inside named folders or object-store prefixes.

    Local names come back absolute; URIs as written. A missing or unreadable name is kept, not raised: it
    becomes a failed file with its reason while the others are ingested.
    """
    return expand(paths, recursive=recursive, suffixes=AUDIO_SUFFIXES)


# Every name a content was seen under, as {name_key(name): name}: each name is its own key, written with a nested
# set_payload that merges keys, so two workers recording two names at once both keep theirs. `sources` (a list,
# rewritten from a read) is kept for readers, and can miss a name that raced; `names_of` reads both.
NAMES_FIELD = "source_names"


def name_key(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def names_of(payload: dict[str, Any]) -> list[str]:
    """Every name of a stored file: the first, `sources`, then `source_names` (first-seen order, no repeats)."""
    extra = payload.get(NAMES_FIELD)
    names = [payload.get("source_uri"), *(payload.get("sources") or []),
             *(extra.values() if isinstance(extra, dict) else ())]
    return list(dict.fromkeys(n for n in names if isinstance(n, str) and n))


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split_windows(wave: np.ndarray, window_samples: int, min_tail_samples: int) -> list[tuple[int, np.ndarray]]:
    """(offset in samples, samples) of each window; a short tail is dropped unless it is the whole file."""
    windows = []
    for start in range(0, max(len(wave), 1), window_samples):
        piece = wave[start:start + window_samples]
        if start > 0 and len(piece) < min_tail_samples:
            break
        windows.append((start, piece))
    return windows


def stream_windows(blocks: Iterable[np.ndarray], window_samples: int,
                   min_tail_samples: int) -> Iterator[tuple[int, np.ndarray]]:
    """`split_windows` over a stream of blocks: the same windows, holding one window in memory."""
    pending: list[np.ndarray] = []
    held = 0
    offset = 0
    for block in blocks:
        while len(block):
            take = min(len(block), window_samples - held)
            pending.append(block[:take])
            held += take
            block = block[take:]
            if held == window_samples:
                yield offset, np.concatenate(pending)
                offset += window_samples
                pending, held = [], 0
    if held and (offset == 0 or held >= min_tail_samples):
        yield offset, np.concatenate(pending)


def read_ahead(iterator: Iterator, depth: int) -> Iterator:
    """Run `iterator` in a thread, `depth` items ahead: decoding overlaps embedding (both release the GIL).

    The consumer stopping early (an error, a closed generator) stops the producer at its next item.
    """
    items: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        items.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(("end", done))
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            items.put(("error", exc))

    thread = threading.Thread(target=produce, name="hark-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        while thread.is_alive():
            try:
                items.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class Ingestor:
    """Turns batches of files into points for one bundle. Create it in the worker process (after a fork)."""

    def __init__(self, bundle: Bundle, settings: Settings) -> None:
        self.bundle = bundle
        self.settings = settings
        self.encoder = AudioEncoder(bundle, settings.device)
        seconds = settings.window_seconds or bundle.manifest.audio.window_seconds
        self.window_samples = round(seconds * bundle.sample_rate)
        if self.window_samples > self.encoder.window_samples:
            raise ValueError(f"HARK_WINDOW_SECONDS={seconds} is longer than the bundle's window "
                             f"({self.encoder.window_samples / bundle.sample_rate:.0f} s)")

    def target(self, client, collection: str, settings: Settings | None = None) -> str:
        """The physical collection this bundle writes for `collection` (created from the manifest if missing)."""
        cfg = settings or self.settings
        return ensure_collection(client, collection, self.bundle, cfg.shards or None, cfg.replication or None)

    def write_file(self, item: Item, copy: LocalCopy, client, physical: str, job_id: str = "") -> FileOutcome:
        """Decode, embed and upsert one file window by window; a duplicate only gains a name in `sources`."""
        path, digest = item.path, copy.sha256
        stored = self._stored(client, physical, digest)
        if stored is not None:
            count, payload = stored
            first = payload.get("source_uri") or path
            if job_id and payload.get("job") == job_id and first == path:
                # This job stored it before being killed or retried (outcome not recorded yet): not a duplicate.
                return FileOutcome(path, "ingested", points=count)
            if path not in names_of(payload):
                self._add_name(client, physical, [point_id(digest, i) for i in range(count)], path)
            reason = "" if path == first else f"duplicate of {first}"
            return FileOutcome(path, "duplicate", reason, points=count, first_source=first)
        sr = self.bundle.sample_rate
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        base = {"source_uri": path, "file_name": display_name(path), "content_hash": digest,
                "model_version": self.bundle.version, "ingested_at": now, "job": job_id, "meta": item.meta}
        written: list[str] = []
        pending: list[tuple[int, np.ndarray]] = []
        samples = 0

        def flush() -> None:
            from qdrant_client import models

            vectors = self.encoder.encode_windows([w for _, w in pending])
            ids = [point_id(digest, offset // self.window_samples) for offset, _ in pending]
            # An upsert replaces a point's payload: names that another worker, writing the same bytes under
            # another name at the same time, has already recorded on these points are carried over.
            names = {name_key(n): n for r in client.retrieve(physical, ids=ids, with_vectors=False,
                                                              with_payload=["source_uri", "sources", NAMES_FIELD])
                     for n in names_of(r.payload or {})}
            names[name_key(path)] = path
            listed = list(dict.fromkeys([path, *names.values()]))
            points = []
            for (offset, piece), vec, pid in zip(pending, vectors, ids, strict=True):
                vector: dict[str, Any] = {"global": vec.global_.tolist()}
                if self.bundle.has_rerank:
                    vector["tokens"] = vec.rows.tolist()
                if vec.moments is not None:
                    vector["moments"] = vec.moments.tolist()
                payload = {**base, "sources": listed, NAMES_FIELD: names,
                           "window_index": offset // self.window_samples, "window_offset": round(offset / sr, 3),
                           "window_duration": round(len(piece) / sr, 3)}
                points.append(models.PointStruct(id=pid, vector=vector, payload=payload))
            client.upsert(physical, points=points, wait=True)
            written.extend(str(p.id) for p in points)
            pending.clear()

        blocks = read_ahead(iter_audio(copy.path, sr), DECODE_AHEAD)
        try:
            for offset, piece in stream_windows(blocks, self.window_samples, round(MIN_TAIL_SECONDS * sr)):
                samples = offset + len(piece)
                pending.append((offset, piece))
                if len(pending) >= WINDOWS_PER_WRITE:
                    flush()
            if pending:
                flush()
        except AudioDecodeError as exc:
            self._discard(client, physical, written)
            return FileOutcome(path, "failed", exc.reason)
        except BaseException:
            self._discard(client, physical, written)
            raise
        if copy.changed():
            # The point ids come from the bytes hashed before decoding: vectors of other bytes must not carry them.
            self._discard(client, physical, written)
            return FileOutcome(path, "failed", "the file changed while it was ingested (still being written?); "
                                               "submit it again once it is complete")
        # Written last: a file with `windows` on its points is complete (see `_stored`).
        client.set_payload(physical, {"windows": len(written), "duration": round(samples / sr, 3)},
                           points=written, wait=True)
        # Another worker writing the same bytes under another name at the same time replaces these points'
        # payloads (an upsert): merging this name in again keeps it unless that worker's upserts come later still.
        client.set_payload(physical, {name_key(path): path}, points=written, key=NAMES_FIELD, wait=True)
        return FileOutcome(path, "ingested", points=len(written))

    @staticmethod
    def _add_name(client, physical: str, ids: list[str], path: str) -> None:
        """Record another name of stored content: its own key in `source_names` (never lost to a concurrent
        writer), then `sources` rebuilt from what the store holds after that write."""
        client.set_payload(physical, {name_key(path): path}, points=ids, key=NAMES_FIELD, wait=True)
        first = client.retrieve(physical, ids=ids[:1], with_payload=["source_uri", "sources", NAMES_FIELD],
                                with_vectors=False)
        names = names_of(first[0].payload or {}) if first else [path]
        client.set_payload(physical, {"sources": names}, points=ids, wait=True)

    @staticmethod
    def _discard(client, physical: str, ids: list[str]) -> None:
        if not ids:
            return
        from qdrant_client import models

        try:
            client.delete(physical, points_selector=models.PointIdsList(points=ids), wait=True)
        except Exception as exc:  # the incomplete points lack `windows`, so they are never taken as stored
            log.warning("could not remove %d windows of an incomplete file: %s", len(ids), exc)

    def ingest(self, items: Sequence[Item], collection: str, settings: Settings | None = None,
               client=None) -> list[FileOutcome]:
        """Write a batch; raises on Qdrant errors (transient ones are retried by the caller)."""
        own = client is None
        client = client or connect(settings or self.settings)
        try:
            physical = self.target(client, collection, settings)
            spool = (settings or self.settings).max_spool_bytes
            outcomes = [ingest_item(item, [(self, physical)], client, max_spool_bytes=spool)[0] for item in items]
            maybe_build_index(client, physical)
            return outcomes
        finally:
            if own:
                client.close()

    @staticmethod
    def _stored(client, physical: str, digest: str) -> tuple[int, dict[str, Any]] | None:
        """(windows, payload of the first window) when every window of this content is stored, else None."""
        first = client.retrieve(physical, ids=[point_id(digest, 0)],
                                with_payload=["windows", "source_uri", "sources", NAMES_FIELD, "job"],
                                with_vectors=False)
        if not first or not (first[0].payload or {}).get("windows"):
            return None
        count = int(first[0].payload["windows"])
        ids = [point_id(digest, i) for i in range(count)]
        return (count, first[0].payload) if len(existing_ids(client, physical, ids)) == count else None


def ingest_item(item: Item, targets: Sequence[tuple[Ingestor, str]], client, job_id: str = "",
                max_spool_bytes: int | None = None) -> list[FileOutcome]:
    """One file into every target (ingestor, physical collection); the source is read and hashed once.

    `max_spool_bytes` bounds the temporary copy of a remote source (the batch's HARK_MAX_SPOOL_MB: the ingestors
    are shared across batches and keep the settings of the first)."""
    try:
        with local_copy(item.path, max_bytes=max_spool_bytes) as copy:
            return [ingestor.write_file(item, copy, client, physical, job_id) for ingestor, physical in targets]
    except SourceError as exc:
        return [FileOutcome(item.path, "failed", exc.reason)] * len(targets)


_ingestors: dict[str, Ingestor] = {}


def ingestor_for(bundle_path: str, settings: Settings) -> Ingestor:
    """One Ingestor (and so one set of ONNX sessions) per process, bundle version, device and window length.

    It holds no connection: each batch connects with the settings it is given.
    """
    bundle = Bundle.load(bundle_path, verify_hashes=False)
    key = f"{bundle.version}:{bundle_path}:{settings.device}:{settings.window_seconds}"
    if key not in _ingestors:
        bundle.verify_files()
        _ingestors[key] = Ingestor(bundle, settings)
    return _ingestors[key]


def write_targets(client, store: JobStore, job_id: str, collection: str, bundle_path: str,
                  settings: Settings) -> list[str]:
    """Bundles a batch is written with: the live one (the alias decides, so a rollback is followed even when
    the job was submitted with another version) and the target of a re-index in progress. A re-index's own
    job writes its target only."""
    from hark.registry import registered_folder

    state = store.reindex_state(collection) or {}
    if state.get("job") == job_id:
        return [bundle_path]
    paths = [bundle_path]
    live = live_version(client, collection)
    job_version = ingestor_for(bundle_path, settings).bundle.version
    if live is not None and live != job_version:
        folder = registered_folder(settings, live)
        if folder is not None:
            paths = [str(folder)]
        else:
            log.warning("collection %s serves %s, which is not registered; writing with %s", collection, live,
                        job_version)
    if state.get("bundle") and state.get("version") != ingestor_for(paths[0], settings).bundle.version:
        paths.append(state["bundle"])
    return paths


def process_batch(job_id: str, items: Sequence[Item], collection: str, bundle_path: str, store: JobStore,
                  settings: Settings, client=None, deadline: float | None = None) -> list[FileOutcome]:
    """One attempt at a batch: records every file's outcome; transient Qdrant errors propagate.

    Files go to the live collection and, while a re-index of it runs, also to the new one (see
    `write_targets`); the outcome reported is the live collection's. Past `deadline` (time.monotonic()) no
    further file is started: the rest fail (dead-lettered) with the reason, and the batch ends normally. Celery's
    time limits need the prefork pool; this one holds in any pool (the GPU worker's solo pool included).
    """
    own = client is None
    client = client or connect(settings)
    try:
        targets = []
        for path in write_targets(client, store, job_id, collection, bundle_path, settings):
            ingestor = ingestor_for(path, settings)
            targets.append((ingestor, ingestor.target(client, collection, settings)))
        outcomes = []
        for item in items:
            if deadline is not None and time.monotonic() > deadline:
                outcomes.append(FileOutcome(item.path, "failed", "not started: the batch reached its time limit "
                                                                 "(set by HARK_VISIBILITY_TIMEOUT)"))
                continue
            outcomes.append(ingest_item(item, targets, client, job_id, settings.max_spool_bytes)[0])
        for _, physical in targets:
            maybe_build_index(client, physical)
    finally:
        if own:
            client.close()
    meta = {i.path: i.meta for i in items}
    for outcome in outcomes:
        store.record(job_id, outcome.path, outcome.status, outcome.reason)
        if outcome.status == "failed":
            store.dead_letter(dead_letter_entry(job_id, outcome.path, outcome.reason, collection, bundle_path,
                                                meta.get(outcome.path)))
    return outcomes


def give_up(job_id: str, items: Sequence[Item], collection: str, bundle_path: str, store: JobStore,
            reason: str) -> None:
    """Dead-letter every file of a batch that has no outcome yet (retries exhausted, poison message)."""
    try:
        done = set(store.status(job_id)["finished"])
    except KeyError:
        done = set()
    for item in items:
        if item.path in done:
            continue
        store.record(job_id, item.path, "failed", reason)
        store.dead_letter(dead_letter_entry(job_id, item.path, reason, collection, bundle_path, item.meta))


def retry_delay(settings: Settings, exc: BaseException, attempt: int) -> float | None:
    """The one retry policy: seconds to wait before attempt `attempt + 1`, or None to give up.

    Only transient store errors (Qdrant unreachable, a busy embedded folder) are retried, with exponential
    backoff; undecodable audio never is (its outcome is recorded per file, not raised).
    """
    if is_transient(exc) and attempt < settings.max_retries:
        return settings.retry_backoff * 2**attempt
    return None


def sweep_incomplete(client, physical: str, before: dt.datetime,
                     running: Callable[[str], bool] | None = None) -> int:
    """Delete the windows of files whose ingestion never finished, written before `before`; returns how many.

    A worker killed mid-file leaves windows without `windows` in their payload. Its redelivery writes the same
    ids again and completes them, but a file that is then dead-lettered, or never submitted again, kept them:
    searchable, without a duration, and never counted as stored. Only hark's own points are considered (they
    carry `content_hash` and `window_index`): points written through the Qdrant API are not hark's to remove.
    `running(job)` True keeps the windows of a job still in progress, however old (a long file in a pool without
    time limits)."""
    from qdrant_client import models

    cutoff = before.astimezone(dt.UTC).isoformat(timespec="seconds")
    empty = [models.IsEmptyCondition(is_empty=models.PayloadField(key=k)) for k in ("windows", "content_hash",
                                                                                   "window_index")]
    stale = [empty[0], models.FieldCondition(key="ingested_at", range=models.DatetimeRange(lt=cutoff))]
    candidates = models.Filter(must=stale, must_not=empty[1:])
    ids = [pid for pid, payload in scroll_payloads(client, physical, ["job"], candidates, page=1000)
           if running is None or not running(str(payload.get("job") or ""))]
    if ids:
        # The delete repeats the conditions: a window a redelivery rewrote since the scroll (a newer time, then
        # `windows`) no longer matches them and stays.
        again = models.Filter(must=[*stale, models.HasIdCondition(has_id=ids)], must_not=candidates.must_not)
        client.delete(physical, points_selector=models.FilterSelector(filter=again), wait=True)
        log.warning("removed up to %d windows of files whose ingestion never finished from %s", len(ids), physical)
    return len(ids)


def sweep_all_incomplete(client, before: dt.datetime, running: Callable[[str], bool] | None = None) -> dict[str, int]:
    """`sweep_incomplete` over hark's collections (`NAME__<version>`); {collection: windows removed} where any
    were. Other applications' collections on the same server are left alone."""
    removed = {}
    for c in client.get_collections().collections:
        if version_of(c.name) is None:
            continue
        n = sweep_incomplete(client, c.name, before, running)
        if n:
            removed[c.name] = n
    return removed


def run_inline(job_id: str, batches: Sequence[Sequence[Item]], collection: str, bundle_path: str, store: JobStore,
               settings: Settings, on_batch=None, client=None) -> None:
    """The in-process worker: the same batches, with the same retry policy as the Celery task.

    With the embedded store this process is the folder's only writer, so windows left incomplete before this job
    began belong to a process that died: they are removed first."""
    if settings.embedded_qdrant:
        own = client is None
        try:
            sweeper = client or connect(settings)
            try:
                sweep_all_incomplete(sweeper, dt.datetime.now(dt.UTC))
            finally:
                if own:
                    sweeper.close()
        except Exception as exc:  # housekeeping: the job runs whatever became of it
            log.warning("could not remove windows of files whose ingestion never finished: %s", exc)
    for batch in batches:
        attempt = 0
        while True:
            try:
                process_batch(job_id, batch, collection, bundle_path, store, settings, client)
                break
            except Exception as exc:
                delay = retry_delay(settings, exc, attempt)
                if delay is None:
                    give_up(job_id, batch, collection, bundle_path, store, f"gave up: {type(exc).__name__}: {exc}")
                    break
                log.warning("Qdrant unavailable (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                attempt += 1
        if on_batch is not None:
            on_batch()
