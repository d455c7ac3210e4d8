"""The retrieval model: shared towers plus the heads a config enables, and its checkpoint format."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hark.errors import HarkError
from hark.text import TextTokenizer

from .config import ModelConfig
from .heads import CosineHead, CrossModalAttentionHead
from .towers import AudioTower, TextTower, hf_config_dict

# 2: loadable with torch.load(weights_only=True); best.pt without, last.pt with the training state.
CHECKPOINT_FORMAT = 2
# Training progress kept in best.pt too (evaluation and export report it).
PROGRESS_KEYS = ("epoch", "global_step", "best", "history")


@dataclass
class AudioEncoding:
    segments: torch.Tensor  # [B, M, Da]
    mask: torch.Tensor  # [B, M] bool
    global_: torch.Tensor | None  # [B, d] (cosine head)
    state: dict[str, torch.Tensor] | None  # attention-head clip tensors


@dataclass
class TextEncoding:
    tokens: torch.Tensor  # [B, L, Dt]
    mask: torch.Tensor  # [B, L]
    global_: torch.Tensor | None
    state: dict[str, torch.Tensor] | None


class RetrievalModel(nn.Module):
    def __init__(self, cfg: ModelConfig, tokenizer: TextTokenizer, text_hf_config: dict | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.audio = AudioTower(cfg.audio)
        self.text = TextTower(cfg.text, tokenizer.vocab_size, text_hf_config)
        h = cfg.heads
        self.cosine = CosineHead(self.audio.dim, self.text.dim, h.dim) if h.cosine else None
        self.attention = (
            CrossModalAttentionHead(self.audio.dim, self.text.dim, h.dim, h.attention_heads, h.attention,
                                    h.compare_to,
                                    positions=cfg.audio.max_segments if h.positions == "learned" else 0)
            if h.attention != "none" else None
        )

    @property
    def head_names(self) -> list[str]:
        return [name for name in ("cosine", "attention") if getattr(self, name) is not None]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode_audio(self, wave: torch.Tensor, lengths: torch.Tensor) -> AudioEncoding:
        segments, mask = self.audio(wave, lengths)
        return self.audio_heads(segments, mask)

    def encode_audio_power(self, power: torch.Tensor, frames: torch.Tensor) -> AudioEncoding:
        """`encode_audio` from cached mel power (`train.mel_cache`; see AudioTower.forward_power)."""
        return self.audio_heads(*self.audio.forward_power(power, frames))

    def audio_heads(self, segments: torch.Tensor, mask: torch.Tensor) -> AudioEncoding:
        glob = self.cosine.audio(segments, mask) if self.cosine is not None else None
        state = self.attention.audio_state(segments, mask) if self.attention is not None else None
        return AudioEncoding(segments, mask, glob, state)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> TextEncoding:
        tokens = self.text(ids, mask)
        glob = self.cosine.text(tokens, mask) if self.cosine is not None else None
        state = self.attention.text_state(tokens, mask) if self.attention is not None else None
        return TextEncoding(tokens, mask, glob, state)

    def encode_captions(self, captions: list[str]) -> TextEncoding:
        ids, mask = self.tokenizer.encode(captions)
        return self.encode_text(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device))

    def head_scores(self, text: TextEncoding, audio: AudioEncoding) -> dict[str, torch.Tensor]:
        """Each enabled head's [T, A] score matrix (cosines in [-1, 1])."""
        out = {}
        if self.cosine is not None:
            out["cosine"] = text.global_ @ audio.global_.T
        if self.attention is not None:
            out["attention"] = self.attention.scores(text.state, audio.state)
        return out

    def fuse(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """The serving score: the manifest's fusion weights over the available heads."""
        weights = {"cosine": self.cfg.heads.fusion_cosine, "attention": self.cfg.heads.fusion_attention}
        return sum(weights[name] * s for name, s in scores.items())

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint_payload(self) -> dict[str, Any]:
        """What export, evaluation and --init need (best.pt); plain values only, so weights_only loads it."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "tokenizer": self.tokenizer.to_json(),
            "text_hf_config": hf_config_dict(self.text.net),
            "model": self.state_dict(),
        }


class CheckpointError(HarkError, ValueError):
    """A checkpoint that cannot be read (missing, foreign, or written by an older hark)."""


# Keys of the AudioSet classifier that checkpoints from before format 2 carried (hark never used them).
_LEGACY_KEYS = ("audio.net.head.1.", "audio.net.head_dist.")


def restore_model(payload: dict[str, Any], source: str = "checkpoint", assign: bool = False) -> RetrievalModel:
    """Rebuild a model from a checkpoint payload without downloading anything.

    `assign` adopts the payload's tensors as the parameters instead of copying them (for a memory-mapped
    payload: no second copy of the weights in memory).
    """
    if payload.get("format") not in {1, CHECKPOINT_FORMAT}:
        raise CheckpointError(f"{source}: unsupported checkpoint format {payload.get('format')!r}")
    cfg = ModelConfig.from_dict(payload["config"], source)
    if cfg.audio.init != "random":
        cfg.audio.init = "none"  # architecture only; the weights come from the checkpoint
    tokenizer = TextTokenizer.from_json(payload["tokenizer"], cfg.text.max_tokens)
    model = RetrievalModel(cfg, tokenizer, payload["text_hf_config"])
    state = {k: v for k, v in payload["model"].items() if not k.startswith(_LEGACY_KEYS)}
    model.load_state_dict(state, assign=assign)
    return model


def _resave_hint(path: Path) -> str:
    return (f"retrain, or (only if you trust the file) re-save it: python -c \"from hark.training.model import "
            f"resave_checkpoint; resave_checkpoint('{path}', '{path.with_name(path.stem + '-v2.pt')}')\"")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = True) -> dict[str, Any]:
    """A hark checkpoint's payload, read safely (weights_only=True), memory-mapped where it stays on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    mmap = mmap and torch.device(map_location).type == "cpu"
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: holds pickled Python objects (written by hark before checkpoint format "
                              f"{CHECKPOINT_FORMAT}, or not by hark); {_resave_hint(path)}") from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise CheckpointError(f"{path}: not a hark checkpoint")
    return payload


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[RetrievalModel, dict[str, Any]]:
    """A trained model and the rest of its checkpoint (epoch, metrics, ...).

    A run folder means its best.pt (else last.pt). On the CPU the file is memory-mapped and the model adopts
    its tensors, so loading takes about one copy of the weights, never the optimiser state of a last.pt.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").is_file() else path / "last.pt"
    payload = read_checkpoint(path, map_location)
    model = restore_model(payload, str(path), assign=True)
    model.eval()
    return model, payload


def resave_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Rewrite a checkpoint of an older hark as a current best.pt-style file (weights, config, tokenizer).

    The source is unpickled without the weights_only guard: run this only on files you trust.
    """
    old = torch.load(Path(src), map_location="cpu", weights_only=False)
    if not isinstance(old, dict) or "model" not in old or "config" not in old:
        raise CheckpointError(f"{src}: not a hark checkpoint")
    hf = old.get("text_hf_config")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": json.loads(json.dumps(old["config"])),
        "tokenizer": str(old["tokenizer"]),
        "text_hf_config": json.loads(json.dumps(hf, default=str)) if hf is not None else None,
        "model": {k: v for k, v in old["model"].items() if not k.startswith(_LEGACY_KEYS)},
    }
    payload.update({k: json.loads(json.dumps(old[k])) for k in PROGRESS_KEYS if k in old})
    dst = Path(dst)
    torch.save(payload, dst)
    return dst
