"""Evaluation of moments: spans of an exported bundle against events planted at known times.

Synthetic sequence clips hold two or three events one after another; each event's caption clause is a query, and
its span comes from the product path (the bundle's moments graph as ingestion stores it, the text graph's
sentence vector, `hark.moments.best_span`). Used by `benchmarks/moments.py` and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


# -- order through the moments -------------------------------------------------------------------------------

def swapped_pairs(variant: str, count: int, seed: int = 4141, seconds: float = 16.0,
                  sample_rate: int = 32000) -> list[tuple[np.ndarray, str, str]]:
    """Clips where event A precedes B, each with "A <then> B" and the swapped "B <then> A". The templates cycle
    through every sequence template of the variant (not only the first), the clauses are each event's first."""
    style = VARIANTS[variant]
    names = list(style.events)
    templates = style.two["sequence"]
    rng = np.random.default_rng([seed, 4242, *style.seed_salt])
    out = []
    for i in range(count):
        a, b = (names[j] for j in rng.choice(len(names), size=2, replace=False))
        scene = make_scene(rng, seconds, sample_rate, events=[a, b], arrangement="sequence", variant=variant)
        template = templates[i % len(templates)]
        right = template.format(a=style.events[a][0], b=style.events[b][0])
        wrong = template.format(a=style.events[b][0], b=style.events[a][0])
        out.append((scene.audio, right[0].upper() + right[1:] + ".", wrong[0].upper() + wrong[1:] + "."))
    return out


class ProductScorer:
    """Every caption against every clip through the bundle, as `hark search` scores them: the fused cosine and
    attention score (the manifest's weights) and, for captions that state an order, the order agreement of their
    events' times in the clip's stored moments (`hark.moments.order_agreement`; 0 for other captions)."""

    def __init__(self, bundle: Bundle, device: str = "cpu") -> None:
        from hark.plugin.encoders import AudioEncoder, Reranker, TextEncoder

        self.bundle = bundle
        self.audio, self.text = AudioEncoder(bundle, device), TextEncoder(bundle, device)
        self.reranker = Reranker(bundle, device) if bundle.has_rerank else None

    def scores(self, waves: Sequence[np.ndarray], captions: Sequence[str]) -> dict[str, np.ndarray]:
        from hark.moments import event_times, order_agreement
        from hark.order import ordered_events

        clips = [v for i in range(0, len(waves), 8) for v in self.audio.encode_windows(list(waves[i:i + 8]))]
        glob = np.stack([c.global_ for c in clips])
        fusion = self.bundle.fusion
        out: dict[str, np.ndarray] = {"cosine": np.zeros((len(captions), len(clips)), np.float32)}
        if self.reranker is not None:
            out["attention"] = np.zeros_like(out["cosine"])
            rows = np.concatenate([c.rows for c in clips])  # every clip is every caption's candidate
            counts = np.array([len(c.rows) for c in clips])
        for start in range(0, len(captions), 32):
            batch = self.text.encode(list(captions[start:start + 32]))
            out["cosine"][start:start + 32] = batch.sentence @ glob.T
            if self.reranker is not None:
                att = self.reranker.score_packed(batch.tokens, batch.mask, [(rows, counts)] * len(batch.sentence))
                out["attention"][start:start + 32] = np.stack(att)
        out["fused"] = fusion.get("cosine", 1.0) * out["cosine"]
        if "attention" in out:
            out["fused"] = out["fused"] + fusion.get("attention", 0.0) * out["attention"]
        out["order"] = np.zeros_like(out["cosine"])
        spec = self.bundle.moments
        if spec is not None:
            moment_rows = [dequantize(c.moments) for c in clips]
            for q, caption in enumerate(captions):
                events = ordered_events(caption)
                if not events:
                    continue
                vectors = self.text.encode(events).sentence
                out["order"][q] = [order_agreement(event_times(r, vectors, spec), spec) for r in moment_rows]
        return out


def order_accuracy(scorer: ProductScorer, pairs, weights: Sequence[float]) -> dict[str, float]:
    """Share of pairs whose right-order caption outscores the swapped one, per head and for the fused score plus
    `weight` x order agreement, for each weight."""
    right = [scorer.scores([audio], [r, w]) for audio, r, w in pairs]
    out = {}
    for head in ("cosine", "attention"):
        if head in right[0]:
            out[head] = round(float(np.mean([s[head][0, 0] > s[head][1, 0] for s in right])), 3)
    for weight in weights:
        wins = [s["fused"][0, 0] + weight * s["order"][0, 0] > s["fused"][1, 0] + weight * s["order"][1, 0]
                for s in right]
        out[f"fused+{weight:g}*order"] = round(float(np.mean(wins)), 3)
    return out


def split_map(scorer: ProductScorer, data: str | Path, weights: Sequence[float], split: str = "evaluation",
              ) -> dict[str, float]:
    """mAP@10 (one target clip per caption) of a corpus split through the bundle, for the fused score plus
    `weight` x order agreement, for each weight (weight 0: what `hark search` ranks by without the order term)."""
    from hark.audio import decode_audio
    from hark.training.data.formats import load_split
    from hark.training.metrics import retrieval_metrics

    examples = load_split([data], split)
    window = scorer.bundle.segment_samples * scorer.bundle.max_segments
    waves, captions, targets = [], [], []
    for ex in examples:
        try:
            wave = decode_audio(ex.audio_path, scorer.bundle.sample_rate)[:window]
        except Exception:  # a broken file is in neither ranking, as in hark evaluate
            continue
        for caption in ex.captions:
            captions.append(caption)
            targets.append(len(waves))
        waves.append(wave)
    scores = scorer.scores(waves, captions)
    targets = np.asarray(targets)
    return {f"mAP@10 fused+{w:g}*order": round(retrieval_metrics(scores["fused"] + w * scores["order"], targets)
                                                ["mAP@10"], 2) for w in weights}
