"""What one optimisation step computes: `objective(batch) -> (loss, report)`.

The loop knows nothing about heads or teachers; an objective turns a collated batch into a scalar loss
and a dict of floats to log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .losses import DistillationLoss, NTXentLoss
from .model import RetrievalModel


def clip_keys(batch: dict[str, Any]) -> list[str]:
    """Audio identities for positives: ids are unique only within a dataset, so the source is part of it."""
    return [f"{src}:{aid}" for src, aid in zip(batch["sources"], batch["audio_ids"], strict=True)]


def _encode(model: RetrievalModel, batch: dict[str, Any]):
    device = model.device
    audio = model.encode_audio(batch["waveform"].to(device), batch["lengths"].to(device))
    text = model.encode_captions(batch["captions"])
    return model.head_scores(text, audio)


class ContrastiveObjective:
    """Stage 1: the summed NT-Xent losses of every enabled head (a joint model trains all at once)."""

    def __init__(self, model: RetrievalModel, tau: float) -> None:
        self.model = model
        self.loss = NTXentLoss(tau)

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        scores = _encode(self.model, batch)
        losses = {name: self.loss(s.float(), clip_keys(batch)) for name, s in scores.items()}
        total = sum(losses.values())
        return total, {f"loss_{name}": float(v.detach()) for name, v in losses.items()}


def prediction(model: RetrievalModel, scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """A model's prediction: the fusion-weighted mean of its heads' score matrices.

    Normalised by the weights' sum so that it stays on the heads' cosine scale (distillation divides it by
    tau) and so that every member of an ensemble counts equally, whatever its fusion weights.
    """
    weights = {"cosine": model.cfg.heads.fusion_cosine, "attention": model.cfg.heads.fusion_attention}
    total = sum(weights[name] for name in scores)
    if total <= 0:
        raise ValueError("the fusion weights of the model's heads sum to zero")
    return sum(weights[name] * s.float() for name, s in scores.items()) / total


class DistillationObjective:
    """Stage 2: every head of the student against the averaged predictions of the teachers.

    A teacher's prediction is `prediction(teacher, scores)`, the ensemble's the mean over teachers: the one
    meaning of "ensemble" in hark (`hark evaluate` with several checkpoints averages the same thing).
    Teachers see the same crops and captions as the student, in eval mode, without gradients.
    """

    def __init__(self, model: RetrievalModel, teachers: Sequence[RetrievalModel], tau: float,
                 kd_lambda: float) -> None:
        if not teachers:
            raise ValueError("distillation needs at least one teacher")
        self.model = model
        self.teachers = list(teachers)
        self.loss = DistillationLoss(tau, kd_lambda)

    @torch.no_grad()
    def teacher_scores(self, batch: dict[str, Any]) -> torch.Tensor:
        members = []
        for teacher in self.teachers:
            teacher.eval()
            scores = _encode(teacher, batch)
            members.append(prediction(teacher, scores))
        return torch.stack(members).mean(0)

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        teacher = self.teacher_scores(batch).to(self.model.device)
        scores = _encode(self.model, batch)
        losses = {name: self.loss(s.float(), teacher, clip_keys(batch)) for name, s in scores.items()}
        total = sum(losses.values())
        return total, {f"kd_{name}": float(v.detach()) for name, v in losses.items()}
