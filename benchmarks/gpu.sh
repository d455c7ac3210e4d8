#!/usr/bin/env bash
# The CUDA paths in one run (under 8 minutes on one H100): ingest throughput of the report-size audio encoder
# in fp16, the folded rerank at K=1000, the text encoder; prints one JSON line (the last line of output).
#
#   bash benchmarks/gpu.sh            # needs a CUDA GPU and onnxruntime-gpu in .venv; no network
#   bash benchmarks/gpu.sh --dry-run  # the same steps on the CPU with a tiny model (checks the script)
#
# Everything comes from the working tree and its .venv: a random-weight report-size model is exported
# (PaSST-S audio tower, RoBERTa-large-size text tower; no pretrained weights needed), timed, thrown away.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
MODE="${1:-gpu}"
if [[ "$MODE" != "--dry-run" && "$MODE" != "gpu" ]]; then
  echo "usage: bash benchmarks/gpu.sh [--dry-run]" >&2; exit 2
fi
if [[ "$MODE" == "gpu" ]]; then
  # Fail in seconds, with the reason, where there is no GPU (not after minutes of export).
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo '{"error": "no CUDA GPU: nvidia-smi is missing or finds no device (use --dry-run to check the script)"}'
    exit 3
  fi
  if ! "$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())'; then
    echo '{"error": "onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu in .venv"}'
    exit 3
  fi
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
exec timeout 470 "$PY" - "$MODE" <<'PYEOF'
import json, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

dry = sys.argv[1] == "--dry-run"
device = "cpu" if dry else "cuda"
t0 = time.perf_counter()
from hark.bundle import Bundle
from hark.exporters.onnx_export import export_bundle
from hark.plugin.encoders import AudioEncoder, Reranker, TextEncoder
from hark.text import train_bpe_tokenizer
from hark.training.config import load_config
from hark.training.model import RetrievalModel

result = {"mode": "dry-run" if dry else "cuda", "device": device}
if not dry:
    result["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "unknown"
with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    if dry:
        cfg, precision, windows, k, texts = load_config("tiny", []), "fp32", 4, 64, 16
    else:
        cfg = load_config("joint", ["audio.init=random", "text.model=random"])
        precision, windows, k, texts = "fp16", 64, 1000, 256
    torch.manual_seed(0)
    model = RetrievalModel(cfg, train_bpe_tokenizer(["a dog barks", "rain on a tin roof"] * 20, 600)).eval()
    torch.save(model.checkpoint_payload(), tmp / "model.pt")
    del model
    bundle = Bundle.load(export_bundle(tmp / "model.pt", tmp / "bundle", precision=precision))
    result["export_s"] = round(time.perf_counter() - t0, 1)
    rng = np.random.default_rng(0)

    audio = AudioEncoder(bundle, device, precision=precision)
    wave = [(0.1 * rng.standard_normal(audio.window_samples)).astype(np.float32) for _ in range(8)]
    audio.encode_windows(wave[:2])  # warm-up (CUDA kernels, cuDNN search)
    start = time.perf_counter()
    stored = []
    while len(stored) < windows:
        stored.extend(audio.encode_windows(wave))
    s = time.perf_counter() - start
    windows = len(stored)
    result["ingest_fp16" if not dry else "ingest"] = {
        "windows": windows, "window_s": audio.window_samples / bundle.sample_rate,
        "clips_per_s": round(windows / s, 2), "realtime_factor": round(windows * audio.window_samples / bundle.sample_rate / s, 1)}

    text = TextEncoder(bundle, device)
    captions = ["a siren wails, then a dog barks in the distance"] * texts
    text.encode(captions[:8])
    start = time.perf_counter()
    batch = text.encode(captions)
    s = time.perf_counter() - start
    one = []
    for _ in range(20):
        t = time.perf_counter()
        text.encode(captions[:1])
        one.append(time.perf_counter() - t)
    result["text_encoder"] = {"batch": texts, "texts_per_s": round(texts / s, 1),
                              "single_ms_median": round(1000 * float(np.median(one)), 2)}

    if bundle.has_rerank:
        reranker = Reranker(bundle, device)
        rows = [stored[i % len(stored)].rows for i in range(k)]
        reranker.score(batch.tokens[0], batch.mask[0], rows[:8])
        times = []
        for _ in range(5):
            t = time.perf_counter()
            scores = reranker.score(batch.tokens[0], batch.mask[0], rows)
            times.append(time.perf_counter() - t)
        assert scores.shape == (k,) and np.isfinite(scores).all()
        result["rerank"] = {"k": k, "ms_median": round(1000 * float(np.median(times)), 2)}
result["total_s"] = round(time.perf_counter() - t0, 1)
print(json.dumps(result))
PYEOF
