"""Model and training configuration: one dataclass per part, named configs as JSON data files.

A config file holds any subset of the fields; missing ones take the defaults below, which are the
report's values. `key=value` overrides on the command line address fields as `section.field`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hark.errors import HarkError

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(HarkError, ValueError):
    """A config file or override that cannot be used."""


@dataclass
class AudioConfig:
    # hear21passt architecture whose pretrained weights "pretrained" loads (patch 16, stride 16, PaSST-S).
    arch: str = "passt_s_p16_s16_128_ap468"
    # "pretrained" (hear21passt release weights), "random" (init from the fields below) or a .pt path. A
    # weights file decides the architecture: the fields below are adapted to it (logged at WARNING).
    init: str = "pretrained"
    # Lightning checkpoints holding both: "swa" (net_swa.*, the averaged weights) or "net" (net.*).
    weights: str = "swa"
    # Transformer width, depth and heads; used for "random", must match the weights otherwise.
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    # Patch size and stride over the mel image (frequency and time alike).
    patch: int = 16
    stride: int = 16
    # Mel frames PaSST's time positional embedding spans (998 = 10 s; 2000/3000 for the 20 s/30 s releases).
    frames: int = 998
    # Structured patchout in training: time columns and frequency rows dropped per step.
    patchout_t: int = 0
    patchout_f: int = 0
    # Mel front end (hear21passt's, without augmentation at inference).
    sample_rate: int = 32000
    n_mels: int = 128
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 320
    fmin: float = 0.0
    fmax: float = 15000.0
    # Audio is cut into segments of this length; one embedding per segment.
    segment_seconds: float = 10.0
    # At most this many segments per clip (30 s crops in training; window length at ingest).
    max_segments: int = 3
    # Moments: ingestion also embeds sub-windows this long (one every moment_seconds, no overlap) into the
    # cosine head's space, so a hit can say where in its window the query matches. 0 turns them off.
    moment_seconds: float = 2.0


@dataclass
class TextConfig:
    # Hugging Face model folder or hub name ("roberta-large"), or "random" to init from the fields below.
    model: str = "roberta-large"
    # tokenizer.json path; empty means the model folder's own, or a BPE trained on the captions for "random".
    tokenizer: str = ""
    # Vocabulary size of a trained BPE for random init.
    vocab_size: int = 1000
    # Width, depth, heads and feed-forward width for random init.
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    # Captions are truncated to this many tokens (special tokens included).
    max_tokens: int = 32


@dataclass
class HeadsConfig:
    # Bi-encoder head: projections to the joint space, L2-normalised, cosine score.
    cosine: bool = True
    # Cross-modal attention head: "none", "sentence" (first token only) or "full" (all tokens).
    attention: str = "none"
    # Joint embedding dimension d.
    dim: int = 1024
    # Attention heads of the cross-modal head.
    attention_heads: int = 8
    # What H is compared with in eq. 7: "text" (the text embeddings T, needs d_text == d) or
    # "query" (the projected queries Q = Wq T, for towers narrower or wider than d).
    compare_to: str = "text"
    # Time positions of the attention head's segments: "none" (position-free across segments, as in the
    # report) or "learned" (a vector per segment index up to audio.max_segments, added to the segment
    # embeddings before the key/value projections; positions restart at 0 in every window).
    positions: str = "none"
    # Weights of the fused score at serving time: cosine and attention parts.
    fusion_cosine: float = 1.0
    fusion_attention: float = 1.0
    # Weight of the order term at serving time (needs moments): a caption that states an order ("A, then B")
    # gains weight x the agreement of its events' times in a hit's moments (hark.moments.order_agreement, in
    # [-1, 1]). 0.2: the smallest weight within one mAP@10 point of the best on variant a's validation split
    # (benchmarks/README.md "Order through moments").
    fusion_order: float = 0.2


@dataclass
class TrainConfig:
    # Peak and final learning rate of the cosine schedule (Adam).
    lr: float = 2e-5
    min_lr: float = 1e-7
    # Linear warm-up epochs, then cosine annealing over `epochs` epochs.
    warmup_epochs: int = 1
    epochs: int = 10
    # (caption, audio) pairs per optimiser step, before gradient accumulation.
    batch_size: int = 128
    grad_accum: int = 1
    # NT-Xent temperature (fixed, not learned).
    tau: float = 0.05
    # Distillation: weight of the soft-target loss against the hard contrastive loss.
    kd_lambda: float = 1.0
    # Random crop length of training audio.
    crop_seconds: float = 30.0
    # Mixed precision (bf16/fp16 autocast) where CUDA is present.
    amp: bool = True
    # Gradient norm clip; 0 disables.
    grad_clip: float = 0.0
    seed: int = 0
    # DataLoader worker processes.
    num_workers: int = 0
    # Keep decoded training audio in memory (small corpora).
    cache_audio: bool = False
    # Compute each training clip's mel power once and cut crops, gain and delay from it (bfloat16 in memory,
    # about 256 KB per 10 s of audio at 128 mels: small corpora). The front end was 84% of a tiny model's CPU
    # step; validation and export keep the waveform path. Not with mix_fraction (waveform mixing).
    mel_cache: bool = False
    # Validation split used to pick the best checkpoint (by mAP@10).
    val_split: str = "validation"
    # Caption pairs drawn per epoch: "captions" (every caption once) or "audio" (one per clip).
    pairs_per_epoch: str = "captions"
    # Small-data augmentation (all off by default: the report's recipe). SpecAugment-style masks on the
    # training log-mel: how many frequency bands / time spans per segment, each up to this many mel bins /
    # frames wide (masked to zero, the normalised mel's mean).
    spec_freq_masks: int = 0
    spec_freq_width: int = 0
    spec_time_masks: int = 0
    spec_time_width: int = 0
    # Random gain of each training clip, uniform in +-gain_db decibels.
    gain_db: float = 0.0
    # Random delay: up to this many seconds of silence before each training clip (order is kept, unlike a
    # circular shift, which would move the end of "A, then B" before A).
    shift_seconds: float = 0.0
    # Share of each batch's rows whose audio is mixed with another row's, captions joined by "and".
    mix_fraction: float = 0.0
    # Probability of dropping each caption word (never order words such as "then", "before", "after").
    word_dropout: float = 0.0
    # Order-aware training: a caption that states an order ("A, then B") also scores its clip against its
    # swapped caption ("B, then A", `hark.order`); this weight times a two-way softmax loss (per
    # head, temperature tau) pushes the right order above the swapped one. 0 disables.
    order_negatives: float = 0.0
    # Which heads the order term trains: "all", or "attention" only (the cosine head pools the segments,
    # so it hears order only inside one segment).
    order_heads: str = "all"


@dataclass
class ModelConfig:
    name: str = "custom"
    audio: AudioConfig = field(default_factory=AudioConfig)
    text: TextConfig = field(default_factory=TextConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> ModelConfig:
        sections = {"audio": AudioConfig, "text": TextConfig, "heads": HeadsConfig, "train": TrainConfig}
        unknown = set(data) - set(sections) - {"name", "description"}
        if unknown:
            raise ConfigError(f"{source}: unknown config section(s) {sorted(unknown)}")
        kwargs: dict[str, Any] = {"name": data.get("name", "custom")}
        for key, kind in sections.items():
            values = data.get(key, {})
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section '{key}' must be an object")
            names = {f.name for f in dataclasses.fields(kind)}
            bad = set(values) - names
            if bad:
                raise ConfigError(f"{source}: unknown field(s) in '{key}': {sorted(bad)}")
            kwargs[key] = kind(**_typed(kind, key, values, source))
        config = cls(**kwargs)
        config.validate(source)
        return config

    def validate(self, source: str = "config") -> None:
        from hark.manifest import NAME_PATTERN

        # The name becomes the bundle's model name, which a manifest requires to be a slug (registry folders).
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ConfigError(f"{source}: name {self.name!r} must be 1-64 letters, digits, '.', '_' or '-' "
                              "(it names the model bundle), starting with a letter or digit")
        if self.audio.weights not in {"swa", "net"}:
            raise ConfigError(f"{source}: audio.weights must be swa or net")
        if self.heads.attention not in {"none", "sentence", "full"}:
            raise ConfigError(f"{source}: heads.attention must be none, sentence or full")
        if not self.heads.cosine and self.heads.attention == "none":
            raise ConfigError(f"{source}: at least one head (cosine or attention) must be enabled")
        if self.heads.dim % self.heads.attention_heads:
            raise ConfigError(f"{source}: heads.dim must be divisible by heads.attention_heads")
        if self.heads.positions not in {"none", "learned"}:
            raise ConfigError(f"{source}: heads.positions must be none or learned")
        if self.heads.compare_to not in {"text", "query"}:
            raise ConfigError(f"{source}: heads.compare_to must be text or query")
        if self.train.pairs_per_epoch not in {"captions", "audio"}:
            raise ConfigError(f"{source}: train.pairs_per_epoch must be captions or audio")
        t = self.train
        if min(t.spec_freq_masks, t.spec_freq_width, t.spec_time_masks, t.spec_time_width) < 0:
            raise ConfigError(f"{source}: train.spec_* mask counts and widths must be >= 0")
        if t.gain_db < 0 or t.shift_seconds < 0:
            raise ConfigError(f"{source}: train.gain_db and train.shift_seconds must be >= 0")
        if t.mel_cache and t.mix_fraction > 0:
            raise ConfigError(f"{source}: train.mel_cache cannot be combined with train.mix_fraction (mixing adds "
                              "waveforms)")
        if not (0.0 <= t.mix_fraction <= 1.0 and 0.0 <= t.word_dropout < 1.0):
            raise ConfigError(f"{source}: train.mix_fraction must be in [0, 1] and train.word_dropout in [0, 1)")
        a = self.audio
        if a.moment_seconds < 0:
            raise ConfigError(f"{source}: audio.moment_seconds must be >= 0 (0: no moments)")
        if self.heads.fusion_order < 0:
            raise ConfigError(f"{source}: heads.fusion_order must be >= 0 (0: no order term)")
        if t.order_negatives < 0:
            raise ConfigError(f"{source}: train.order_negatives must be >= 0")
        if t.order_heads not in {"all", "attention"}:
            raise ConfigError(f"{source}: train.order_heads must be all or attention")
        if self.train.batch_size < 2:
            raise ConfigError(f"{source}: train.batch_size must be at least 2 for a contrastive loss")
        for section, names in _POSITIVE.items():
            for name in names:
                if getattr(getattr(self, section), name) <= 0:
                    raise ConfigError(f"{source}: {section}.{name} must be > 0")
        for section in ("audio", "text", "heads", "train"):
            for f in dataclasses.fields(getattr(self, section)):
                value = getattr(getattr(self, section), f.name)
                if (isinstance(value, int | float) and not isinstance(value, bool) and value < 0
                        and f"{section}.{f.name}" not in _SIGNED):
                    raise ConfigError(f"{source}: {section}.{f.name} must be >= 0")
        if a.fmax <= a.fmin:
            raise ConfigError(f"{source}: audio.fmax must be above audio.fmin")

    def with_overrides(self, overrides: list[str]) -> ModelConfig:
        """Apply `section.field=value` strings; values parse as JSON, else stay strings."""
        data = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override '{item}' is not of the form section.field=value")
            key, raw = item.split("=", 1)
            parts = key.strip().split(".")
            if len(parts) == 1 and parts[0] == "name":
                data["name"] = raw
                continue
            if len(parts) != 2 or parts[0] not in data or not isinstance(data[parts[0]], dict):
                raise ConfigError(f"override '{item}': expected section.field with section in "
                                  "audio, text, heads, train")
            if parts[1] not in data[parts[0]]:
                raise ConfigError(f"override '{item}': no field '{parts[1]}' in section '{parts[0]}'")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            current = data[parts[0]][parts[1]]
            if isinstance(current, bool) and isinstance(value, str):
                value = value.lower() in {"1", "true", "yes", "on"}
            elif isinstance(current, float) and isinstance(value, int):
                value = float(value)
            elif isinstance(current, str) and not isinstance(value, str):
                value = raw
            data[parts[0]][parts[1]] = value
        return ModelConfig.from_dict(data, "overrides")


# Sizes, counts and rates that must be positive (the rest of the numbers must be >= 0, but for _SIGNED).
_POSITIVE = {
    "audio": ("embed_dim", "depth", "num_heads", "patch", "stride", "frames", "sample_rate", "n_mels", "n_fft",
              "win_length", "hop_length", "fmax", "segment_seconds", "max_segments"),
    "text": ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_tokens"),
    "heads": ("dim", "attention_heads"),
    "train": ("lr", "epochs", "batch_size", "grad_accum", "tau", "crop_seconds"),
}
_SIGNED = {"train.seed"}


def _typed(kind: type, section: str, values: dict[str, Any], source: str) -> dict[str, Any]:
    """`values` checked against the field types of `kind` (read from its defaults): an override like
    `train.epochs=abc` failed deep inside training with a TypeError, and `true` passed as an int."""
    defaults = kind()
    out = {}
    for name, value in values.items():
        expected = type(getattr(defaults, name))
        where = f"{source}: {section}.{name}"
        if expected is bool:
            ok = isinstance(value, bool)
        elif expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif expected is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if ok and not math.isfinite(value):
                raise ConfigError(f"{where} must be a finite number, not {value!r}")
            value = float(value) if ok else value
        else:
            ok = isinstance(value, expected)
        if not ok:
            raise ConfigError(f"{where} must be {_TYPE_NAMES.get(expected, expected.__name__)}, not {value!r}")
        out[name] = value
    return out


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def named_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.json"))}


def describe_config(path: Path) -> str:
    try:
        return json.loads(path.read_text()).get("description", "")
    except (OSError, json.JSONDecodeError):
        return ""


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> ModelConfig:
    """A named config (see `hark configs`) or a JSON file, with optional overrides applied."""
    path = Path(name_or_path)
    configs = named_configs()
    if str(name_or_path) in configs:
        path = configs[str(name_or_path)]
    elif not path.is_file():
        raise ConfigError(f"no config named '{name_or_path}' and no such file; named configs: "
                          f"{', '.join(configs)}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a config (a JSON text file); is it a checkpoint?") from None
    except (OSError, RecursionError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a JSON object")
    data.setdefault("name", path.stem)
    config = ModelConfig.from_dict(data, str(path))
    return config.with_overrides(overrides) if overrides else config
