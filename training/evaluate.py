"""Scoring a dataset split with trained models, and the metrics of DESIGN.md on the result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import metrics
from .data.dataset import load_clips
from .data.formats import Example
from .linear import LinearModel
from .model import RetrievalModel
from .objectives import prediction


@dataclass
class ScoredSplit:
    """Score matrices [captions, audio] per head (and fused) for one split."""

    queries: list[str]
    audio_names: list[str]
    targets: np.ndarray  # [Q] column of each caption's own audio
    scores: dict[str, np.ndarray]
    skipped: list[str]


def _score_linear(model: LinearModel, examples: Sequence[Example]) -> ScoredSplit:
    """The linear model's scores are its "fused" and its "prediction" ones (it has no heads)."""
    scores, targets, kept = model.split_scores(examples)
    names = {ex.audio_path.name for ex in kept}
    return ScoredSplit([c for ex in kept for c in ex.captions], [ex.audio_path.name for ex in kept], targets,
                       {"fused": scores, "prediction": scores},
                       [ex.audio_path.name for ex in examples if ex.audio_path.name not in names])


@torch.no_grad()
def score_split(model: RetrievalModel | LinearModel, examples: Sequence[Example], batch_size: int = 16,
                progress: bool = True, clips: list[np.ndarray] | None = None) -> ScoredSplit:
    if isinstance(model, LinearModel):
        return _score_linear(model, examples)
    cfg = model.cfg.audio
    skipped: list[str] = []
    if clips is None:
        examples, clips, skipped = load_clips(examples, cfg.sample_rate, cfg.segment_seconds * cfg.max_segments)
    if not examples:
        raise ValueError("no decodable audio in the evaluation split")
    model.eval()
    device = model.device
    audio_parts = []
    order = range(0, len(clips), batch_size)
    for start in tqdm(order, desc="encode audio", disable=not progress, leave=False):
        chunk = clips[start:start + batch_size]
        lengths = torch.tensor([len(c) for c in chunk])
        wave = torch.zeros(len(chunk), int(lengths.max()))
        for row, clip in enumerate(chunk):
            wave[row, : len(clip)] = torch.from_numpy(clip)
        enc = model.encode_audio(wave.to(device), lengths.to(device))
        audio_parts.append((enc.segments, enc.mask))
    max_m = max(s.shape[1] for s, _ in audio_parts)
    segs = torch.cat([torch.nn.functional.pad(s, (0, 0, 0, max_m - s.shape[1])) for s, _ in audio_parts])
    masks = torch.cat([torch.nn.functional.pad(m, (0, max_m - m.shape[1])) for _, m in audio_parts])
    audio = model.audio_heads(segs, masks)

    queries = [c for ex in examples for c in ex.captions]
    targets = np.array([i for i, ex in enumerate(examples) for _ in ex.captions])
    per_head: dict[str, list[torch.Tensor]] = {name: [] for name in model.head_names}
    per_head["fused"] = []
    per_head["prediction"] = []  # what an ensemble averages (objectives.prediction)
    for start in tqdm(range(0, len(queries), 64), desc="score captions", disable=not progress, leave=False):
        text = model.encode_captions(queries[start:start + 64])
        scores = model.head_scores(text, audio)
        for name, s in scores.items():
            per_head[name].append(s.float().cpu())
        per_head["fused"].append(model.fuse(scores).float().cpu())
        per_head["prediction"].append(prediction(model, scores).cpu())
    return ScoredSplit(
        queries=queries,
        audio_names=[ex.audio_path.name for ex in examples],
        targets=targets,
        scores={k: torch.cat(v).numpy() for k, v in per_head.items()},
        skipped=skipped,
    )


def split_metrics(split: ScoredSplit, score_key: str = "fused",
                  relevance: dict[str, list[str]] | None = None, strict: bool = False) -> dict[str, float]:
    """R@1/5/10 and mAP@10 (percent), plus mAP@16 with a relevance file (see `metrics.relevance_metrics`)."""
    scores = split.scores[score_key]
    out = metrics.retrieval_metrics(scores, split.targets)
    if relevance is not None:
        found, _ = metrics.relevance_metrics(scores, split.queries, split.audio_names, relevance, strict=strict)
        out.update(found)
    return out


def write_score_csv(split: ScoredSplit, path: Path, score_key: str = "fused") -> None:
    """The score-file format `hark evaluate --scores` reads (a `query` column, one column per audio)."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["query", *split.audio_names])
        for query, row in zip(split.queries, split.scores[score_key], strict=True):
            writer.writerow([query, *(f"{v:.6f}" for v in row)])
