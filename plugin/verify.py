"""`hark bundle verify`: hashes, format, every graph loads, and a smoke input gives sane outputs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from hark.bundle import Bundle, BundleError

from .encoders import AudioEncoder, Reranker, TextEncoder


def verify_bundle(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """Load and exercise a bundle; raises BundleError naming the first problem, else returns a report."""
    started = time.perf_counter()
    bundle = Bundle.load(path, verify_hashes=True)
    report: dict[str, Any] = {"bundle": str(path), "name": bundle.name, "version": bundle.version,
                              "files": len(bundle.manifest.files), "graphs": {}}
    for graph, entry in bundle.manifest.graphs.items():
        for precision in entry.files:
            try:
                bundle.session(graph, device, precision)
            except BundleError:
                raise
            except Exception as exc:
                raise BundleError(f"{bundle.graph_path(graph, precision)}: ONNX Runtime cannot load it "
                                  f"({str(exc).splitlines()[0]})") from exc
        report["graphs"][graph] = sorted(entry.files)
    vectors = {v.name: v for v in bundle.vectors()}

    text = TextEncoder(bundle, device).encode(["a dog barks while rain falls", "a siren wails"])
    _check(text.sentence.shape == (2, vectors["global"].size), "text.onnx", "sentence shape")
    _check(np.allclose(np.linalg.norm(text.sentence, axis=1), 1, atol=1e-3), "text.onnx",
           "sentence vectors are not unit length")
    sr = bundle.sample_rate
    t = np.arange(int(sr * 12.5)) / sr
    tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    clips = AudioEncoder(bundle, device).encode_windows([tone, tone[: sr * 3]])
    _check(clips[0].segments == min(2, bundle.max_segments) and clips[1].segments == 1, "audio.onnx",
           "segment count")
    for clip in clips:
        _check(clip.global_.shape == (vectors["global"].size,) and np.isfinite(clip.global_).all(),
               "clip.onnx", "global vector shape or values")
    if bundle.has_rerank:
        width = vectors["tokens"].size
        _check(clips[0].rows.shape[1] == width, "clip.onnx", f"tokens rows must be {width} wide")
        scores = Reranker(bundle, device).score(text.tokens[0], text.mask[0], [c.rows for c in clips])
        _check(scores.shape == (2,) and np.isfinite(scores).all() and np.all(np.abs(scores) <= 1 + 1e-4),
               "rerank.onnx", "scores must be finite cosines")
        report["smoke_rerank_scores"] = [round(float(s), 4) for s in scores]
    report["smoke_cosine"] = [round(float(text.sentence[0] @ c.global_), 4) for c in clips]
    report["parity"] = bundle.manifest.parity
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["ok"] = True
    return report


def _check(condition: bool, file: str, what: str) -> None:
    if not condition:
        raise BundleError(f"{file}: smoke test failed: {what}")
