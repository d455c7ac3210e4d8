"""Moments: the span inside a stored window where a query matches best (numpy only; no torch).

Ingestion embeds short sub-windows of every window (`MomentSpec.window_s` long, one every `hop_s`) into the
cosine head's joint space and stores them as the `moments` multivector, quantised to one byte per value. A hit's
span is read off the query's sentence vector against those rows: the best sub-window, widened over its
neighbours while they score close to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# uint8 storage: value = round(x / scale) + 128 with a per-row scale. Rows are compared by cosine, which the
# scale does not change, so no scale is stored: rows are re-normalised after the offset is removed.
_OFFSET = 128.0
_LEVELS = 127.0


@dataclass(frozen=True)
class MomentSpec:
    window_s: float  # sub-window length
    hop_s: float  # distance between sub-window starts

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and self.hop_s > 0):
            raise ValueError(f"moment window and hop must be positive, got {self.window_s} and {self.hop_s}")

    def starts(self, duration_s: float) -> list[float]:
        """Start times (seconds) of the sub-windows of `duration_s` of audio: at least one; the last may run past
        the end (the audio encoder zero-pads it)."""
        count = max(1, math.ceil(max(duration_s - self.window_s, 0.0) / self.hop_s - 1e-9) + 1)
        return [round(i * self.hop_s, 6) for i in range(count)]


def quantize(rows: np.ndarray) -> np.ndarray:
    """[T, d] float rows -> [T, d] float32 holding integers 1..255 (a uint8 vector's values), per-row scaled."""
    rows = np.asarray(rows, dtype=np.float32)
    peak = np.abs(rows).max(axis=1, keepdims=True)
    scale = np.where(peak > 0, peak / _LEVELS, 1.0)
    return (np.rint(rows / scale) + _OFFSET).astype(np.float32)


def dequantize(stored: np.ndarray) -> np.ndarray:
    """Stored uint8 values [T, d] -> unit rows (a row of zeros stays zero)."""
    rows = np.asarray(stored, dtype=np.float32) - _OFFSET
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norm > 0, norm, 1.0)


def best_span(scores: np.ndarray, spec: MomentSpec, duration_s: float, keep: float = 0.5) -> tuple[float, float]:
    """The span (start, end seconds, within [0, duration_s]) of the best-scoring run of sub-windows.

    From the best sub-window, neighbours are added while they score at least `keep` of the way from the
    window's median score up to the best one: a sound that fills several sub-windows gets them all, a brief one
    stays short.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or not len(scores):
        raise ValueError("best_span needs a non-empty 1-D array of sub-window scores")
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must lie in [0, 1], got {keep}")
    finite = np.where(np.isfinite(scores), scores, -np.inf)
    peak = int(np.argmax(finite))
    floor = float(np.median(scores[np.isfinite(scores)])) if np.isfinite(scores).any() else 0.0
    bar = floor + keep * (finite[peak] - floor)
    first = last = peak
    while first > 0 and finite[first - 1] >= bar:
        first -= 1
    while last < len(scores) - 1 and finite[last + 1] >= bar:
        last += 1
    start = min(first * spec.hop_s, duration_s)
    end = min(last * spec.hop_s + spec.window_s, duration_s)
    return round(start, 3), round(max(end, start), 3)


def span_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Intersection over union of two time spans."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def event_times(rows: np.ndarray, events: np.ndarray, spec: MomentSpec, sharpness: float = 20.0) -> np.ndarray:
    """When each event happens in a window: the expected sub-window centre (seconds) under a softmax of the
    event vector's cosines with the window's rows ([T, d] unit rows, [E, d] unit event vectors -> [E]).
    `sharpness` is the inverse temperature (20: the training loss's tau of 0.05)."""
    logits = sharpness * (np.asarray(events, np.float64) @ np.asarray(rows, np.float64).T)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    centres = np.arange(len(rows)) * spec.hop_s + spec.window_s / 2
    return weights @ centres


def order_agreement(times: np.ndarray, spec: MomentSpec) -> float:
    """How well events stated in order (earliest first) follow each other in the audio: the mean over
    consecutive pairs of their time difference in sub-window lengths, clipped to [-1, 1] (1: each event a
    sub-window or more after the one before; -1: the reverse; 0: no evidence)."""
    times = np.asarray(times, dtype=np.float64)
    if len(times) < 2:
        return 0.0
    return float(np.mean(np.clip(np.diff(times) / spec.window_s, -1.0, 1.0)))
