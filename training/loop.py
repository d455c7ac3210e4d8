"""The training loop: batches, schedule, mixed precision, accumulation, checkpoints, resume, logging.

Resuming is exact: batch order and crops depend only on (seed, epoch, position), and the checkpoint
carries model, optimiser, scheduler and RNG states, so an interrupted run that resumes ends where an
uninterrupted one would.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from .config import TrainConfig
from .data.dataset import AudioCaptionDataset, Augment, collate, load_clips, mix_batch
from .data.formats import Example
from .evaluate import score_split, split_metrics
from .model import CheckpointError, RetrievalModel, read_checkpoint

log = logging.getLogger(__name__)


class SpecMasker:
    """SpecAugment-style masking as a forward hook on the mel front end's log step, in training mode only.

    Each segment's [n_mels, frames] image gets `freq_masks` bands of up to `freq_width` mel bins and
    `time_masks` spans of up to `time_width` frames set to zero (about the normalised mel's mean). The masks
    draw from torch's global RNG, whose state last.pt carries, so a resumed run draws the same masks.
    """

    def __init__(self, freq_masks: int, freq_width: int, time_masks: int, time_width: int) -> None:
        self.freq = (freq_masks, freq_width)
        self.time = (time_masks, time_width)

    @property
    def active(self) -> bool:
        return bool(self.freq[0] * self.freq[1] or self.time[0] * self.time[1])

    @staticmethod
    def _mask(size: int, rows: int, count: int, width: int, device: torch.device) -> torch.Tensor:
        """[rows, size] bool: True where one of `count` random spans of width 0..width falls."""
        pos = torch.arange(size, device=device)
        out = torch.zeros(rows, size, dtype=torch.bool, device=device)
        for _ in range(count):
            w = torch.randint(0, width + 1, (rows, 1), device=device)
            start = (torch.rand(rows, 1, device=device) * (size - w + 1)).long()
            out |= (pos >= start) & (pos < start + w)
        return out

    def __call__(self, module: torch.nn.Module, _inputs: Any, mel: torch.Tensor) -> torch.Tensor | None:
        if not module.training or not self.active:
            return None
        rows, n_mels, frames = mel.shape
        drop = self._mask(n_mels, rows, *self.freq, mel.device)[:, :, None]
        drop = drop | self._mask(frames, rows, *self.time, mel.device)[:, None, :]
        return mel.masked_fill(drop, 0.0)


class ClipPower:
    """A whole clip's mel power on the CPU, for `train.mel_cache` (a copy of the front end: picklable for
    DataLoader workers, and off the GPU that trains)."""

    def __init__(self, frontend: torch.nn.Module) -> None:
        self.frontend = copy.deepcopy(frontend).cpu().eval()

    def __call__(self, wave: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.frontend.clip_power(torch.from_numpy(wave)[None])[0]


class EpochBatches(Sampler[list[int]]):
    """Full batches of a permutation seeded by (seed, epoch), starting at batch `start` (for resume)."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return max(0, self.size // self.batch_size - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=gen).tolist()
        full = self.size // self.batch_size
        for b in range(self.start, full):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]


def expand_pairs(examples: Sequence[Example], mode: str) -> list[Example]:
    """One training item per caption ("captions") or per clip with a random caption ("audio")."""
    if mode == "audio":
        return list(examples)
    return [Example(ex.audio_path, (c,), ex.audio_id, ex.source) for ex in examples for c in ex.captions]


def lr_factor(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine from lr to min_lr; as a multiple of cfg.lr."""
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    total = max(1, cfg.epochs * steps_per_epoch)
    progress = min(1.0, (step - warm) / total)
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors, lists and numbers, so that a weights_only load restores it."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@dataclass
class RunResult:
    out_dir: Path
    best_metric: float
    epochs_run: int
    history: list[dict[str, Any]]


class MetricsLog:
    """JSONL lines (always) and TensorBoard scalars (when tensorboard is installed)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def write(self, record: dict[str, Any], step: int) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in {"epoch", "step"}:
                    self.tb.add_scalar(key, value, step)
            self.tb.flush()


class Trainer:
    """Runs an objective over a training split, validating and checkpointing after every epoch."""

    def __init__(self, model: RetrievalModel, objective: Callable, train_examples: Sequence[Example],
                 val_examples: Sequence[Example], cfg: TrainConfig, out_dir: Path,
                 progress: bool = True, stop_after_steps: int | None = None) -> None:
        self.model, self.objective, self.cfg = model, objective, cfg
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        # Test hook: stop (as if killed) after this many optimiser steps in this process.
        self.stop_after_steps = stop_after_steps
        self.val_examples = list(val_examples)
        items = expand_pairs(train_examples, cfg.pairs_per_epoch)
        if len(items) < cfg.batch_size:
            raise ValueError(f"{len(items)} training pairs is fewer than one batch of {cfg.batch_size}; "
                             "lower train.batch_size or add data")
        self.dataset = AudioCaptionDataset(items, train=True, crop_seconds=cfg.crop_seconds,
                                           sample_rate=model.cfg.audio.sample_rate, seed=cfg.seed,
                                           # With mel_cache the power is kept instead of the audio.
                                           cache_size=len(train_examples) if cfg.cache_audio and not cfg.mel_cache
                                           else 0,
                                           augment=Augment(cfg.gain_db, cfg.shift_seconds, cfg.word_dropout),
                                           mel=ClipPower(model.audio.frontend) if cfg.mel_cache else None,
                                           hop=model.audio.hop)
        self.spec_masker = SpecMasker(cfg.spec_freq_masks, cfg.spec_freq_width, cfg.spec_time_masks,
                                      cfg.spec_time_width)
        self.sampler = EpochBatches(len(items), cfg.batch_size, cfg.seed)
        self.steps_per_epoch = len(items) // cfg.batch_size
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.steps_per_epoch // cfg.grad_accum or 1, cfg))
        self.device = model.device
        use_amp = cfg.amp and self.device.type == "cuda"
        self.amp_dtype = (torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16)
        self.use_amp = use_amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp and self.amp_dtype == torch.float16)
        self.log = MetricsLog(self.out_dir)
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.best = -math.inf  # no validation split: the best epoch is the one with the lowest loss
        self.history: list[dict[str, Any]] = []
        self._val_clips = None

    # -- checkpoints -------------------------------------------------------------------------------
    def model_state(self) -> dict[str, Any]:
        """best.pt: what export and evaluation need (weights, config, tokenizer) and the run's progress."""
        payload = self.model.checkpoint_payload()
        payload.update({"epoch": self.epoch, "global_step": self.global_step, "best": self.best,
                        "history": self.history})
        return payload

    def state(self) -> dict[str, Any]:
        """last.pt: best.pt's content plus what an exact resume needs (optimiser, schedule, RNGs, position)."""
        payload = self.model_state()
        payload.update({
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "batch_in_epoch": self.batch_in_epoch,
            "rng": _rng_state(),
        })
        return payload

    def save(self, name: str = "last.pt") -> Path:
        path = self.out_dir / name
        _atomic_save(self.state() if name == "last.pt" else self.model_state(), path)
        return path

    def resume(self, source: Path | dict[str, Any]) -> None:
        """Continue from last.pt (a path, or its payload already read by the caller)."""
        payload = read_checkpoint(source) if isinstance(source, (str, Path)) else source
        if "optimizer" not in payload:
            raise CheckpointError("cannot resume from a checkpoint without training state (a best.pt?); "
                                  "resume from the run's last.pt")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        self.epoch, self.batch_in_epoch = payload["epoch"], payload["batch_in_epoch"]
        self.global_step, self.best = payload["global_step"], payload["best"]
        self.history = payload["history"]
        _set_rng_state(payload["rng"])
        log.info("resumed at epoch %d, batch %d", self.epoch, self.batch_in_epoch)

    # -- the loop ----------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        self.dataset.set_epoch(self.epoch)
        # Its own generator: creating the iterator must not draw from the global RNG, or a resumed run
        # would see other dropout masks than an uninterrupted one.
        seeds = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.epoch)
        return DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=collate,
                          num_workers=self.cfg.num_workers, persistent_workers=False, generator=seeds)

    def validate(self) -> dict[str, float]:
        if not self.val_examples:
            return {}
        if self._val_clips is None:
            a = self.model.cfg.audio
            self._val_examples, clips, _ = load_clips(self.val_examples, a.sample_rate,
                                                      a.segment_seconds * a.max_segments)
            self._val_clips = clips
        split = score_split(self.model, self._val_examples, clips=self._val_clips, progress=False)
        out = {f"val_{k}": v for k, v in split_metrics(split).items()}
        for head in self.model.head_names:
            if len(self.model.head_names) > 1:
                out[f"val_{head}_mAP@10"] = split_metrics(split, head)["mAP@10"]
        return out

    def fit(self) -> RunResult:
        # The hook is only attached while fitting, so the trained model object carries no augmentation.
        hook = (self.model.audio.frontend.log.register_forward_hook(self.spec_masker)
                if self.spec_masker.active else None)
        try:
            return self._fit()
        finally:
            if hook is not None:
                hook.remove()

    def _mixed(self, batch: dict[str, Any]) -> dict[str, Any]:
        if not self.cfg.mix_fraction:
            return batch
        # Seeded by the batch's position, so a resumed run mixes the same rows.
        gen = torch.Generator().manual_seed((self.cfg.seed * 100_003 + self.epoch) * 10_007 + self.batch_in_epoch)
        return mix_batch(batch, self.cfg.mix_fraction, gen)

    def _fit(self) -> RunResult:
        total_epochs = self.cfg.warmup_epochs + self.cfg.epochs
        accum = max(1, self.cfg.grad_accum)
        steps_here = 0
        while self.epoch < total_epochs:
            self.model.train()
            bar = tqdm(self._loader(), total=len(self.sampler), disable=not self.progress,
                       desc=f"epoch {self.epoch + 1}/{total_epochs}", leave=False)
            sums: dict[str, float] = {}
            count = 0
            started = time.time()
            for batch in bar:
                if len(batch["captions"]) < 2:  # every file of the batch failed to decode
                    self.batch_in_epoch += 1
                    continue
                batch = self._mixed(batch)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                    loss, report = self.objective(batch)
                self.scaler.scale(loss / accum).backward()
                self.batch_in_epoch += 1
                if self.batch_in_epoch % accum == 0:
                    if self.cfg.grad_clip:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scheduler.step()
                    self.global_step += 1
                    steps_here += 1
                report["loss"] = float(loss.detach())
                for key, value in report.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
                bar.set_postfix(loss=f"{report['loss']:.3f}")
                if self.stop_after_steps is not None and steps_here >= self.stop_after_steps:
                    self.save()
                    return RunResult(self.out_dir, self.best, self.epoch, self.history)
            self.epoch += 1
            self.batch_in_epoch = 0
            record: dict[str, Any] = {"epoch": self.epoch, "step": self.global_step,
                                      "lr": self.optimizer.param_groups[0]["lr"],
                                      "seconds": round(time.time() - started, 2)}
            record.update({k: v / max(count, 1) for k, v in sums.items()})
            record.update(self.validate())
            self.history.append(record)
            self.log.write(record, self.global_step)
            metric = record.get("val_mAP@10", -record.get("loss", 0.0))
            improved = metric > self.best
            if improved:
                self.best = metric
            self.save()
            if improved:
                self.save("best.pt")
            if self.progress:
                shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
                tqdm.write(json.dumps(shown))
        return RunResult(self.out_dir, self.best, self.epoch, self.history)
