"""The retrieval model: shared towers plus the heads a config enables, and its checkpoint format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hark.text import TextTokenizer

from .config import ModelConfig
from .heads import CosineHead, CrossModalAttentionHead
from .towers import AudioTower, TextTower

CHECKPOINT_FORMAT = 1


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
                                    h.compare_to)
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
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "tokenizer": self.tokenizer.to_json(),
            "text_hf_config": self.text.net.config.to_dict(),
            "model": self.state_dict(),
        }


def restore_model(payload: dict[str, Any], source: str = "checkpoint") -> RetrievalModel:
    """Rebuild a model from a checkpoint payload without downloading anything."""
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{source}: unsupported checkpoint format {payload.get('format')!r}")
    cfg = ModelConfig.from_dict(payload["config"], source)
    if cfg.audio.init != "random":
        cfg.audio.init = "none"  # architecture only; the weights come from the checkpoint
    tokenizer = TextTokenizer.from_json(payload["tokenizer"], cfg.text.max_tokens)
    model = RetrievalModel(cfg, tokenizer, payload["text_hf_config"])
    model.load_state_dict(payload["model"])
    return model


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[RetrievalModel, dict[str, Any]]:
    """A trained model and the rest of its checkpoint (epoch, metrics, ...)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").is_file() else path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise ValueError(f"{path}: not a hark checkpoint")
    model = restore_model(payload, str(path))
    model.eval()
    return model, payload
