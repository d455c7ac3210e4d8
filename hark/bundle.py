"""The model bundle (DESIGN.md contract 1), as the runtime reads it: manifest, hashes, ONNX sessions.

Torch-free: the plugin and the workers load bundles through this module alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from hark.errors import HarkError
from hark.text import TextTokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("audio", "clip", "text", "rerank")


class BundleError(HarkError):
    """A bundle that is missing, damaged or of another format; the message names the file."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class VectorSpec:
    name: str
    size: int
    distance: str  # "Cosine" or "Dot"
    multivector: bool = False
    hnsw_m: int | None = None  # 0 switches the HNSW graph off (vectors only read back)
    datatype: str = "float32"  # "float16" where the server honours it
    on_disk: bool = False


class Bundle:
    """A verified bundle folder. Sessions are created lazily, per process (after a fork)."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self._sessions: dict[tuple[str, str], Any] = {}

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, verify_hashes: bool = True) -> Bundle:
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"bundle folder not found: {root}")
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{manifest_path}: missing; not a hark bundle")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
        if not isinstance(manifest, dict):
            raise BundleError(f"{manifest_path}: not a JSON object")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"{manifest_path}: bundle format {version!r}, this hark reads format "
                              f"{FORMAT_VERSION}; re-export the model with this version of hark")
        for key in ("model", "audio", "text", "vectors", "heads", "files", "graphs"):
            if key not in manifest:
                raise BundleError(f"{manifest_path}: missing key '{key}'")
        bundle = cls(root, manifest)
        if verify_hashes:
            bundle.verify_files()
        return bundle

    def verify_files(self) -> None:
        for name, expected in self.manifest["files"].items():
            path = self.root / name
            if not path.is_file():
                raise BundleError(f"{path}: listed in the manifest but missing")
            actual = sha256_file(path)
            if actual != expected:
                raise BundleError(f"{path}: sha256 mismatch (file is damaged or was replaced); "
                                  f"expected {expected[:12]}..., found {actual[:12]}...")

    # -- facts -------------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.manifest["model"]["version"]

    @property
    def name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def sample_rate(self) -> int:
        return int(self.manifest["audio"]["sample_rate"])

    @property
    def segment_samples(self) -> int:
        return round(self.manifest["audio"]["segment_seconds"] * self.sample_rate)

    @property
    def max_segments(self) -> int:
        return int(self.manifest["audio"]["max_segments"])

    @property
    def has_rerank(self) -> bool:
        return "rerank" in self.manifest["graphs"]

    @property
    def fusion(self) -> dict[str, float]:
        return dict(self.manifest["heads"]["fusion"])

    def vectors(self) -> list[VectorSpec]:
        return [VectorSpec(name=name, **spec) for name, spec in self.manifest["vectors"].items()]

    @cached_property
    def tokenizer(self) -> TextTokenizer:
        text = self.manifest["text"]
        return TextTokenizer.from_file(self.root / text["tokenizer"], int(text["max_tokens"]))

    def graph_path(self, graph: str, precision: str | None = None) -> Path:
        entry = self.manifest["graphs"].get(graph)
        if entry is None:
            raise BundleError(f"{self.root}: this bundle has no '{graph}' graph")
        variants = entry["files"]
        precision = precision or entry.get("default", "fp32")
        if precision not in variants:
            raise BundleError(f"{self.root}: graph '{graph}' has no {precision} variant "
                              f"(has {', '.join(variants)})")
        return self.root / variants[precision]

    def session(self, graph: str, device: str = "auto", precision: str | None = None):
        """An ONNX Runtime session for one graph, cached per (graph, precision) in this process."""
        from hark.onnx import create_session

        key = (graph, precision or "default")
        if key not in self._sessions:
            self._sessions[key] = create_session(self.graph_path(graph, precision), device)
        return self._sessions[key]
