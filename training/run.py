"""Entry points behind `hark train` and `hark distill`: data, model, objective and loop put together."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ModelConfig
from .data.formats import Example, discover, load_split  # noqa: F401  (load_split: re-exported)
from .frontend import MEL_FIELDS
from .linear import LinearModel, is_linear_model
from .loop import RunResult, Trainer
from .model import CheckpointError, RetrievalModel, load_checkpoint, read_checkpoint, restore_model
from .objectives import ContrastiveObjective, DistillationObjective
from .towers import build_tokenizer

log = logging.getLogger(__name__)

TRAIN_SPLIT = "development"


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but CUDA is not available")
    return torch.device(name)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _prepare(cfg: ModelConfig, out_dir: Path, resume: bool, init: Path | None,
             captions: list[str], device: torch.device) -> tuple[RetrievalModel, dict[str, Any] | None]:
    """The model to train, and the last.pt payload to resume from (read once: it is the largest file)."""
    last = out_dir / "last.pt"
    if resume and last.is_file():
        payload = read_checkpoint(last)
        if payload["config"]["heads"] != cfg.to_dict()["heads"]:
            raise ValueError(f"{last} was trained with other heads; use another --out or --no-resume")
        return restore_model(payload, str(last)).to(device), payload
    if init is not None:
        model, _ = load_checkpoint(init)
        model.cfg.train = cfg.train
        return model.to(device), None
    _seed_everything(cfg.train.seed)
    tokenizer = build_tokenizer(cfg.text, captions)
    return RetrievalModel(cfg, tokenizer).to(device), None


def _run(cfg: ModelConfig, objective_factory, data_dirs: Sequence[str | Path], out_dir: Path, device: str,
         resume: bool, init: Path | None, progress: bool, stop_after_steps: int | None) -> RunResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    train = load_split(data_dirs, TRAIN_SPLIT)
    if not train:
        raise ValueError(f"no training examples (split '{TRAIN_SPLIT}') in {', '.join(map(str, data_dirs))}")
    val = load_split(data_dirs, cfg.train.val_split) if cfg.train.val_split else []
    captions = [c for ex in train for c in ex.captions]
    model, resume_from = _prepare(cfg, out_dir, resume, init, captions, dev)
    (out_dir / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))
    trainer = Trainer(model, objective_factory(model), train, val, model.cfg.train, out_dir,
                      progress=progress, stop_after_steps=stop_after_steps)
    if resume_from is not None:
        trainer.resume(resume_from)
    return trainer.fit()


def train(cfg: ModelConfig, data_dirs: Sequence[str | Path], out_dir: Path, device: str = "auto",
          resume: bool = True, progress: bool = True, stop_after_steps: int | None = None) -> RunResult:
    """Stage 1: contrastive training of every head the config enables."""
    def factory(model: RetrievalModel) -> ContrastiveObjective:
        t = model.cfg.train
        return ContrastiveObjective(model, t.tau, t.order_negatives, t.order_heads)

    return _run(cfg, factory, data_dirs, out_dir, device, resume, None, progress, stop_after_steps)


def load_teacher(path: Path, device: torch.device) -> RetrievalModel | LinearModel:
    """A distillation teacher: a checkpoint, or a linear model file (`.npz`, what `hark linear` writes)."""
    if is_linear_model(path):
        return LinearModel.load(path)
    model = load_checkpoint(path)[0].to(device)
    model.requires_grad_(False)
    return model


def distill(init: Path | None, teachers: Sequence[Path], data_dirs: Sequence[str | Path], out_dir: Path,
            overrides: Sequence[str] = (), device: str = "auto", resume: bool = True,
            progress: bool = True, config: ModelConfig | None = None) -> RunResult:
    """Stage 2: the student starts from its stage-1 checkpoint (`init`) and learns the teachers' averaged
    scores; with `init` None it starts from scratch as `config` describes (seeded like `train`), so that it can
    be compared with the same config trained on the hard loss alone."""
    if init is not None:
        student, _ = load_checkpoint(init)
        base = student.cfg
    elif config is not None:
        base = config
    else:
        raise ValueError("distill needs the student's stage-1 checkpoint or a config to start from scratch")
    cfg = base.with_overrides(list(overrides)) if overrides else base
    dev = pick_device(device)
    members = [load_teacher(path, dev) for path in teachers]
    if cfg.train.mel_cache:  # the teachers read the student's cached power: it must be theirs too
        mine = [getattr(cfg.audio, f) for f in MEL_FIELDS]
        for path, member in zip(teachers, members, strict=True):
            audio = member.audio if isinstance(member, LinearModel) else vars(member.cfg.audio)
            if [audio[f] for f in MEL_FIELDS] != mine:
                raise CheckpointError(f"teacher {path} has another mel front end than the student; distill "
                                      "without train.mel_cache")

    def factory(model: RetrievalModel) -> DistillationObjective:
        return DistillationObjective(model, members, model.cfg.train.tau, model.cfg.train.kd_lambda)

    return _run(cfg, factory, data_dirs, out_dir, device, resume, init, progress, None)
