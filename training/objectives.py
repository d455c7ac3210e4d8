"""What one optimisation step computes: `objective(batch) -> (loss, report)`.

The loop knows nothing about heads or teachers; an objective turns a collated batch into a scalar loss
and a dict of floats to log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hark.order import swap_order

from .linear import LinearModel
from .losses import DistillationLoss, NTXentLoss, OrderLoss
from .model import AudioEncoding, RetrievalModel


def clip_keys(batch: dict[str, Any]) -> list[str]:
    """Audio identities for positives: ids are unique only within a dataset, so the source is part of it."""
    return [f"{src}:{aid}" for src, aid in zip(batch["sources"], batch["audio_ids"], strict=True)]


def _encode_both(model: RetrievalModel, batch: dict[str, Any]):
    device = model.device
    if "mel_power" in batch:  # train.mel_cache: the front end ran once per clip, in the dataset
        audio = model.encode_audio_power(batch["mel_power"].to(device), batch["frames"].to(device))
    else:
        audio = model.encode_audio(batch["waveform"].to(device), batch["lengths"].to(device))
    text = model.encode_captions(batch["captions"])
    return model.head_scores(text, audio), audio


def _encode(model: RetrievalModel, batch: dict[str, Any]):
    return _encode_both(model, batch)[0]


def _audio_rows(audio: AudioEncoding, rows: torch.Tensor) -> AudioEncoding:
    state = {k: v[rows] for k, v in audio.state.items()} if audio.state is not None else None
    glob = audio.global_[rows] if audio.global_ is not None else None
    return AudioEncoding(audio.segments[rows], audio.mask[rows], glob, state)


def order_negatives(batch: dict[str, Any]) -> tuple[list[int], list[str]]:
    """Caption indices whose caption states an order, and their swapped captions (mixed rows excluded)."""
    mixed = batch.get("mixed") or [False] * len(batch["captions"])
    owner = batch["caption_audio_index"].tolist()
    found = [(i, swap_order(c)) for i, c in enumerate(batch["captions"]) if not mixed[owner[i]]]
    found = [(i, s) for i, s in found if s is not None]
    return [i for i, _ in found], [s for _, s in found]


class ContrastiveObjective:
    """Stage 1: the summed NT-Xent losses of every enabled head (a joint model trains all at once).

    With `order_weight` > 0, every caption that states an order is also scored, against its own clip,
    with its order swapped (`order.swap_order`), and a two-way softmax per head asks for the right order.
    """

    def __init__(self, model: RetrievalModel, tau: float, order_weight: float = 0.0,
                 order_heads: str = "all") -> None:
        self.model = model
        self.loss = NTXentLoss(tau)
        self.order_weight = order_weight
        self.order_heads = None if order_heads == "all" else {order_heads}
        self.order_loss = OrderLoss(tau)

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        scores, audio = _encode_both(self.model, batch)
        losses = {name: self.loss(s.float(), clip_keys(batch)) for name, s in scores.items()}
        total = sum(losses.values())
        report = {f"loss_{name}": float(v.detach()) for name, v in losses.items()}
        if self.order_weight > 0:
            index, swapped = order_negatives(batch)
            if index:
                caps = torch.tensor(index, device=self.model.device)
                rows = batch["caption_audio_index"].to(self.model.device)[caps]
                wrong = self.model.head_scores(self.model.encode_captions(swapped), _audio_rows(audio, rows))
                for name, s in scores.items():
                    if self.order_heads is not None and name not in self.order_heads:
                        continue
                    term = self.order_loss(s[caps, rows].float(), wrong[name].diagonal().float())
                    total = total + self.order_weight * term
                    report[f"order_{name}"] = float(term.detach())
        return total, report


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
    Teachers see the same crops and captions as the student, in eval mode, without gradients. A teacher may also be
    a `LinearModel` (spectral statistics and words, `hark linear`): its calibrated scores count as a prediction.
    """

    def __init__(self, model: RetrievalModel, teachers: Sequence[RetrievalModel | LinearModel], tau: float,
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
            if isinstance(teacher, LinearModel):  # its scores are calibrated to the same cosine scale
                members.append(teacher.batch_scores(batch).to(self.model.device))
                continue
            teacher.eval()
            scores = _encode(teacher, batch)
            members.append(prediction(teacher, scores))
        return torch.stack(members).mean(0)

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        # At kd_lambda 0 (the hard-loss baseline of a distillation comparison) the teachers' scores are unused. With
        # three tiny teachers that baseline's epochs took 250 s against about 60 s for the same epoch in `train`
        # (benchmarks/README.md, distillation), which is what it costs without them.
        teacher = self.teacher_scores(batch).to(self.model.device) if self.loss.kd_lambda > 0 else None
        scores = _encode(self.model, batch)
        losses = {name: self.loss(s.float(), teacher, clip_keys(batch)) for name, s in scores.items()}
        total = sum(losses.values())
        return total, {f"kd_{name}": float(v.detach()) for name, v in losses.items()}
