"""The bundle manifest (DESIGN.md contract 1) as one typed schema: the exporter writes it, the runtime reads it.

Torch-free. Reading is tolerant: keys this version does not know are kept (`extra`) and written back, so a
newer exporter's additions never break an older reader; keys it needs are checked, and the error names the
missing or mistyped key. `FORMAT_VERSION` changes only when a key changes meaning.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from hark.errors import HarkError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("audio", "clip", "text", "rerank", "moments")
# The caption every bundle records after its own text normalisation; the runtime must reproduce it.
NORMALIZATION_PROBE = "A Dog, barking!"

# A model's name and version name its registry folder (`<name>-<version>`) and its collections
# (`<alias>__<version>`), so both are slugs: ASCII letters, digits, '.', '-' (the name also '_'), starting with a
# letter or digit (never '.' or '..'), no path separators. The exporter's name is its config's (a config file's
# stem, "tiny", "passt-roberta-base"), its version 12 hex digits of the files' hashes. A version never holds '_'
# because the version is what follows the last '__' of a collection name.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
# What the store accepts (hark.store.vector_params): distances compared case-insensitively, storage datatypes.
DISTANCES = ("cosine", "dot")
DATATYPES = ("float32", "float16", "uint8")
ATTENTION_VARIANTS = ("sentence", "full")
COMPARE_TO = ("text", "query")


class ManifestError(HarkError):
    """A manifest that misses a key this hark needs, or holds a value of the wrong type."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str  # content hash of the bundle's files


@dataclass(frozen=True)
class AudioFrontEnd:
    sample_rate: int
    segment_seconds: float
    max_segments: int
    window_seconds: float  # the stretch of a recording one stored point covers
    embedding_dim: int
    n_mels: int = 128
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 320
    fmin: float = 0.0
    fmax: float = 15000.0
    # Moments (hark.moments): sub-window length and hop in seconds; 0 when the bundle has no moments graph.
    moment_seconds: float = 0.0
    moment_hop_seconds: float = 0.0


@dataclass(frozen=True)
class TextFrontEnd:
    tokenizer: str  # file name inside the bundle
    max_tokens: int
    embedding_dim: int = 0
    lowercase: bool = True
    strip_punctuation: bool = True
    normalization_check: str = ""  # NORMALIZATION_PROBE after the exporter's normalisation


@dataclass(frozen=True)
class VectorSpec:
    name: str
    size: int
    distance: str  # "Cosine" or "Dot"
    multivector: bool = False
    hnsw_m: int | None = None  # 0 switches the HNSW graph off (vectors only read back)
    # float32 for the clip tensors: their Gram rows grow with the square of the value norms and overflow
    # float16 (max 65504) once a norm passes about 256.
    datatype: str = "float32"
    on_disk: bool = False


@dataclass(frozen=True)
class AttentionHead:
    variant: str  # "sentence" or "full"
    heads: int
    dim: int
    compare_to: str = "text"


@dataclass(frozen=True)
class Heads:
    fusion: dict[str, float]
    cosine: dict[str, Any] | None = None
    attention: AttentionHead | None = None


@dataclass(frozen=True)
class GraphEntry:
    files: dict[str, str]  # precision -> file name
    default: str = "fp32"
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


@dataclass
class Manifest:
    model: ModelInfo
    audio: AudioFrontEnd
    text: TextFrontEnd
    vectors: dict[str, VectorSpec]
    heads: Heads
    graphs: dict[str, GraphEntry]
    files: dict[str, str]  # file name -> sha256
    format_version: int = FORMAT_VERSION
    created_at: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, dict[str, float]] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    # How the fusion weights were chosen: the validation metric of each head alone and fused, and whether
    # the rerank is worth running at all (training.calibrate). Empty when the weights are the config's.
    calibration: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # keys of newer formats, kept as they were

    # -- reading ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: not a JSON object")
        version = data.get("format_version")
        if isinstance(version, bool) or version != FORMAT_VERSION:  # JSON true is not format 1
            raise ManifestError(f"{where}: bundle format {version!r}, this hark reads format {FORMAT_VERSION}; "
                                "re-export the model with this version of hark")
        vectors = _mapping(data, "vectors", where)
        graphs = _mapping(data, "graphs", where)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        heads = _mapping(data, "heads", where)
        attention = heads.get("attention")
        cosine = heads.get("cosine")
        manifest = cls(
            model=_build(ModelInfo, _mapping(data, "model", where), f"{where}: model"),
            audio=_build(AudioFrontEnd, _mapping(data, "audio", where), f"{where}: audio"),
            text=_build(TextFrontEnd, _mapping(data, "text", where), f"{where}: text"),
            vectors={name: _build(VectorSpec, {**_as_dict(spec, f"{where}: vectors.{name}"), "name": name},
                                  f"{where}: vectors.{name}") for name, spec in vectors.items()},
            heads=Heads(fusion={str(k): _number(v, f"{where}: heads.fusion.{k}")
                                for k, v in _mapping(heads, "fusion", f"{where}: heads").items()},
                        cosine=None if cosine is None else dict(_as_dict(cosine, f"{where}: heads.cosine")),
                        attention=None if attention is None else _build(AttentionHead, attention,
                                                                        f"{where}: heads.attention")),
            graphs={name: _build(GraphEntry, entry, f"{where}: graphs.{name}") for name, entry in graphs.items()},
            files={_bundle_path(k, f"{where}: files"): _sha256(v, f"{where}: files.{k}")
                   for k, v in _mapping(data, "files", where).items()},
            format_version=FORMAT_VERSION,
            created_at=str(data.get("created_at", "")),
            training=_optional_mapping(data, "training", where),
            parity=_optional_mapping(data, "parity", where),
            export=_optional_mapping(data, "export", where),
            calibration=_optional_mapping(data, "calibration", where),
            extra={k: v for k, v in data.items() if k not in known},
        )
        manifest.validate(where)
        return manifest

    # -- checking -----------------------------------------------------------------------------------
    def validate(self, where: str = "manifest") -> None:
        """Ranges, enumerations and cross-references the types alone do not catch: every value the runtime
        divides by, allocates with or looks up is checked here, so a bad manifest fails when it is read (one
        named key), never later in a search or a re-index. Raises ManifestError."""
        model, audio, text = self.model, self.audio, self.text
        if not NAME_PATTERN.fullmatch(model.name):
            raise ManifestError(f"{where}: model.name {model.name!r} is not a slug (ASCII letters, digits, '.', "
                                "'_', '-', starting with a letter or digit, at most 64 characters)")
        if not VERSION_PATTERN.fullmatch(model.version):
            raise ManifestError(f"{where}: model.version {model.version!r} is not a slug (ASCII letters, digits, "
                                "'.', '-', starting with a letter or digit, at most 64 characters)")
        for key in ("sample_rate", "max_segments", "embedding_dim", "n_mels", "n_fft", "win_length", "hop_length"):
            _at_least(getattr(audio, key), 1, f"{where}: audio.{key}")
        for key in ("segment_seconds", "window_seconds"):
            _positive(getattr(audio, key), f"{where}: audio.{key}")
        for key in ("fmin", "moment_seconds", "moment_hop_seconds"):
            _at_least(getattr(audio, key), 0, f"{where}: audio.{key}")
        if audio.fmax <= audio.fmin:
            raise ManifestError(f"{where}: audio.fmax ({audio.fmax}) must be above audio.fmin ({audio.fmin})")
        for key in ("segment_seconds", "moment_seconds"):
            seconds = getattr(audio, key)
            if seconds and round(seconds * audio.sample_rate) < 1:
                raise ManifestError(f"{where}: audio.{key} ({seconds}) is shorter than one sample at "
                                    f"{audio.sample_rate} Hz")
        _bundle_path(text.tokenizer, f"{where}: text.tokenizer")
        _at_least(text.max_tokens, 1, f"{where}: text.max_tokens")
        _at_least(text.embedding_dim, 0, f"{where}: text.embedding_dim")
        for name, spec in self.vectors.items():
            at = f"{where}: vectors.{name}"
            _at_least(spec.size, 1, f"{at}.size")
            _one_of(spec.distance.lower(), DISTANCES, f"{at}.distance", spec.distance)
            if spec.hnsw_m is not None:
                _at_least(spec.hnsw_m, 0, f"{at}.hnsw_m")
            _one_of(spec.datatype, DATATYPES, f"{at}.datatype")
        needed = {"global": "every bundle", "tokens": "the rerank graph" if "rerank" in self.graphs else None,
                  "moments": "the moments graph" if "moments" in self.graphs and audio.moment_seconds > 0 else None}
        for name, why in needed.items():
            if why and name not in self.vectors:
                raise ManifestError(f"{where}: vectors: missing '{name}' (needed by {why})")
        attention = self.heads.attention
        if attention is not None:
            _one_of(attention.variant, ATTENTION_VARIANTS, f"{where}: heads.attention.variant")
            _at_least(attention.heads, 1, f"{where}: heads.attention.heads")
            _at_least(attention.dim, 1, f"{where}: heads.attention.dim")
            _one_of(attention.compare_to, COMPARE_TO, f"{where}: heads.attention.compare_to")
        for graph, entry in self.graphs.items():
            at = f"{where}: graphs.{graph}"
            if not entry.files:
                raise ManifestError(f"{at}.files: no file for any precision")
            for precision, name in entry.files.items():
                _bundle_path(name, f"{at}.files.{precision}")
            if entry.default not in entry.files:
                raise ManifestError(f"{at}.default: {entry.default!r} is not one of its files' precisions "
                                    f"({', '.join(entry.files)})")
            for key in ("inputs", "outputs"):
                if not all(isinstance(v, str) for v in getattr(entry, key)):
                    raise ManifestError(f"{at}.{key}: expected a list of names")
        # Every file the runtime loads must be hashed: a file missing from `files` would be loaded unchecked.
        referenced = {text.tokenizer: "text.tokenizer"}
        for graph, entry in self.graphs.items():
            for precision, name in entry.files.items():
                referenced.setdefault(name, f"graphs.{graph}.files.{precision}")
        for name, key in referenced.items():
            if name not in self.files:
                raise ManifestError(f"{where}: {key} names {name!r}, which is not listed (with its sha256) in files")

    # -- writing ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        vectors = {}
        # Defaults are left out so the stored schema reads as what is special about each vector.
        defaults = {f.name: f.default for f in dataclasses.fields(VectorSpec) if f.default is not dataclasses.MISSING}
        for name, spec in self.vectors.items():
            entry = {k: v for k, v in dataclasses.asdict(spec).items() if k != "name"}
            vectors[name] = {k: v for k, v in entry.items() if k in {"size", "distance"} or v != defaults.get(k)}
        heads: dict[str, Any] = {"fusion": dict(self.heads.fusion)}
        if self.heads.cosine is not None:
            heads["cosine"] = dict(self.heads.cosine)
        if self.heads.attention is not None:
            heads["attention"] = dataclasses.asdict(self.heads.attention)
        out = {
            "format_version": self.format_version,
            "model": dataclasses.asdict(self.model),
            "created_at": self.created_at,
            "training": self.training,
            "audio": dataclasses.asdict(self.audio),
            "text": dataclasses.asdict(self.text),
            "vectors": vectors,
            "heads": heads,
            "graphs": {name: dataclasses.asdict(g) for name, g in self.graphs.items()},
            "parity": self.parity,
            "export": self.export,
            "files": self.files,
        }
        if self.calibration:
            out["calibration"] = self.calibration
        return {**self.extra, **out}


def _as_dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: expected an object, found {type(value).__name__}")
    return value


def _mapping(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    if key not in data:
        raise ManifestError(f"{where}: missing key '{key}'")
    return _as_dict(data[key], f"{where}: {key}")


def _optional_mapping(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    return {} if value is None else dict(_as_dict(value, f"{where}: {key}"))


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ManifestError(f"{where}: expected a number, found {value!r}")
    if not math.isfinite(value):  # Python's json reads NaN and Infinity
        raise ManifestError(f"{where}: expected a finite number, found {value!r}")
    return float(value)


def _at_least(value: float, low: float, where: str) -> None:
    if value < low:
        raise ManifestError(f"{where}: must be {'positive' if low == 1 else f'at least {low}'}, found {value!r}")


def _positive(value: float, where: str) -> None:
    if not value > 0:
        raise ManifestError(f"{where}: must be positive, found {value!r}")


def _one_of(value: str, allowed: tuple[str, ...], where: str, shown: str | None = None) -> None:
    if value not in allowed:
        raise ManifestError(f"{where}: {shown or value!r} is not one of {', '.join(allowed)}")


def _sha256(value: Any, where: str) -> str:
    if not isinstance(value, str) or not SHA256_PATTERN.fullmatch(value):
        raise ManifestError(f"{where}: expected a sha256 (64 lowercase hex digits), found {value!r}")
    return value


def _bundle_path(value: Any, where: str) -> str:
    """A file named by the manifest: a relative path inside the bundle folder ('/'-separated, no '.' or '..'
    parts, not absolute on any platform). Where it resolves to (symbolic links) is checked by hark.bundle."""
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: expected a file name inside the bundle, found {value!r}")
    parts = value.split("/")
    if (PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute() or PureWindowsPath(value).drive
            or "\\" in value or "\0" in value or any(part in {"", ".", ".."} for part in parts)):
        raise ManifestError(f"{where}: {value!r} is not a relative path inside the bundle "
                            "(absolute paths and '..' are refused)")
    return value


def _check(value: Any, annotation: Any, where: str) -> Any:
    """Light type check of one JSON value against a field annotation (JSON has no tuples or sets)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        return _check(value, next(a for a in options if a is not type(None)), where)
    if annotation is Any:
        return value
    if annotation is float:
        return _number(value, where)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ManifestError(f"{where}: expected an integer, found {value!r}")
        return value
    if annotation in (str, bool):
        if not isinstance(value, annotation):
            raise ManifestError(f"{where}: expected {annotation.__name__}, found {value!r}")
        return value
    if origin is dict or annotation is dict:
        return dict(_as_dict(value, where))
    if origin is list:
        if not isinstance(value, list):
            raise ManifestError(f"{where}: expected a list, found {value!r}")
        return list(value)
    return value


def _build(cls: type, data: Any, where: str):
    """A dataclass from a JSON object: required fields checked, unknown keys ignored (newer formats)."""
    data = _as_dict(data, where)
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _check(data[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ManifestError(f"{where}: missing key '{f.name}'")
    return cls(**values)
