"""The bundle manifest (DESIGN.md contract 1) as one typed schema: the exporter writes it, the runtime reads it.

Torch-free. Reading is tolerant: keys this version does not know are kept (`extra`) and written back, so a
newer exporter's additions never break an older reader; keys it needs are checked, and the error names the
missing or mistyped key. `FORMAT_VERSION` changes only when a key changes meaning.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from hark.errors import HarkError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("audio", "clip", "text", "rerank", "moments")
# The caption every bundle records after its own text normalisation; the runtime must reproduce it.
NORMALIZATION_PROBE = "A Dog, barking!"


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
        if version != FORMAT_VERSION:
            raise ManifestError(f"{where}: bundle format {version!r}, this hark reads format {FORMAT_VERSION}; "
                                "re-export the model with this version of hark")
        vectors = _mapping(data, "vectors", where)
        graphs = _mapping(data, "graphs", where)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        heads = _mapping(data, "heads", where)
        attention = heads.get("attention")
        return cls(
            model=_build(ModelInfo, _mapping(data, "model", where), f"{where}: model"),
            audio=_build(AudioFrontEnd, _mapping(data, "audio", where), f"{where}: audio"),
            text=_build(TextFrontEnd, _mapping(data, "text", where), f"{where}: text"),
            vectors={name: _build(VectorSpec, {**_as_dict(spec, f"{where}: vectors.{name}"), "name": name},
                                  f"{where}: vectors.{name}") for name, spec in vectors.items()},
            heads=Heads(fusion={str(k): _number(v, f"{where}: heads.fusion.{k}")
                                for k, v in _mapping(heads, "fusion", f"{where}: heads").items()},
                        cosine=heads.get("cosine"),
                        attention=None if attention is None else _build(AttentionHead, attention,
                                                                        f"{where}: heads.attention")),
            graphs={name: _build(GraphEntry, entry, f"{where}: graphs.{name}") for name, entry in graphs.items()},
            files={str(k): str(v) for k, v in _mapping(data, "files", where).items()},
            format_version=FORMAT_VERSION,
            created_at=str(data.get("created_at", "")),
            training=dict(data.get("training") or {}),
            parity=dict(data.get("parity") or {}),
            export=dict(data.get("export") or {}),
            calibration=dict(data.get("calibration") or {}),
            extra={k: v for k, v in data.items() if k not in known},
        )

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


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ManifestError(f"{where}: expected a number, found {value!r}")
    return float(value)


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
