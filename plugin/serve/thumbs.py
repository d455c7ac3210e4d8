"""Waveform thumbnails for the search page: min/max peaks per pixel column, computed once per recording.

The first request for a recording decodes it once (streaming, at a low rate: a thumbnail needs no more) into
fine peaks kept under `<state_dir>/thumbs/<content hash>.npy`; each window's thumbnail (COLUMNS columns over
the whole recording, COLUMNS over the point's window) is cut from those and kept as
`<content hash>-<start>-<end>.json`. Later requests read the JSON; nothing is decoded twice for one content.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hark.audio import iter_audio

COLUMNS = 400  # pixel columns of a thumbnail; the page scales them to its canvas
THUMB_RATE = 8000  # decode rate: peaks at 200 per second need nothing finer
PEAKS_PER_SECOND = 200
FORMAT = 1  # bump when the JSON changes shape, so old cache files are not served
LOCK_STRIPES = 64  # locks shared by all recordings (see Thumbnails._lock)
_SAFE = re.compile(r"[^0-9A-Za-z_.-]")


def _decode(path: Path) -> Iterator[np.ndarray]:
    """The recording as mono blocks at THUMB_RATE (a seam for tests that count decodes)."""
    return iter_audio(path, THUMB_RATE)


def fine_peaks(path: Path) -> np.ndarray:
    """(n, 2) float32 min/max of each 1/PEAKS_PER_SECOND s of the recording, streamed block by block."""
    step = THUMB_RATE // PEAKS_PER_SECOND
    rows: list[np.ndarray] = []
    carry = np.zeros(0, np.float32)
    for block in _decode(path):
        data = np.concatenate([carry, block]) if len(carry) else block
        whole = len(data) - len(data) % step
        if whole:
            frames = data[:whole].reshape(-1, step)
            rows.append(np.stack([frames.min(axis=1), frames.max(axis=1)], axis=1))
        carry = data[whole:]
    if len(carry):
        rows.append(np.array([[carry.min(), carry.max()]], np.float32))
    return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 2), np.float32)


def columns(peaks: np.ndarray, start: float, end: float, n: int = COLUMNS) -> list[list[float]]:
    """n [min, max] columns over start..end seconds of the fine peaks (empty where the audio has none)."""
    lo = max(0, int(np.floor(start * PEAKS_PER_SECOND)))
    hi = min(len(peaks), max(lo + 1, int(np.ceil(end * PEAKS_PER_SECOND))))
    span = peaks[lo:hi]
    if not len(span):
        return [[0.0, 0.0]] * n
    edges = np.linspace(0, len(span), n + 1)
    out = []
    for a, b in itertools.pairwise(edges):
        i, j = int(a), max(int(a) + 1, int(np.ceil(b)))
        part = span[i:min(j, len(span))]
        out.append([round(float(part[:, 0].min()), 4), round(float(part[:, 1].max()), 4)] if len(part) else [0.0, 0.0])
    return out


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Thumbnails:
    """The cache of thumbnails under one folder; safe to call from the server's worker threads."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        # Striped: a lock per recording would grow with every recording ever shown; two recordings that share a
        # stripe only decode one after the other.
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]

    def _lock(self, key: str) -> threading.Lock:
        return self._locks[hash(key) % LOCK_STRIPES]

    def _peaks(self, key: str, path: Path) -> np.ndarray:
        cached = self.folder / f"{key}.npy"
        if cached.is_file():
            return np.load(cached)
        peaks = fine_peaks(path)
        _write_atomic(cached, lambda handle: np.save(handle, peaks))
        return peaks

    def get(self, path: Path, payload: dict[str, Any]) -> bytes:
        """The thumbnail JSON of the point with this payload, whose source file is `path`."""
        digest = str(payload.get("content_hash") or "")
        if not digest:  # points written without a hash: key on the file's identity instead
            stat = path.stat()
            digest = f"{path}-{stat.st_size}-{stat.st_mtime_ns}"
        key = _SAFE.sub("_", digest)[:200]
        duration = _number(payload.get("duration"))
        start = _number(payload.get("window_offset")) or 0.0
        length = _number(payload.get("window_duration"))
        window = f"{start:g}-{length:g}" if length is not None else f"{start:g}-all"
        target = self.folder / f"{key}-{window}.json"
        if target.is_file():
            return target.read_bytes()
        with self._lock(key):  # one decode per recording even when its windows are asked for together
            if target.is_file():
                return target.read_bytes()
            peaks = self._peaks(key, path)
            decoded = len(peaks) / PEAKS_PER_SECOND
            duration = duration or decoded
            end = min(duration, start + length) if length is not None else duration
            body = {"format": FORMAT, "duration": round(duration, 3), "columns": COLUMNS,
                    "window": {"start": round(start, 3), "end": round(end, 3)},
                    "peaks": columns(peaks, 0.0, duration), "window_peaks": columns(peaks, start, end)}
            data = json.dumps(body, separators=(",", ":")).encode()
            _write_atomic(target, lambda handle: handle.write(data))
            return data


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else None
