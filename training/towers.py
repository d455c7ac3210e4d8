"""The two encoders: PaSST over 10 s audio segments (hear21passt) and RoBERTa over captions (transformers)."""

from __future__ import annotations

import contextlib
import io
import logging
import math
from pathlib import Path

import torch
from torch import nn

from hark.errors import HarkError
from hark.text import TextTokenizer

from .config import AudioConfig, TextConfig
from .frontend import MelFrontEnd

log = logging.getLogger(__name__)

# PaSST's positional embeddings are sized for this many mel frames per 10 s segment.
PASST_FRAMES = 998


class ModelLoadError(HarkError, RuntimeError):
    """Weights or model folders that cannot be loaded (missing, offline, mismatched)."""


def _quiet():
    """hear21passt prints the whole network and per-call shapes to stdout; keep the console readable."""
    return contextlib.redirect_stdout(io.StringIO())


def build_passt(cfg: AudioConfig) -> nn.Module:
    from hear21passt.models import passt as passt_module

    passt_module.first_RUN = False
    if cfg.init == "random":
        return passt_module.PaSST(
            img_size=(cfg.n_mels, PASST_FRAMES), patch_size=cfg.patch, stride=cfg.stride, in_chans=1,
            num_classes=0, embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
            distilled=True, s_patchout_t=cfg.patchout_t, s_patchout_f=cfg.patchout_f,
        )
    # "none" rebuilds the architecture without weights, for restoring a hark checkpoint offline.
    pretrained = cfg.init == "pretrained"
    with _quiet():
        try:
            net = passt_module.get_model(
                arch=cfg.arch, pretrained=pretrained, n_classes=527, fstride=cfg.stride,
                tstride=cfg.stride, input_fdim=cfg.n_mels, input_tdim=PASST_FRAMES,
                s_patchout_t=cfg.patchout_t, s_patchout_f=cfg.patchout_f,
            )
        except (OSError, RuntimeError, ValueError) as exc:
            if pretrained:
                raise ModelLoadError(
                    f"could not load hear21passt weights for '{cfg.arch}' ({exc}). Offline? Download the "
                    "checkpoint elsewhere and pass audio.init=/path/to/checkpoint.pt, or audio.init=random"
                ) from exc
            raise ModelLoadError(f"unknown PaSST architecture '{cfg.arch}': {exc}") from exc
    if not pretrained and cfg.init != "none":
        load_passt_checkpoint(net, Path(cfg.init))
    return net


def load_passt_checkpoint(net: nn.Module, path: Path) -> None:
    """Load a hear21passt release checkpoint, a plain PaSST state dict, or the audio tower of a hark checkpoint."""
    if not path.is_file():
        raise ModelLoadError(f"audio checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a PyTorch checkpoint ({exc})") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = {k[len("audio.net."):]: v for k, v in state["model"].items() if k.startswith("audio.net.")}
    elif isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("net."): v for k, v in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    important = [k for k in missing if not k.startswith("head")]
    if important:
        raise ModelLoadError(f"{path}: checkpoint does not fit the PaSST config; missing {important[:5]}")
    if unexpected:
        log.info("ignored %d unexpected keys in %s", len(unexpected), path)


class AudioTower(nn.Module):
    """Waveform -> one embedding per 10 s segment (mean of PaSST's class and distillation tokens)."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.frontend = MelFrontEnd(cfg)
        self.net = build_passt(cfg)
        self.dim = cfg.embed_dim
        self.segment_samples = round(cfg.segment_seconds * cfg.sample_rate)

    def embed_segments(self, segments: torch.Tensor) -> torch.Tensor:
        """[S, segment_samples] -> [S, dim]."""
        # 10 s give 1000 frames; the 16-stride patch grid covers the same 62 columns of 998 (PaSST's size).
        mel = self.frontend(segments)[:, :, :PASST_FRAMES]
        feats = self.net.forward_features(mel[:, None])
        if isinstance(feats, tuple):
            return (feats[0] + feats[1]) / 2
        return feats

    def segment(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut [B, T] into [B, M, segment_samples] zero-padded segments and their validity mask [B, M]."""
        seg = self.segment_samples
        count = min(self.cfg.max_segments, max(1, math.ceil(wave.shape[1] / seg)))
        total = count * seg
        if wave.shape[1] < total:
            wave = nn.functional.pad(wave, (0, total - wave.shape[1]))
        wave = wave[:, :total].reshape(wave.shape[0], count, seg)
        starts = torch.arange(count, device=lengths.device) * seg
        mask = starts[None, :] < lengths[:, None]
        mask[:, 0] = True  # an (invalid) empty clip still gets one, silent, segment
        return wave, mask

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T] waveform and lengths in samples -> segment embeddings [B, M, dim] and mask [B, M]."""
        segments, mask = self.segment(wave, lengths)
        out = segments.new_zeros(mask.shape[0], mask.shape[1], self.dim)
        # Only segments that hold audio go through the transformer.
        out[mask] = self.embed_segments(segments[mask]).to(out.dtype)
        return out, mask


def _load_hf_tokenizer(folder: str) -> TextTokenizer:
    path = Path(folder)
    if (path / "tokenizer.json").is_file():
        return TextTokenizer.from_file(path / "tokenizer.json")
    try:
        from transformers import AutoTokenizer

        fast = AutoTokenizer.from_pretrained(folder, use_fast=True)
    except Exception as exc:
        raise ModelLoadError(f"could not load a tokenizer for '{folder}' ({exc}). Offline? Point "
                             "text.model at a local model folder, or set text.tokenizer") from exc
    return TextTokenizer.from_json(fast.backend_tokenizer.to_str())


def build_tokenizer(cfg: TextConfig, captions: list[str] | None = None) -> TextTokenizer:
    """The tokenizer a text config asks for: a file, the model folder's own, or a BPE trained on captions."""
    from hark.text import train_bpe_tokenizer

    if cfg.tokenizer:
        tok = TextTokenizer.from_file(cfg.tokenizer)
    elif cfg.model == "random":
        if not captions:
            raise ModelLoadError("text.model=random needs captions to train its tokenizer, or text.tokenizer")
        tok = train_bpe_tokenizer(captions, cfg.vocab_size)
    else:
        tok = _load_hf_tokenizer(cfg.model)
    tok.max_tokens = cfg.max_tokens
    tok.tokenizer.enable_truncation(max_length=cfg.max_tokens)
    return tok


class TextTower(nn.Module):
    """Token ids -> contextual token embeddings [B, L, hidden]; token 0 is the sentence embedding."""

    def __init__(self, cfg: TextConfig, vocab_size: int, hf_config: dict | None = None) -> None:
        super().__init__()
        from transformers import RobertaConfig, RobertaModel

        if hf_config is not None:
            # Restoring a checkpoint: the architecture comes from the checkpoint, the weights follow.
            self.net = RobertaModel(RobertaConfig.from_dict(hf_config), add_pooling_layer=False)
        elif cfg.model == "random":
            hf_cfg = RobertaConfig(
                vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                max_position_embeddings=cfg.max_tokens + 2, pad_token_id=1, bos_token_id=0,
                eos_token_id=2, type_vocab_size=1,
            )
            self.net = RobertaModel(hf_cfg, add_pooling_layer=False)
        else:
            try:
                self.net = RobertaModel.from_pretrained(cfg.model, add_pooling_layer=False)
            except Exception as exc:
                raise ModelLoadError(
                    f"could not load RoBERTa from '{cfg.model}' ({exc}). Offline? Download the model folder "
                    "elsewhere and pass text.model=/path/to/folder, or text.model=random"
                ) from exc
        self.dim = self.net.config.hidden_size

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=ids, attention_mask=mask).last_hidden_state
