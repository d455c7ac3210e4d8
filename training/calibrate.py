"""Fitting the fusion of the cosine and attention heads on a validation split.

The serving score is `(1 - w) * cosine + w * attention` (only the ratio of the two weights changes a
ranking, so one weight in [0, 1] covers every fusion). `w = 0` is the bi-encoder alone (no rerank needed),
`w = 1` the attention head alone. Both ends are on the grid, so the chosen fusion is never worse on
validation than the better single head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics

GRID = tuple(round(i / 20, 2) for i in range(21))  # 0.00, 0.05, ..., 1.00


@dataclass
class Calibration:
    attention_weight: float  # w; the cosine weight is 1 - w
    rerank: bool  # whether the attention head takes part at all
    metric: str  # what was maximised
    validation: dict[str, float]  # the metric for cosine alone, attention alone and the chosen fusion
    grid: dict[str, float] = field(default_factory=dict)  # the metric at every w tried
    queries: int = 0

    @property
    def fusion(self) -> dict[str, float]:
        return {"cosine": round(1.0 - self.attention_weight, 4), "attention": round(self.attention_weight, 4)}

    def to_dict(self) -> dict[str, Any]:
        return {"fusion": self.fusion, "rerank": self.rerank, "metric": self.metric, "validation": self.validation,
                "grid": self.grid, "queries": self.queries}


def fit_fusion(cosine: np.ndarray, attention: np.ndarray, targets: np.ndarray, metric: str = "mAP@10",
               grid: tuple[float, ...] = GRID) -> Calibration:
    """The weight on the grid that maximises `metric` on (captions x audio) score matrices of a split.

    Ties go to the smaller attention weight: equal quality for less work (w = 0 skips the rerank).
    """
    cos = np.asarray(cosine, dtype=np.float64)
    att = np.asarray(attention, dtype=np.float64)
    if cos.shape != att.shape:
        raise metrics.MetricsInputError(f"head score matrices differ in shape: {cos.shape} vs {att.shape}")
    if not grid or min(grid) != 0.0 or max(grid) != 1.0:
        raise ValueError("the grid must contain both ends, 0 (cosine alone) and 1 (attention alone)")
    scores = {w: metrics.retrieval_metrics((1.0 - w) * cos + w * att, targets)[metric] for w in sorted(grid)}
    best = max(scores.values())
    chosen = min(w for w, value in scores.items() if value >= best - 1e-9)
    return Calibration(attention_weight=chosen, rerank=chosen > 0.0, metric=metric,
                       validation={"cosine": scores[0.0], "attention": scores[1.0], "fused": scores[chosen]},
                       grid={f"{w:.2f}": round(v, 4) for w, v in scores.items()}, queries=int(cos.shape[0]))


def calibrate_split(model, examples, progress: bool = False) -> Calibration | None:
    """Score `examples` (a validation split) with both heads of `model` and fit the fusion; None when the
    model has no attention head (nothing to fuse)."""
    from .evaluate import score_split

    if getattr(model, "attention", None) is None:
        return None
    split = score_split(model, examples, progress=progress)
    return fit_fusion(split.scores["cosine"], split.scores["attention"], split.targets)


def calibrate_checkpoint(checkpoint, data_dirs, split: str = "validation") -> dict[str, Any] | None:
    """Fit the fusion of a checkpoint on `split` of the data folders; None when there is nothing to fit
    (no attention head) or the split is empty (the config's weights stay, and the log says so)."""
    import logging

    from .data.formats import load_split
    from .model import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    examples = load_split(data_dirs, split)
    if not examples:
        logging.getLogger(__name__).warning("no '%s' examples to calibrate the fusion on; keeping the config's "
                                            "weights", split)
        return None
    found = calibrate_split(model.float().eval(), examples)
    return None if found is None else found.to_dict()
