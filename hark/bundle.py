"""The model bundle (DESIGN.md contract 1), as the runtime reads it: manifest, hashes, ONNX sessions.

Torch-free: the plugin and the workers load bundles through this module alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from functools import cached_property
from pathlib import Path
from typing import Any

from hark.errors import HarkError
from hark.manifest import FORMAT_VERSION, GRAPHS, MANIFEST, NORMALIZATION_PROBE, Manifest, ManifestError, VectorSpec
from hark.moments import MomentSpec
from hark.text import TextTokenizer, normalize_caption

__all__ = ["FORMAT_VERSION", "GRAPHS", "MANIFEST", "Bundle", "BundleError", "VectorSpec", "sha256_file"]

log = logging.getLogger(__name__)

# Stamps of files already hashed live under `<state_dir>/verified/`, never in the bundle folder (its contents are
# exactly the manifest's files).
STAMPS = "verified"
# A file changed less than this long before it was stamped is not stamped: a rewrite within the same coarse
# filesystem clock tick could leave size, mtime and ctime all equal (git's "racily clean" index entries).
RACY_NS = 2_000_000_000


class BundleError(HarkError):
    """A bundle that is missing, damaged or of another format; the message names the file."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Bundle:
    """A verified bundle folder. Sessions are created lazily, per process (after a fork)."""

    def __init__(self, root: Path, manifest: Manifest, state_dir: str | os.PathLike | None = None) -> None:
        self.root = root
        self.manifest = manifest
        self._sessions: dict[tuple[str, str], Any] = {}
        self._lazy = False
        self._verified: set[str] = set()
        self._stamps = Path(state_dir) / STAMPS if state_dir is not None else None

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, verify_hashes: bool | str = "used",
             state_dir: str | os.PathLike | None = None) -> Bundle:
        """Read and check a bundle folder.

        `verify_hashes`: True hashes every file now (`hark bundle verify`, registering); "used" (the
        default) checks that every listed file exists now and hashes each file when it is first used (a
        graph's session, the tokenizer), so a query process does not read gigabytes of variants it never
        loads; False skips hashing.

        `state_dir` (HARK_STATE_DIR), "used" mode only: remember each file that hashed right, by its real path,
        size, mtime, ctime, inode, device and expected sha256, and skip hashing it again while all of these
        still match (a cold `hark search` otherwise spends most of a second hashing the text encoder).
        `verify_hashes=True` always hashes.
        """
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"bundle folder not found: {root}")
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{manifest_path}: missing; not a hark bundle")
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
        try:
            manifest = Manifest.from_dict(data, str(manifest_path))
        except ManifestError as exc:
            raise BundleError(str(exc)) from exc
        _check_text_front_end(manifest, manifest_path)
        _check_inside(root, manifest)
        bundle = cls(root, manifest, state_dir)
        if verify_hashes == "used":
            bundle._lazy = True
            bundle.check_present()
        elif verify_hashes:
            bundle.verify_files()
        return bundle

    def check_present(self) -> None:
        for name in self.manifest.files:
            if not (self.root / name).is_file():
                raise BundleError(f"{self.root / name}: listed in the manifest but missing")

    def _verify_used(self, path: Path) -> None:
        """Hash one file before its first use (lazy mode); each file once per process."""
        name = path.relative_to(self.root).as_posix()  # the manifest's key: a path relative to the bundle
        if not self._lazy or name in self._verified:
            return
        expected = self.manifest.files.get(name)
        if expected is None:
            raise BundleError(f"{path}: not listed in the manifest")
        stamp = self._stamp_path(path)
        if stamp is None or not _stamp_matches(stamp, path, expected):
            before = _identity(path)
            actual = sha256_file(path)
            if actual != expected:
                raise BundleError(f"{path}: sha256 mismatch (file is damaged or was replaced); "
                                  f"expected {expected[:12]}..., found {actual[:12]}...")
            if stamp is not None:
                _write_stamp(stamp, path, expected, before)
        self._verified.add(name)

    def _stamp_path(self, path: Path) -> Path | None:
        if self._stamps is None:
            return None
        real = os.path.realpath(path)
        return self._stamps / (hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:40] + ".json")

    def verify_files(self) -> None:
        for name, expected in self.manifest.files.items():
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
        return self.manifest.model.version

    @property
    def name(self) -> str:
        return self.manifest.model.name

    @property
    def sample_rate(self) -> int:
        return self.manifest.audio.sample_rate

    @property
    def segment_samples(self) -> int:
        return round(self.manifest.audio.segment_seconds * self.sample_rate)

    @property
    def max_segments(self) -> int:
        return self.manifest.audio.max_segments

    @property
    def has_rerank(self) -> bool:
        return "rerank" in self.manifest.graphs

    @property
    def moments(self) -> MomentSpec | None:
        """The sub-windows ingestion embeds for moments, or None when this bundle has no moments graph."""
        audio = self.manifest.audio
        if "moments" not in self.manifest.graphs or audio.moment_seconds <= 0:
            return None
        return MomentSpec(audio.moment_seconds, audio.moment_hop_seconds or audio.moment_seconds)

    @property
    def fusion(self) -> dict[str, float]:
        return dict(self.manifest.heads.fusion)

    @property
    def rerank_by_default(self) -> bool:
        """False when calibration found the attention rerank no better than the cosine prefilter alone."""
        return self.has_rerank and bool(self.manifest.calibration.get("rerank", True))

    def vectors(self) -> list[VectorSpec]:
        return list(self.manifest.vectors.values())

    @cached_property
    def tokenizer(self) -> TextTokenizer:
        text = self.manifest.text
        path = self.root / text.tokenizer
        self._verify_used(path)
        try:
            return TextTokenizer.from_file(path, text.max_tokens)
        except (ValueError, OSError) as exc:  # hashed right, yet not a tokenizer: an exporter's fault
            reason = (str(exc).splitlines() or [type(exc).__name__])[0].removeprefix(f"{path}: ")
            raise BundleError(f"{path}: the tokenizer cannot be loaded ({reason})") from exc

    def graph_path(self, graph: str, precision: str | None = None) -> Path:
        entry = self.manifest.graphs.get(graph)
        if entry is None:
            raise BundleError(f"{self.root}: this bundle has no '{graph}' graph")
        variants = entry.files
        precision = precision or entry.default
        if precision not in variants:
            raise BundleError(f"{self.root}: graph '{graph}' has no {precision} variant "
                              f"(has {', '.join(variants)})")
        return self.root / variants[precision]

    def session(self, graph: str, device: str = "auto", precision: str | None = None):
        """An ONNX Runtime session for one graph, cached per (graph, precision) in this process."""
        from hark.onnx import create_session

        key = (graph, precision or "default")
        if key not in self._sessions:
            path = self.graph_path(graph, precision)
            self._verify_used(path)
            self._sessions[key] = create_session(path, device)
        return self._sessions[key]


def _identity(path: Path) -> dict[str, Any]:
    st = os.stat(path)
    return {"path": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "inode": st.st_ino, "device": st.st_dev}


def _stamp_matches(stamp: Path, path: Path, expected: str) -> bool:
    """True when `stamp` records this very file (same real path and stat identity) hashing to `expected`."""
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
        return isinstance(recorded, dict) and recorded == {**_identity(path), "sha256": expected}
    except (OSError, ValueError):
        return False


def _write_stamp(stamp: Path, path: Path, expected: str, before: dict[str, Any]) -> None:
    """Record a good hash. Best effort: an unwritable state dir only costs the next process a rehash."""
    try:
        now = _identity(path)
        # Changed while being hashed, or too recently to tell a same-tick rewrite apart: hash it next time too.
        if now != before or time.time_ns() - max(now["mtime_ns"], now["ctime_ns"]) < RACY_NS:
            return
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({**now, "sha256": expected}), encoding="utf-8")
        os.replace(tmp, stamp)
    except OSError as exc:
        log.debug("no hash stamp for %s: %s", path, exc)


def _check_inside(root: Path, manifest: Manifest) -> None:
    """Every listed file (the manifest checks that these include every file it refers to) must resolve inside
    the bundle folder: the manifest's paths are relative without '..', and no symbolic link may lead out."""
    top = root.resolve()
    for name in manifest.files:
        path = root / name
        try:
            real = path.resolve()
        except (OSError, RuntimeError) as exc:  # a loop of symbolic links
            raise BundleError(f"{path}: cannot be resolved ({exc})") from exc
        if not real.is_relative_to(top):
            raise BundleError(f"{path}: resolves outside the bundle folder (to {real})")


def _check_text_front_end(manifest: Manifest, where: Path) -> None:
    """Queries must be normalised as the captions were in training: the runtime lowercases and strips
    punctuation (hark.text.normalize_caption); a bundle that records anything else is refused."""
    text = manifest.text
    if not (text.lowercase and text.strip_punctuation):
        raise BundleError(f"{where}: text front end (lowercase={text.lowercase}, strip_punctuation="
                          f"{text.strip_punctuation}) differs from this runtime's (both true)")
    if text.normalization_check and text.normalization_check != normalize_caption(NORMALIZATION_PROBE):
        raise BundleError(f"{where}: text normalisation differs: the bundle turns {NORMALIZATION_PROBE!r} into "
                          f"{text.normalization_check!r}, this runtime into {normalize_caption(NORMALIZATION_PROBE)!r}")
