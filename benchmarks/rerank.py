"""Folded vs unfolded cross-modal attention reranker through ONNX Runtime, on the same inputs.

Report-size head (audio 768, text 1024, d = 1024, 8 heads), 32 query tokens, 3 segments per clip, random
weights. The unfolded graph is the report's head evaluated candidate by candidate (eqs. 1-7: the d x d
projections run for every text token of every candidate); the folded graph scores the clip tensors that
ingestion stores. Both get the same candidates; the folded one also pays for nothing that ingestion did.

    python benchmarks/rerank.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from hark.exporters.graphs import ClipGraph, LiteralRerankGraph, RerankGraph, row_size
from hark.exporters.onnx_export import _export
from hark.training.heads import CosineHead, CrossModalAttentionHead

AUDIO_DIM, TEXT_DIM, DIM, HEADS, SEGMENTS, TOKENS = 768, 1024, 1024, 8, 3, 32


def session(path: Path, device: str):
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), providers=providers)
    if device == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        sys.exit("CUDA execution provider unavailable")
    return sess


def timed(sess, feed: dict[str, np.ndarray], reps: int, device: str) -> tuple[float, np.ndarray]:
    """Median milliseconds per call; on CUDA inputs are bound on the device once (I/O binding)."""
    if device == "cuda":
        import onnxruntime as ort

        binding = sess.io_binding()
        for name, value in feed.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
        binding.bind_output(sess.get_outputs()[0].name, "cuda")

        def call():
            sess.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
    else:
        def call():
            return sess.run(None, feed)[0]
    out = call()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (about a minute on 2 cores)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    torch.manual_seed(0)
    head = CrossModalAttentionHead(AUDIO_DIM, TEXT_DIM, DIM, HEADS, "full", "text").eval()
    holder = SimpleNamespace(attention=head, cosine=CosineHead(AUDIO_DIM, TEXT_DIM, DIM))
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((1, TOKENS, TEXT_DIM)).astype(np.float32)
    token_mask = np.ones((1, TOKENS), np.float32)
    sizes = [100, 1000]
    reps = {100: 5 if args.quick else 20, 1000: 3 if args.quick else 10}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        k0 = 4
        seg0 = torch.randn(k0, SEGMENTS, AUDIO_DIM)
        mask0 = torch.ones(k0, SEGMENTS)
        with torch.no_grad():
            _, rows0 = ClipGraph(holder)(seg0, mask0)
        folded_args = (torch.from_numpy(tokens), torch.from_numpy(token_mask), rows0[None], mask0[None])
        _export(RerankGraph(holder), folded_args, tmp / "folded.onnx", ["tokens", "token_mask", "rows", "segment_mask"],
                ["scores"], {"tokens": {1: "n"}, "token_mask": {1: "n"}, "rows": {1: "k"}, "segment_mask": {1: "k"}},
                "torchscript")
        _export(LiteralRerankGraph(holder), (torch.from_numpy(tokens), torch.from_numpy(token_mask), seg0, mask0),
                tmp / "unfolded.onnx", ["tokens", "token_mask", "segments", "segment_mask"], ["scores"],
                {"tokens": {1: "n"}, "token_mask": {1: "n"}, "segments": {0: "k"}, "segment_mask": {0: "k"}},
                "torchscript")
        folded, unfolded = session(tmp / "folded.onnx", args.device), session(tmp / "unfolded.onnx", args.device)
        results = {}
        errors, abs_errors = [], []
        for k in sizes:
            segments = rng.standard_normal((k, SEGMENTS, AUDIO_DIM)).astype(np.float32)
            seg_mask = np.ones((k, SEGMENTS), np.float32)
            seg_mask[::3, 2] = 0  # a third of the clips are 20 s long
            with torch.no_grad():
                _, rows = ClipGraph(holder)(torch.from_numpy(segments), torch.from_numpy(seg_mask))
            rows = rows.numpy()
            u_ms, u_out = timed(unfolded, {"tokens": tokens, "token_mask": token_mask, "segments": segments,
                                           "segment_mask": seg_mask}, reps[k], args.device)
            f_ms, f_out = timed(folded, {"tokens": tokens, "token_mask": token_mask, "rows": rows[None],
                                         "segment_mask": seg_mask[None]}, reps[k], args.device)
            # Random weights give near-orthogonal vectors, so single scores sit near zero where fp32 rounding
            # dominates any elementwise ratio; the error is taken relative to the largest score instead.
            diff = np.abs(f_out.ravel() - u_out.ravel())
            errors.append(float(diff.max() / np.abs(u_out).max()))
            abs_errors.append(float(diff.max()))
            results[k] = (u_ms, f_ms)
    row = row_size(AUDIO_DIM, HEADS, SEGMENTS)
    print(f"hark rerank benchmark  device={args.device}  machine={platform.machine()} "
          f"{platform.processor() or ''} threads={torch.get_num_threads()}")
    print(f"head: audio {AUDIO_DIM}, text {TEXT_DIM}, d {DIM}, {HEADS} heads; {TOKENS} tokens; {SEGMENTS} segments")
    print(f"{'K':>6} {'unfolded ms':>12} {'folded ms':>10} {'speedup':>8}")
    for k, (u_ms, f_ms) in results.items():
        print(f"{k:>6} {u_ms:>12.2f} {f_ms:>10.2f} {u_ms / f_ms:>7.1f}x")
    per_clip_fp32 = SEGMENTS * row * 4 + DIM * 4
    print(f"stored per clip ({SEGMENTS} segments): tokens multivector {SEGMENTS} x {row} (segment embedding "
          f"{AUDIO_DIM} + Gram rows {HEADS} x {HEADS * SEGMENTS}) + global {DIM} = "
          f"{per_clip_fp32} bytes fp32, {per_clip_fp32 // 2} bytes fp16")
    print(f"folded vs unfolded: max abs error {max(abs_errors):.2e}, relative to the largest score {max(errors):.2e}")
    u1000, f1000 = results[1000]
    print(json.dumps({"device": args.device, "speedup_k1000": round(u1000 / f1000, 1),
                      "folded_ms_k1000": round(f1000, 2), "unfolded_ms_k1000": round(u1000, 2),
                      "folded_ms_k100": round(results[100][1], 2), "unfolded_ms_k100": round(results[100][0], 2),
                      "max_rel_err": float(f"{max(errors):.3e}"),
                      "max_abs_err": float(f"{max(abs_errors):.3e}"), "bytes_per_clip_fp32": per_clip_fp32,
                      "bytes_per_clip_fp16": per_clip_fp32 // 2}))


if __name__ == "__main__":
    main()
