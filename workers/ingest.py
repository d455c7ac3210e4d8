"""Ingestion as plain functions: files -> decoded windows -> bundle vectors -> Qdrant points.

The Celery tasks and the in-process mode both call `process_batch`; it is idempotent (point ids derive from
the audio content and the window), so a redelivered or retried batch rewrites the same points.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hark.audio import AudioDecodeError, decode_audio
from hark.bundle import Bundle
from hark.plugin.models import AudioEncoder
from hark.plugin.store import connect, ensure_collection, existing_ids, is_transient, point_id
from hark.settings import Settings

from .jobs import JobStore, dead_letter_entry

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".webm", ".aif", ".aiff",
                  ".wma", ".mp4"}
# A trailing piece of a long recording shorter than this is not stored as a window of its own.
MIN_TAIL_SECONDS = 1.0


@dataclass
class FileOutcome:
    path: str
    status: str  # "ingested", "duplicate" or "failed"
    reason: str = ""
    points: int = 0


@dataclass
class Item:
    path: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "meta": self.meta}


def collect_files(paths: Iterable[str | os.PathLike], recursive: bool = False) -> list[str]:
    """Files named directly (any suffix) plus audio files inside named folders; absolute, sorted, unique."""
    found: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found.extend(str(p.resolve()) for p in path.glob(pattern)
                         if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.exists():
            found.append(str(path.resolve()))
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return sorted(dict.fromkeys(found))


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


class Ingestor:
    """Turns batches of files into points for one bundle. Create it in the worker process (after a fork)."""

    def __init__(self, bundle: Bundle, settings: Settings) -> None:
        self.bundle = bundle
        self.settings = settings
        self.encoder = AudioEncoder(bundle, settings.device)
        seconds = settings.window_seconds or bundle.manifest["audio"]["window_seconds"]
        self.window_samples = round(seconds * bundle.sample_rate)
        if self.window_samples > self.encoder.window_samples:
            raise ValueError(f"HARK_WINDOW_SECONDS={seconds} is longer than the bundle's window "
                             f"({self.encoder.window_samples / bundle.sample_rate:.0f} s)")

    def prepare(self, item: Item, client=None, physical: str = "") -> tuple[FileOutcome, list[Any]]:
        """Decode and embed one file; returns its outcome and the points to write (none for a failure).

        With a client, a file whose points are all stored already is reported as a duplicate without
        decoding it.
        """
        from qdrant_client import models

        path = item.path
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            return FileOutcome(path, "failed", f"cannot read file: {exc.strerror or exc}"), []
        digest = content_hash(data)
        if client is not None:
            stored = self._stored_windows(client, physical, digest)
            if stored:
                return FileOutcome(path, "duplicate", points=stored), []
        try:
            wave = decode_audio(data, self.bundle.sample_rate)
        except AudioDecodeError as exc:
            return FileOutcome(path, "failed", exc.reason), []
        sr = self.bundle.sample_rate
        windows = split_windows(wave, self.window_samples, round(MIN_TAIL_SECONDS * sr))
        ids = [point_id(digest, i) for i in range(len(windows))]
        vectors = self.encoder.encode_windows([w for _, w in windows])
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        points = []
        for i, ((offset, piece), vec) in enumerate(zip(windows, vectors, strict=True)):
            vector: dict[str, Any] = {"global": vec.global_.tolist()}
            if self.bundle.has_rerank:
                vector["tokens"] = vec.rows.tolist()
            payload = {
                "source_uri": path, "file_name": Path(path).name, "content_hash": digest,
                "duration": round(len(wave) / sr, 3), "window_index": i, "windows": len(windows),
                "window_offset": round(offset / sr, 3), "window_duration": round(len(piece) / sr, 3),
                "model_version": self.bundle.version, "ingested_at": now, "meta": item.meta,
            }
            points.append(models.PointStruct(id=ids[i], vector=vector, payload=payload))
        return FileOutcome(path, "ingested", points=len(points)), points

    def ingest(self, items: Sequence[Item], collection: str, settings: Settings | None = None,
               client=None) -> list[FileOutcome]:
        """Write a batch; raises on Qdrant errors (transient ones are retried by the caller)."""
        own = client is None
        client = client or connect(settings or self.settings)
        try:
            cfg = settings or self.settings
            physical = ensure_collection(client, collection, self.bundle, cfg.shards or None, cfg.replication or None)
            outcomes, points = [], []
            for item in items:
                outcome, pts = self.prepare(item, client, physical)
                outcomes.append(outcome)
                points.extend(pts)
            for start in range(0, len(points), 64):
                client.upsert(physical, points=points[start:start + 64], wait=True)
            return outcomes
        finally:
            if own:
                client.close()

    @staticmethod
    def _stored_windows(client, physical: str, digest: str) -> int:
        """Number of windows of this content already stored (all of them), else 0."""
        first = client.retrieve(physical, ids=[point_id(digest, 0)], with_payload=["windows"], with_vectors=False)
        if not first:
            return 0
        count = int(first[0].payload.get("windows", 1))
        ids = [point_id(digest, i) for i in range(count)]
        return count if len(existing_ids(client, physical, ids)) == count else 0


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


def process_batch(job_id: str, items: Sequence[Item], collection: str, bundle_path: str, store: JobStore,
                  settings: Settings, client=None) -> list[FileOutcome]:
    """One attempt at a batch: records every file's outcome; transient Qdrant errors propagate.

    While a re-index of the collection runs, the batch is also written with the incoming bundle, so files
    ingested meanwhile end up in both collections.
    """
    ingestor = ingestor_for(bundle_path, settings)
    outcomes = ingestor.ingest(items, collection, settings, client)
    reindex = store.reindex_state(collection)
    if reindex and reindex.get("bundle") and reindex["bundle"] != bundle_path:
        ok = [i for i, o in zip(items, outcomes, strict=True) if o.status != "failed"]
        if ok:
            ingestor_for(reindex["bundle"], settings).ingest(ok, collection, settings, client)
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


def run_inline(job_id: str, batches: Sequence[Sequence[Item]], collection: str, bundle_path: str, store: JobStore,
               settings: Settings, on_batch=None, client=None) -> None:
    """The in-process worker: the same batches, with the same retry policy as the Celery task."""
    for batch in batches:
        attempt = 0
        while True:
            try:
                process_batch(job_id, batch, collection, bundle_path, store, settings, client)
                break
            except Exception as exc:
                if is_transient(exc) and attempt < settings.max_retries:
                    delay = settings.retry_backoff * 2**attempt
                    log.warning("Qdrant unavailable (%s); retrying in %.1f s", exc, delay)
                    time.sleep(delay)
                    attempt += 1
                    continue
                give_up(job_id, batch, collection, bundle_path, store, f"gave up: {exc}")
                break
        if on_batch is not None:
            on_batch()
