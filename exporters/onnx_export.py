"""Checkpoint -> model bundle: ONNX graphs, tokenizer, manifest with hashes and measured parity."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hark.bundle import MANIFEST, sha256_file
from hark.errors import HarkError
from hark.manifest import (
    NORMALIZATION_PROBE,
    AttentionHead,
    AudioFrontEnd,
    GraphEntry,
    Heads,
    Manifest,
    ModelInfo,
    TextFrontEnd,
    VectorSpec,
)
from hark.text import normalize_caption
from hark.training.model import RetrievalModel, load_checkpoint

from .graphs import AudioGraph, ClipGraph, MomentGraph, RerankGraph, TextGraph, row_size

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
OPSET = 17
# Graphs that get reduced-precision variants; clip and rerank are small and stay fp32.
HEAVY = ("audio", "text", "moments")
PARITY_MIN_COSINE = 0.9999


class ExportError(HarkError, RuntimeError):
    """An export that cannot be done or whose result fails its parity check."""


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min(num / np.maximum(den, 1e-12)))


def _export(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], exporter: str) -> None:
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=max(OPSET, 18), dynamo=True,
                              external_data=False)
        else:
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False,
                              do_constant_folding=True)


def _example_inputs(model: RetrievalModel, seed: int = 0) -> dict[str, tuple]:
    gen = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    samples = round(cfg.audio.segment_seconds * cfg.audio.sample_rate)
    segments = 0.1 * torch.randn(2, samples, generator=gen)
    m = cfg.audio.max_segments
    seg_emb = torch.randn(3, m, model.audio.dim, generator=gen)
    seg_mask = torch.ones(3, m)
    seg_mask[1, 1:] = 0
    ids, mask = model.tokenizer.encode(["a dog barks while rain falls", "a siren wails"])
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    out = {"audio": (segments,), "clip": (seg_emb, seg_mask), "text": (ids_t, mask_t)}
    if _has_moments(model):
        out["moments"] = (0.1 * torch.randn(2, _moment_samples(model), generator=gen),)
    if model.attention is not None:
        with torch.no_grad():
            tokens = model.text(ids_t[:1], mask_t[:1])
            _, rows = ClipGraph(model)(seg_emb, seg_mask)
        out["rerank"] = (tokens, mask_t[:1].float(), rows[None], seg_mask[None])
    return out


GRAPH_IO = {
    "audio": (["segments"], ["embeddings"], {"segments": {0: "n"}, "embeddings": {0: "n"}}),
    "clip": (["segment_embeddings", "segment_mask"], ["global", "tokens"],
             {"segment_embeddings": {0: "clips"}, "segment_mask": {0: "clips"}, "global": {0: "clips"},
              "tokens": {0: "clips"}}),
    "text": (["input_ids", "attention_mask"], ["sentence", "tokens"],
             {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
              "sentence": {0: "batch"}, "tokens": {0: "batch", 1: "length"}}),
    "moments": (["windows"], ["moments"], {"windows": {0: "n"}, "moments": {0: "n"}}),
    "rerank": (["tokens", "token_mask", "rows", "segment_mask"], ["scores"],
               {"tokens": {0: "batch", 1: "length"}, "token_mask": {0: "batch", 1: "length"},
                "rows": {0: "batch", 1: "candidates"}, "segment_mask": {0: "batch", 1: "candidates"},
                "scores": {0: "batch", 1: "candidates"}}),
}


def _has_moments(model: RetrievalModel) -> bool:
    return model.cosine is not None and model.cfg.audio.moment_seconds > 0


def _moment_samples(model: RetrievalModel) -> int:
    return round(model.cfg.audio.moment_seconds * model.cfg.audio.sample_rate)


def _graph_modules(model: RetrievalModel) -> dict[str, torch.nn.Module]:
    modules = {"audio": AudioGraph(model), "clip": ClipGraph(model), "text": TextGraph(model)}
    if _has_moments(model):
        modules["moments"] = MomentGraph(model)
    if model.attention is not None:
        modules["rerank"] = RerankGraph(model)
    return modules


def _run_ort(path: Path, names: list[str], args: tuple) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {}
    for name, value in zip(names, args, strict=True):
        arr = value.numpy()
        expected = next(i for i in sess.get_inputs() if i.name == name).type
        feed[name] = arr.astype(np.int64 if "int64" in expected else np.float32)
    return sess.run(None, feed)


def _reduce_precision(src: Path, dst: Path, precision: str) -> None:
    import onnx

    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
    elif precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = onnx.load(str(src))
        # Inputs and outputs stay float32 so callers need not care; the inside runs in half precision.
        half = convert_float_to_float16(model, keep_io_types=True)
        onnx.save(half, str(dst))
    else:
        raise ExportError(f"unknown precision {precision}")


def export_bundle(checkpoint: str | Path, out: str | Path, precision: str = "fp32",
                  exporter: str = "torchscript", overwrite: bool = False,
                  calibration: dict[str, Any] | None = None) -> Path:
    """Export a trained checkpoint as a bundle folder; returns the folder.

    fp32 graphs are always written and must match PyTorch (cosine >= 0.9999); `precision` adds
    reduced-precision variants of the encoders, made the bundle's default, with their measured deviation
    recorded in the manifest. `calibration` (`training.calibrate.Calibration.to_dict()`) replaces the
    config's fusion weights with fitted ones and is recorded in the manifest.
    """
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}")
    out = Path(out)
    _check_out(Path(checkpoint), out, overwrite)
    model, payload = load_checkpoint(checkpoint)
    model = model.float().eval()
    if model.cosine is None:
        raise ExportError("a bundle needs the cosine head (the prefilter); export a joint or base model")
    work = Path(tempfile.mkdtemp(prefix="hark-export-", dir=out.parent if out.parent.exists() else None))
    try:
        manifest = _write_bundle(model, payload, work, precision, exporter, calibration)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
        out.chmod(0o755)  # mkdtemp made it private
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("bundle %s written to %s", manifest.model.version, out)
    return out


def _check_out(checkpoint: Path, out: Path, overwrite: bool) -> None:
    """`--overwrite` replaces an earlier bundle, nothing else: it emptied any folder it was given, the run folder
    being exported included."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ExportError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    if checkpoint.resolve().is_relative_to(out.resolve()):
        raise ExportError(f"{out} holds the checkpoint being exported; choose another --out")
    if not (out / "manifest.json").is_file():
        raise ExportError(f"{out} is not a bundle folder (no manifest.json): --overwrite replaces only an earlier "
                          "bundle; choose another --out")


def _write_bundle(model: RetrievalModel, payload: dict[str, Any], root: Path, precision: str,
                  exporter: str, calibration: dict[str, Any] | None = None) -> Manifest:
    inputs = _example_inputs(model)
    graphs: dict[str, dict[str, Any]] = {}
    parity: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    for name, module in _graph_modules(model).items():
        names, outs, dynamic = GRAPH_IO[name]
        path = root / f"{name}.onnx"
        started = time.perf_counter()
        _export(module, inputs[name], path, names, outs, dynamic, exporter)
        timings[name] = round(time.perf_counter() - started, 2)
        with torch.no_grad():
            ref = module(*inputs[name])
        ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        got = _run_ort(path, names, inputs[name])
        cos = min(_cosine_rows(r.numpy(), g) for r, g in zip(ref, got, strict=True) if r.numel())
        if cos < PARITY_MIN_COSINE:
            raise ExportError(f"{name}.onnx deviates from PyTorch (cosine {cos:.6f} < {PARITY_MIN_COSINE})")
        parity[name] = {"fp32": round(cos, 6)}
        files = {"fp32": path.name}
        if precision != "fp32" and name in HEAVY:
            variant = root / f"{name}.{precision}.onnx"
            _reduce_precision(path, variant, precision)
            low = _run_ort(variant, names, inputs[name])
            parity[name][precision] = round(
                min(_cosine_rows(r.numpy(), g) for r, g in zip(ref, low, strict=True) if r.numel()), 6)
            files[precision] = variant.name
        graphs[name] = {"files": files, "default": precision if precision in files else "fp32",
                        "inputs": names, "outputs": outs}

    model.tokenizer.tokenizer.save(str(root / "tokenizer.json"))
    cfg = model.cfg
    files = {p.name: sha256_file(p) for p in sorted(root.iterdir()) if p.is_file()}
    version = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
    fusion = {"cosine": cfg.heads.fusion_cosine}
    vectors = {"global": VectorSpec("global", cfg.heads.dim, "Cosine")}
    attention = None
    if model.attention is not None:
        attention = AttentionHead(variant=cfg.heads.attention, heads=cfg.heads.attention_heads, dim=cfg.heads.dim,
                                  compare_to=cfg.heads.compare_to)
        fusion["attention"] = cfg.heads.fusion_attention
        # float32: the Gram rows of the folded clip tensors overflow float16 (see manifest.VectorSpec).
        vectors["tokens"] = VectorSpec("tokens", row_size(model.audio.dim, cfg.heads.attention_heads,
                                                          cfg.audio.max_segments),
                                       "Dot", multivector=True, hnsw_m=0, datatype="float32", on_disk=True)
    moment_s = cfg.audio.moment_seconds if _has_moments(model) else 0.0
    if moment_s and cfg.heads.fusion_order:
        fusion["order"] = cfg.heads.fusion_order
    if moment_s:
        # One byte per value (hark.moments.quantize); only read back for the hits a search returns.
        vectors["moments"] = VectorSpec("moments", cfg.heads.dim, "Cosine", multivector=True, hnsw_m=0,
                                        datatype="uint8", on_disk=True)
    manifest = Manifest(
        model=ModelInfo(name=cfg.name, version=version),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        training={"config": cfg.to_dict(), "epoch": payload.get("epoch"), "best": payload.get("best")},
        audio=AudioFrontEnd(sample_rate=cfg.audio.sample_rate, n_mels=cfg.audio.n_mels, n_fft=cfg.audio.n_fft,
                            win_length=cfg.audio.win_length, hop_length=cfg.audio.hop_length,
                            fmin=cfg.audio.fmin, fmax=cfg.audio.fmax, segment_seconds=cfg.audio.segment_seconds,
                            max_segments=cfg.audio.max_segments,
                            window_seconds=cfg.audio.segment_seconds * cfg.audio.max_segments,
                            embedding_dim=model.audio.dim, moment_seconds=moment_s, moment_hop_seconds=moment_s),
        text=TextFrontEnd(tokenizer="tokenizer.json", max_tokens=cfg.text.max_tokens, lowercase=True,
                          strip_punctuation=True, embedding_dim=model.text.dim,
                          normalization_check=normalize_caption(NORMALIZATION_PROBE)),
        vectors=vectors,
        heads=Heads(fusion=fusion, cosine={"dim": cfg.heads.dim}, attention=attention),
        graphs={name: GraphEntry(**entry) for name, entry in graphs.items()},
        parity=parity,
        export={"exporter": exporter, "opset": OPSET if exporter != "dynamo" else max(OPSET, 18),
                "seconds": timings, "torch": torch.__version__},
        files=files,
        calibration=dict(calibration or {}),
    )
    if calibration and attention is not None:
        manifest.heads.fusion.update({k: float(v) for k, v in calibration["fusion"].items()})
    (root / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2))
    return manifest
