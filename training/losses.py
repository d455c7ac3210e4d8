"""Objectives as modules: symmetric NT-Xent with shared positives, and ensemble distillation."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def positive_targets(audio_ids: list[str], device: torch.device | None = None) -> torch.Tensor:
    """Row-normalised [B, B] target distribution: every caption of the same audio is a positive."""
    index = {a: i for i, a in enumerate(dict.fromkeys(audio_ids))}
    ids = torch.tensor([index[a] for a in audio_ids], device=device)
    same = (ids[:, None] == ids[None, :]).float()
    return same / same.sum(1, keepdim=True)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum(targets * log_softmax(logits))."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()


class NTXentLoss(nn.Module):
    """Symmetric normalised-temperature cross entropy over a [text, audio] similarity matrix.

    Rows and columns are both scored; a caption whose audio occurs several times in the batch spreads its
    target over all of those columns (and likewise for audio rows).
    """

    def __init__(self, tau: float = 0.05) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, scores: torch.Tensor, audio_ids: list[str]) -> torch.Tensor:
        targets = positive_targets(audio_ids, scores.device)
        logits = scores / self.tau
        return 0.5 * (soft_cross_entropy(logits, targets) + soft_cross_entropy(logits.T, targets.T))


class DistillationLoss(nn.Module):
    """Stage-2 loss: the student's rows and columns against the softmax of the teacher's.

    The teacher matrix is the mean of the ensemble members' scores divided by tau. The total is
    kd_lambda * soft loss + (1 - kd_lambda) * hard NT-Xent; the report uses kd_lambda = 1.
    """

    def __init__(self, tau: float = 0.05, kd_lambda: float = 1.0) -> None:
        super().__init__()
        self.tau = tau
        self.kd_lambda = kd_lambda
        self.hard = NTXentLoss(tau)

    def forward(self, scores: torch.Tensor, teacher_scores: torch.Tensor | None, audio_ids: list[str]) -> torch.Tensor:
        if self.kd_lambda <= 0:
            return self.hard(scores, audio_ids)
        if teacher_scores is None:
            raise ValueError("distillation with kd_lambda > 0 needs the teachers' scores")
        logits = scores / self.tau
        teacher = teacher_scores.detach() / self.tau
        soft = 0.5 * (soft_cross_entropy(logits, F.softmax(teacher, dim=-1))
                      + soft_cross_entropy(logits.T, F.softmax(teacher.T, dim=-1)))
        if self.kd_lambda >= 1.0:
            return soft
        return self.kd_lambda * soft + (1 - self.kd_lambda) * self.hard(scores, audio_ids)


class OrderLoss(nn.Module):
    """Two-way softmax of a caption's score against its order-swapped caption's score on the same clip.

    Mean of -log(e^(right/tau) / (e^(right/tau) + e^(swapped/tau))) = softplus((swapped - right) / tau).
    """

    def __init__(self, tau: float = 0.05) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, right: torch.Tensor, swapped: torch.Tensor) -> torch.Tensor:
        return F.softplus((swapped - right) / self.tau).mean()
