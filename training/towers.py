"""The two encoders: PaSST over 10 s audio segments (hear21passt) and RoBERTa over captions (transformers).

Pretrained weights come from local files in the layouts their publishers use. PaSST's architecture (patch
stride, positional-embedding grid, width, depth) is read from the checkpoint itself and the audio config is
adapted to it, so hear21passt's stride-10 release loads with the default config. Hub names ("roberta-large",
audio.init=pretrained) fail at once, with the local path to pass, when the machine is offline.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import pickle
import socket
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from hark.errors import HarkError
from hark.text import TextTokenizer

from .config import AudioConfig, TextConfig
from .frontend import MelFrontEnd

log = logging.getLogger(__name__)

# PaSST's positional embeddings of the 10 s releases are sized for this many mel frames (hop 320 at 32 kHz).
PASST_FRAMES = 998
# hear21passt's get_model() architecture names -> (its default_cfgs key, STFT hop in samples at 32 kHz).
# The release file of each is the last part of default_cfgs[key]["url"].
PASST_RELEASES: dict[str, tuple[str, int]] = {
    "passt_s_p16_s16_128_ap468": ("passt_s_p16_s16_128_ap468", 320),
    "passt_s_swa_p16_128_ap476": ("passt_s_swa_p16_128_ap476", 320),
    "passt_s_kd_p16_128_ap486": ("passt_s_kd_p16_128_ap486", 320),
    "passt_l_kd_p16_128_ap47": ("passt_l_kd_p16_128_ap47", 320),
    "passt_b_f128_p16_s16_ap_459": ("passt_b_f128_p16_s16_ap_459", 320),
    "passt_u600_f128_p16_s16_ap_460": ("passt_u600_f128_p16_s16_ap_460", 320),
    "passt_20sec": ("passt-s-f128-20sec-p16-s10-ap474-swa", 320),
    "passt_30sec": ("passt-s-f128-30sec-p16-s10-ap473-swa", 320),
    "stfthop100": ("passt_s_swa_f128_stfthop100_p16_s10_ap473", 100),
    "stfthop160": ("passt_s_swa_f128_stfthop160_p16_s10_ap473", 160),
    "openmic": ("openmic_passt_s_f128_10sec_p16_s10_ap85", 320),
    "fsd50k": ("fsd50k_passt_s_f128_p16_s10_ap655", 320),
    "fsd50k-n": ("fsd50k_passt_s_n_f128_p16_s16_ap642", 320),
}
HF_HOST = "huggingface.co"
# How long a reachability check may take before the machine counts as offline.
NETWORK_CHECK_SECONDS = 1.5
_TRUE = {"1", "true", "yes", "on"}


class ModelLoadError(HarkError, RuntimeError):
    """Weights or model folders that cannot be loaded (missing, offline, mismatched)."""


# -- network ---------------------------------------------------------------------------------------

def offline_reason(url: str) -> str | None:
    """Why `url` cannot be fetched right now (offline settings, no DNS, no route), or None if it can.

    Answers within NETWORK_CHECK_SECONDS: a resolver without network can block for many seconds, so the
    lookup and connect run in a daemon thread that is abandoned when it takes too long.
    """
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"{name} is set"
    parts = urlparse(url if "://" in url else f"https://{url}")
    host, port = parts.hostname or url, parts.port or (80 if parts.scheme == "http" else 443)
    result: list[BaseException | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=NETWORK_CHECK_SECONDS).close()
            result.append(None)
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(NETWORK_CHECK_SECONDS + 0.5)
    if not result:
        return f"{host}:{port} did not answer within {NETWORK_CHECK_SECONDS:g} s"
    if result[0] is not None:
        return f"{host}:{port} is not reachable ({result[0]})"
    return None


# -- PaSST: reading release files ------------------------------------------------------------------

def release_url(arch: str) -> str:
    from hear21passt.models.passt import default_cfgs

    if arch not in PASST_RELEASES:
        raise ModelLoadError(f"audio.arch={arch} is not a hear21passt release; known: {', '.join(PASST_RELEASES)}")
    return default_cfgs[PASST_RELEASES[arch][0]]["url"]


def release_file(arch: str) -> str:
    """The file name hear21passt publishes `arch`'s weights under (e.g. passt-s-f128-p16-s16-ap.468.pt)."""
    return release_url(arch).rsplit("/", 1)[-1]


def _release_facts(arch: str) -> tuple[int, int, int]:
    """(stride, frames, depth) of a release, from its file name and hear21passt's default_cfgs."""
    from hear21passt.models.passt import default_cfgs

    key = PASST_RELEASES[arch][0]
    name = release_file(arch)
    stride = 16 if "-s16-" in name else 10
    frames = int(default_cfgs[key]["input_size"][-1])
    if arch in {"openmic", "fsd50k", "fsd50k-n"}:
        frames = PASST_FRAMES  # fine-tuned on 10 s crops; default_cfgs states the full-clip size
    return stride, frames, 7 if name.startswith("passt-l") else 12


def _torch_load(path: Path, what: str, mmap: bool = True) -> Any:
    """torch.load with weights_only=True, turning every failure into one clear line."""
    if not path.is_file():
        raise ModelLoadError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{path}: holds pickled Python objects besides tensors, which a safe load (weights_only=True) "
            f"refuses ({first[:160]}). If you trust the file, re-save its weights alone: "
            f"torch.save(torch.load(PATH, weights_only=False)[...state dict...], 'weights.pt')") from exc
    except RuntimeError as exc:
        if mmap and "mmap" in str(exc).lower():  # legacy (pre-zip) files cannot be memory-mapped
            return _torch_load(path, what, mmap=False)
        raise ModelLoadError(f"{path}: not a PyTorch checkpoint ({str(exc).splitlines()[0][:200]})") from exc
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a PyTorch checkpoint ({str(exc).splitlines()[0][:200]})") from exc


def _strip(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def unwrap_passt_state(obj: Any, source: str, weights: str = "swa") -> dict[str, torch.Tensor]:
    """The PaSST state dict inside any layout hear21passt and PaSST's training code write.

    Bare state dict, {"model": sd}, {"state_dict": sd}, Lightning checkpoints with `net.*` and the
    stochastic-weight-averaged `net_swa.*` (`weights` picks "swa" or "net"), and hark checkpoints
    (`audio.net.*`). What is left out is reported at WARNING.
    """
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{source}: expected a state dict or a checkpoint dict, found {type(obj).__name__}")
    state = obj
    for key in ("state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
            state = inner
            break
    if any(k.startswith("audio.net.") for k in state):  # a hark checkpoint: its audio tower
        return _strip(state, "audio.net.")
    # Lightning wraps the network as `net` and the SWA copy as `net_swa` (an AveragedModel nests `.module`).
    swa = _strip(state, "net_swa.module.") or _strip(state, "net_swa.")
    swa.pop("n_averaged", None)
    net = _strip(state, "net.")
    rest = [k for k in state if not k.startswith(("net.", "net_swa."))] if swa or net else []
    if swa and net:
        use_swa = weights != "net"
        chosen, dropped = (swa, net) if use_swa else (net, swa)
        log.warning("%s holds net.* and net_swa.* weights: using %s; ignored the %d %s keys (audio.weights=%s "
                    "picks them)", source, "net_swa.* (the averaged weights)" if use_swa else "net.*",
                    len(dropped), "net.*" if use_swa else "net_swa.*", "net" if use_swa else "swa")
    else:
        chosen = swa or net or dict(state)
    if rest:
        log.warning("%s: ignored %d keys outside the network (%s)", source, len(rest), ", ".join(rest[:4]))
    return {k: v for k, v in chosen.items() if isinstance(v, torch.Tensor)}


@dataclass
class PasstShape:
    """The architecture a PaSST state dict fixes."""

    embed_dim: int
    depth: int
    patch: int
    freq_patches: int  # rows of the patch grid (freq_new_pos_embed)
    time_patches: int  # columns of the patch grid (time_new_pos_embed)


def passt_shape(state: dict[str, torch.Tensor], source: str) -> PasstShape:
    """Read width, depth, patch size and patch grid from a PaSST state dict (or say it is none)."""
    if "pos_embed" in state and "time_new_pos_embed" not in state:
        raise ModelLoadError(f"{source}: ImageNet ViT/DeiT weights, not an audio PaSST checkpoint; pass a "
                             f"hear21passt release such as {release_file('passt_s_p16_s16_128_ap468')}")
    needed = ("patch_embed.proj.weight", "freq_new_pos_embed", "time_new_pos_embed", "cls_token")
    missing = [k for k in needed if k not in state]
    if missing:
        sample = ", ".join(list(state)[:3]) or "nothing"
        raise ModelLoadError(f"{source}: not a PaSST checkpoint (no {', '.join(missing)}; it holds {sample}, ...)")
    if "dist_token" not in state:
        raise ModelLoadError(f"{source}: a PaSST without distillation token; hark uses the distilled releases "
                             f"(e.g. {release_file('passt_s_p16_s16_128_ap468')})")
    proj = state["patch_embed.proj.weight"]
    embed_dim = proj.shape[0]
    if proj.ndim == 4:
        if proj.shape[1] != 1 or proj.shape[2] != proj.shape[3]:
            raise ModelLoadError(f"{source}: patch embedding of shape {tuple(proj.shape)}; hark needs one input "
                                 "channel and square patches")
        patch = proj.shape[2]
    else:  # hear21passt's older linear patchify; reshaped to a convolution on load
        patch = math.isqrt(proj[0].numel())
    freq, time_ = state["freq_new_pos_embed"], state["time_new_pos_embed"]
    if freq.ndim != 4 or time_.ndim != 4 or freq.shape[1] != embed_dim or time_.shape[1] != embed_dim:
        raise ModelLoadError(f"{source}: positional embeddings {tuple(freq.shape)} / {tuple(time_.shape)} do not "
                             f"fit the patch embedding's width {embed_dim}")
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    if depth == 0:
        raise ModelLoadError(f"{source}: not a PaSST checkpoint (no transformer blocks)")
    return PasstShape(embed_dim, depth, patch, freq.shape[2], time_.shape[3])


def _segment_frames(cfg: AudioConfig) -> int:
    """Mel frames of one segment (centred STFT over the pre-emphasised signal, one sample shorter)."""
    return (round(cfg.segment_seconds * cfg.sample_rate) - 1) // cfg.hop_length + 1


def _pick_stride(shape: PasstShape, cfg: AudioConfig) -> int | None:
    """The stride whose patch grid over n_mels has exactly the checkpoint's rows; ties broken by the time grid."""
    fits = [s for s in range(1, shape.patch + 1)  # a stride beyond the patch size would skip mel bins
            if cfg.n_mels // s == shape.freq_patches and (cfg.n_mels - shape.patch) // s + 1 == shape.freq_patches]
    if not fits:
        return None
    for prefer in (lambda s: shape.time_patches == PASST_FRAMES // s, lambda s: s in (10, 16),
                   lambda s: s == cfg.stride):
        chosen = [s for s in fits if prefer(s)]
        if chosen:
            return chosen[-1]
    return fits[-1]


def identify_release(shape: PasstShape, stride: int, frames: int, file_name: str) -> str | None:
    """The hear21passt architecture name of a checkpoint: by its release file name, else by its shape."""
    for arch in PASST_RELEASES:
        if release_file(arch) == file_name:
            return arch
    for arch in PASST_RELEASES:
        if _release_facts(arch) == (stride, frames, shape.depth) and shape.embed_dim == 768:
            return arch
    return None


def adapt_audio_config(cfg: AudioConfig, shape: PasstShape, path: Path) -> None:
    """Make the audio config describe the checkpoint's architecture; WARNING lists what changed."""
    stride = _pick_stride(shape, cfg)
    if stride is None:
        raise ModelLoadError(
            f"{path}: its patch grid has {shape.freq_patches} frequency rows, which no stride gives over "
            f"audio.n_mels={cfg.n_mels} with {shape.patch}-bin patches; hear21passt releases need audio.n_mels=128")
    frames = PASST_FRAMES if shape.time_patches == PASST_FRAMES // stride else shape.time_patches * stride
    arch = identify_release(shape, stride, frames, path.name)
    hop = PASST_RELEASES[arch][1] if arch else cfg.hop_length
    if hop != cfg.hop_length:
        # Not adapted silently: the mel hop changes what every downstream graph computes.
        raise ModelLoadError(
            f"{path}: hear21passt's {arch} release, trained on mel frames {hop} samples apart; hark's front end "
            f"uses audio.hop_length={cfg.hop_length}. Pass audio.hop_length={hop} audio.arch={arch} "
            f"audio.stride={stride} audio.frames={frames} to train with its front end, or use "
            f"{release_file('passt_s_p16_s16_128_ap468')}")
    wanted: dict[str, Any] = {"patch": shape.patch, "stride": stride, "embed_dim": shape.embed_dim,
                              "depth": shape.depth, "frames": frames}
    if shape.embed_dim != cfg.embed_dim:
        wanted["num_heads"] = max(1, shape.embed_dim // 64)  # every PaSST/ViT release uses 64-wide heads
    if arch:
        wanted["arch"] = arch
    changed = {k: v for k, v in wanted.items() if getattr(cfg, k) != v}
    # The time embedding must cover a whole segment's patch columns (it is cut, never stretched); the last
    # two frames may fall off, as 10 s (1000 frames) feed PaSST's 998.
    need = (_segment_frames(cfg) - 2 - shape.patch) // stride + 1
    if shape.time_patches < need:
        raise ModelLoadError(
            f"{path}: its time positional embedding has {shape.time_patches} columns, fewer than the {need} of a "
            f"{cfg.segment_seconds:g} s segment at stride {stride}; use a 10 s (or longer) PaSST release")
    if changed:
        settings = " ".join(f"audio.{k}={v}" for k, v in wanted.items() if k in changed)
        was = " ".join(f"audio.{k}={getattr(cfg, k)}" for k in changed)
        log.warning("%s is %s: the audio config was adapted to it: %s (was %s); pass these settings to "
                    "silence this warning", path.name, arch or "a PaSST checkpoint", settings, was)
        for key, value in changed.items():
            setattr(cfg, key, value)


def new_passt(cfg: AudioConfig) -> nn.Module:
    """A PaSST of the configured architecture, randomly initialised, without the classifier heads."""
    from hear21passt.models import passt as passt_module

    passt_module.first_RUN = False
    return passt_module.PaSST(
        img_size=(cfg.n_mels, cfg.frames), patch_size=cfg.patch, stride=cfg.stride, in_chans=1,
        num_classes=0, embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
        distilled=True, s_patchout_t=cfg.patchout_t, s_patchout_f=cfg.patchout_f,
    )


def load_passt_state(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy a PaSST state dict into `net`; AudioSet classifier heads are dropped, anything else is reported."""
    state = dict(state)
    proj = state.get("patch_embed.proj.weight")
    target = net.patch_embed.proj.weight
    if proj is not None and proj.ndim < 4 and proj.numel() == target.numel():
        state["patch_embed.proj.weight"] = proj.reshape(target.shape)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise ModelLoadError(f"{source}: does not fit the PaSST architecture it declares "
                             f"({lines[0] if lines else str(exc).splitlines()[0]})") from exc
    important = [k for k in missing if not k.startswith("head")]
    if important:
        raise ModelLoadError(f"{source}: checkpoint does not fit the PaSST config; missing {important[:5]}")
    classifier = [k for k in unexpected if k.startswith(("head.1.", "head_dist."))]
    other = [k for k in unexpected if k not in classifier]
    if classifier:
        log.info("%s: dropped the AudioSet classifier (%s)", source, ", ".join(classifier))
    if other:
        log.warning("%s: ignored %d keys that PaSST does not have (%s)", source, len(other), ", ".join(other[:5]))


def pretrained_passt_file(cfg: AudioConfig) -> Path:
    """The release file of cfg.arch in torch hub's cache, downloaded first when the machine is online."""
    url = release_url(cfg.arch)
    name = release_file(cfg.arch)
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    if path.is_file():
        return path
    reason = offline_reason(url)
    if reason:
        raise ModelLoadError(
            f"audio.init=pretrained needs {name} from {url}, but the machine is offline ({reason}). Download it "
            f"elsewhere and pass audio.init=/path/to/{name} (or put it in {path.parent}), or audio.init=random")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception as exc:
        raise ModelLoadError(f"could not download {url} ({exc}); download it elsewhere and pass "
                             f"audio.init=/path/to/{name}") from exc
    return path


def build_passt(cfg: AudioConfig) -> nn.Module:
    """The audio network a config asks for; a weights file first adapts the config to its architecture."""
    if cfg.init in {"random", "none"}:  # "none": architecture only, the weights come from a hark checkpoint
        return new_passt(cfg)
    path = pretrained_passt_file(cfg) if cfg.init == "pretrained" else Path(cfg.init).expanduser()
    state = unwrap_passt_state(_torch_load(path, "audio checkpoint"), str(path), cfg.weights)
    adapt_audio_config(cfg, passt_shape(state, str(path)), path)
    net = new_passt(cfg)
    load_passt_state(net, state, str(path))
    return net


def load_passt_checkpoint(net: nn.Module, path: Path, weights: str = "swa") -> None:
    """Load a hear21passt release, a plain PaSST state dict or a hark checkpoint's audio tower into `net`."""
    state = unwrap_passt_state(_torch_load(Path(path), "audio checkpoint"), str(path), weights)
    passt_shape(state, str(path))
    load_passt_state(net, state, str(path))


class AudioTower(nn.Module):
    """Waveform -> one embedding per 10 s segment (mean of PaSST's class and distillation tokens)."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = build_passt(cfg)  # may adapt cfg (stride, hop, ...) to a checkpoint, so it runs first
        if cfg.frames > _segment_frames(cfg):
            # Releases for 20 s / 30 s inputs see 10 s segments; PaSST cuts its time embedding to fit and
            # warns about the size on every new call site. The cut is intended.
            warnings.filterwarnings("ignore", message=r"Input image size .* doesn't match model")
        self.frontend = MelFrontEnd(cfg)
        self.dim = cfg.embed_dim
        self.segment_samples = round(cfg.segment_seconds * cfg.sample_rate)

    def embed_segments(self, segments: torch.Tensor) -> torch.Tensor:
        """[S, segment_samples] -> [S, dim]."""
        return self.embed_mels(self.frontend(segments))

    def embed_mels(self, mel: torch.Tensor) -> torch.Tensor:
        """[S, n_mels, frames] normalised log mel of whole segments -> [S, dim]."""
        # 10 s give 1000 frames; the patch grid covers the same columns of 998 (PaSST's size). Longer
        # positional embeddings (20 s, 30 s releases) are cut to the segment by PaSST itself.
        feats = self.net.forward_features(mel[:, None, :, :self.cfg.frames])
        if isinstance(feats, tuple):
            return (feats[0] + feats[1]) / 2
        return feats

    def _cut(self, x: torch.Tensor, size: int, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut the last axis of [B, ..., T] into [B, M, ..., size] zero-padded segments (1 <= M <= max_segments)
        and their validity mask [B, M]: a segment is valid when it starts before the item's length."""
        count = min(self.cfg.max_segments, max(1, math.ceil(x.shape[-1] / size)))
        total = count * size
        if x.shape[-1] < total:
            x = nn.functional.pad(x, (0, total - x.shape[-1]))
        x = x[..., :total].reshape(*x.shape[:-1], count, size).movedim(-2, 1)
        starts = torch.arange(count, device=lengths.device) * size
        mask = starts[None, :] < lengths[:, None]
        mask[:, 0] = True  # an (invalid) empty clip still gets one, silent, segment
        return x, mask

    def _embed_valid(self, segments: torch.Tensor, mask: torch.Tensor, embed) -> torch.Tensor:
        """[B, M, dim]: `embed` of the valid segments only (the others stay zero and never reach the transformer)."""
        out = segments.new_zeros(mask.shape[0], mask.shape[1], self.dim)
        out[mask] = embed(segments[mask]).to(out.dtype)
        return out

    def segment(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut [B, T] into [B, M, segment_samples] zero-padded segments and their validity mask [B, M]."""
        return self._cut(wave, self.segment_samples, lengths)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T] waveform and lengths in samples -> segment embeddings [B, M, dim] and mask [B, M]."""
        segments, mask = self.segment(wave, lengths)
        return self._embed_valid(segments, mask, self.embed_segments), mask

    @property
    def hop(self) -> int:
        return self.frontend.hop

    def forward_power(self, power: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` from mel power instead of the waveform (`train.mel_cache`): [B, n_mels, F] frames of a
        clip's whole-clip `frontend.power`, `frames` [B] valid frames each. Segment m is frames
        [m * seg, m * seg + seg) with seg = segment_samples // hop, the frames the waveform path computes for
        it, except the first two of each later segment, which see the previous segment's samples here where the
        waveform path pads by reflection (tests/test_melcache.py bounds the difference)."""
        segments, mask = self._cut(power, self.segment_samples // self.hop, frames)
        return self._embed_valid(segments, mask, lambda p: self.embed_mels(self.frontend.log(p))), mask


# -- RoBERTa: local folders and hub names ----------------------------------------------------------

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")


def _looks_like_path(value: str) -> bool:
    # Hub names are "name" or "org/name"; anything else that does not exist is a mistyped folder.
    return value.startswith((".", "/", "~")) or value.count("/") > 1 or "\\" in value


def _snapshot(folder: Path) -> Path:
    """The snapshot folder of a hub-cache model folder (models--org--name/snapshots/<rev>/)."""
    snaps = folder / "snapshots"
    ref = folder / "refs" / "main"
    if ref.is_file() and (snaps / ref.read_text().strip()).is_dir():
        return snaps / ref.read_text().strip()
    revs = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    if not revs:
        raise ModelLoadError(f"{folder}: a hub-cache folder without snapshots")
    return revs[-1]


def _local_model_folder(path: Path) -> Path:
    """Resolve the layouts a downloaded model arrives in to the folder holding its files."""
    if (path / "snapshots").is_dir():
        return _snapshot(path)
    cached = [p for p in path.glob("models--*") if (p / "snapshots").is_dir()]
    if not any((path / f).is_file() for f in (*WEIGHT_FILES, "config.json", "vocab.json", "tokenizer.json")):
        if len(cached) == 1:  # the hub cache root with one model in it
            return _snapshot(cached[0])
        if cached:
            raise ModelLoadError(f"{path} is a hub cache with several models ({', '.join(p.name for p in cached)});"
                                 " pass text.model=<that folder>/models--<org>--<name>")
    return path


def hub_hint(name: str) -> str:
    return (f"download the model folder elsewhere (e.g. `huggingface-cli download {name} --local-dir {name}`), "
            f"copy it here and pass text.model=/path/to/{name} (a Hugging Face model folder), or text.model=random")


@functools.lru_cache(maxsize=8)
def resolve_text_model(name: str) -> Path:
    """The local folder of a text model given as a folder (any layout) or a hub name (cache, then hub)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return _local_model_folder(path)
    if path.exists():
        raise ModelLoadError(f"text.model={name} is a file; pass the model folder that holds it")
    if _looks_like_path(name):
        raise ModelLoadError(f"text.model folder not found: {name}")
    from huggingface_hub import snapshot_download

    try:  # already in the local hub cache: no network needed
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        pass
    reason = offline_reason(os.environ.get("HF_ENDPOINT", f"https://{HF_HOST}"))
    if reason:
        raise ModelLoadError(f"text.model={name} is a Hugging Face hub name, but the hub is not reachable "
                             f"({reason}); {hub_hint(name)}")
    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.txt", "model.safetensors"]))
    except Exception as exc:
        raise ModelLoadError(f"could not download '{name}' ({str(exc).splitlines()[0][:200]}); "
                             f"{hub_hint(name)}") from exc


def _load_hf_tokenizer(name: str) -> TextTokenizer:
    folder = resolve_text_model(name)
    if (folder / "tokenizer.json").is_file():
        return TextTokenizer.from_file(folder / "tokenizer.json")
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        from transformers import RobertaTokenizer

        fast = RobertaTokenizer.from_pretrained(str(folder), local_files_only=True)
        return TextTokenizer.from_json(fast.backend_tokenizer.to_str())
    raise ModelLoadError(f"{folder}: no tokenizer (tokenizer.json, or vocab.json + merges.txt); add one or set "
                         "text.tokenizer=/path/to/tokenizer.json")


def _roberta_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").is_file():
        state = _torch_load(folder / "pytorch_model.bin", "RoBERTa weights")
    else:
        raise ModelLoadError(f"{folder}: no model weights (model.safetensors or pytorch_model.bin)")
    prefix = "roberta."  # masked-LM checkpoints (the hub's roberta-large) nest the encoder
    if any(k.startswith(prefix) for k in state):
        state = _strip(state, prefix)
    return state


def _config_from_weights(state: dict[str, torch.Tensor], folder: Path) -> dict[str, Any]:
    """A RobertaConfig for a folder without config.json, read off the weight shapes."""
    try:
        words = state["embeddings.word_embeddings.weight"]
        hidden = words.shape[1]
        layers = len({k.split(".")[2] for k in state if k.startswith("encoder.layer.")})
        config = {
            "vocab_size": words.shape[0], "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": max(1, hidden // 64),  # every RoBERTa release uses 64-wide heads
            "intermediate_size": state["encoder.layer.0.intermediate.dense.weight"].shape[0],
            "max_position_embeddings": state["embeddings.position_embeddings.weight"].shape[0],
            "type_vocab_size": state["embeddings.token_type_embeddings.weight"].shape[0],
            "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "layer_norm_eps": 1e-5,
        }
    except KeyError as exc:
        raise ModelLoadError(f"{folder}: the weights are not a RoBERTa encoder (no {exc.args[0]})") from exc
    log.warning("%s has no config.json: using a RoBERTa config read from the weights (%d layers, width %d, "
                "%d heads assumed)", folder, config["num_hidden_layers"], hidden, config["num_attention_heads"])
    return config


def load_roberta(name: str) -> nn.Module:
    """RobertaModel (no pooler) from a local folder in any layout, or a hub name (see resolve_text_model)."""
    from transformers import RobertaConfig, RobertaModel

    folder = resolve_text_model(name)
    if (folder / "config.json").is_file():
        from transformers.utils import logging as hf_logging

        # transformers prints a table of every key it skipped (the masked-LM head of roberta-large);
        # hark reports what matters itself, below.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            net, info = RobertaModel.from_pretrained(str(folder), add_pooling_layer=False, local_files_only=True,
                                                     output_loading_info=True)
        except Exception as exc:
            raise ModelLoadError(f"could not load RoBERTa from {folder} ({str(exc).splitlines()[0][:200]})") from exc
        finally:
            hf_logging.set_verbosity(verbosity)
        missing, unexpected = list(info.get("missing_keys", ())), list(info.get("unexpected_keys", ()))
    else:
        state = _roberta_weights(folder)
        net = RobertaModel(RobertaConfig(**_config_from_weights(state, folder)), add_pooling_layer=False)
        missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing:
        raise ModelLoadError(f"{folder}: the weights do not fit RoBERTa; missing {missing[:5]}")
    ignored = [k for k in unexpected if not k.startswith(("lm_head.", "pooler."))]
    if ignored:
        log.warning("%s: ignored %d unexpected keys (%s)", folder, len(ignored), ", ".join(ignored[:5]))
    return net


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


def hf_config_dict(net: nn.Module) -> dict[str, Any]:
    """The transformers config as plain JSON values (what a weights_only checkpoint may hold)."""
    return json.loads(net.config.to_json_string(use_diff=False))


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
            self.net = load_roberta(cfg.model)
        self.dim = self.net.config.hidden_size

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=ids, attention_mask=mask).last_hidden_state
