"""Evaluation of moments: spans of an exported bundle against events planted at known times.

Synthetic sequence clips hold two or three events one after another; each event's caption clause is a query, and
its span comes from the product path (the bundle's moments graph as ingestion stores it, the text graph's
sentence vector, `hark.moments.best_span`). Used by `benchmarks/moments.py` and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hark.bundle import Bundle
from hark.moments import best_span, dequantize, span_iou

from .synth import VARIANTS, make_scene

KEEPS = (0.0, 0.25, 0.5, 0.75, 1.0)

Clip = tuple[np.ndarray, list[tuple[str, float, float]]]


def planted_clips(variant: str, count: int, seed: int = 2027, sample_rate: int = 32000,
                  seconds: tuple[float, float] = (12.0, 28.0)) -> list[Clip]:
    """`count` sequence clips of the synthetic generator `variant`: (audio, [(event clause, onset, offset)])."""
    style = VARIANTS[variant]
    names = list(style.events)
    rng = np.random.default_rng([seed, 31337, *style.seed_salt])
    out = []
    for _ in range(count):
        events = [names[i] for i in rng.choice(len(names), size=int(rng.choice([2, 3])), replace=False)]
        scene = make_scene(rng, float(rng.uniform(*seconds)), sample_rate, events=events, arrangement="sequence",
                           variant=variant)
        out.append((scene.audio, [(style.events[e][0], on, off)
                                  for e, on, off in zip(events, scene.onsets, scene.offsets, strict=True)]))
    return out


def _summary(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"iou50_share": round(float(np.mean(v >= 0.5)), 3), "mean_iou": round(float(v.mean()), 3)}


def span_quality(bundle: Bundle, clips: Sequence[Clip], keep: float = 0.5, device: str = "cpu") -> dict:
    """IoU of each query's span with its event: share >= 0.5 and mean, at `keep`, for every value of KEEPS, and
    for the whole window (what a hit without moments points at)."""
    from hark.plugin.encoders import AudioEncoder, TextEncoder

    spec = bundle.moments
    if spec is None:
        raise ValueError(f"{bundle.root}: this bundle has no moments graph (exported with audio.moment_seconds=0?)")
    audio, text = AudioEncoder(bundle, device), TextEncoder(bundle, device)
    keeps = sorted({*KEEPS, keep})
    ious: dict[float, list[float]] = {k: [] for k in keeps}
    whole = []
    for wave, events in clips:
        rows = dequantize(audio.encode_windows([wave])[0].moments)
        sentence = text.encode([clause for clause, _, _ in events]).sentence
        duration = len(wave) / bundle.sample_rate
        for (_, on, off), query in zip(events, sentence, strict=True):
            scores = rows @ query
            for k in keeps:
                ious[k].append(span_iou(best_span(scores, spec, duration, k), (on, off)))
            whole.append(span_iou((0.0, duration), (on, off)))
    return {"queries": len(whole), "moment_s": spec.window_s, "keep": keep, **_summary(ious[keep]),
            "whole_window": _summary(whole), "keep_sweep": {str(k): _summary(v) for k, v in ious.items()}}
