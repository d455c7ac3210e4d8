#!/usr/bin/env bash
# The CUDA paths in one run (about 5 minutes on one H100/H200): a training step of the report-size model (torch,
# bf16 autocast), ingest throughput of the report-size audio encoder in fp16 (ONNX Runtime's CUDA provider), the
# text encoder against batch size, and the folded rerank at K=1000, each beside a CPU baseline in the same process.
# Prints one JSON line per finished section (so a run cut short still reports) and the whole report last.
#
#   bash benchmarks/gpu.sh             # needs a CUDA GPU; onnxruntime-gpu for the ONNX Runtime sections; no network
#   bash benchmarks/gpu.sh --dry-run   # the same steps on the CPU with the tiny model (checks the script, ~1 min)
#   bash benchmarks/gpu.sh --cpu-full  # the report-size steps on the CPU with small counts (slow; no GPU needed)
#
# Everything comes from the installed hark and its Python (PYTHON, default .venv/bin/python): a random-weight
# report-size model (PaSST-S audio tower, RoBERTa-large-size text tower; no pretrained weights) is built, trained
# for a few steps, exported, timed and thrown away. Without ONNX Runtime's CUDA provider the torch section still
# runs, the report says why the others did not, and the exit status is 4.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
MODE="${1:-gpu}"
if [[ "$MODE" != "--dry-run" && "$MODE" != "--cpu-full" && "$MODE" != "gpu" ]]; then
  echo "usage: bash benchmarks/gpu.sh [--dry-run | --cpu-full]" >&2; exit 2
fi
if [[ "$MODE" == "gpu" ]]; then
  # Fail in seconds, with the reason, where there is no GPU (not after minutes of export).
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo '{"error": "no CUDA GPU: nvidia-smi is missing or finds no device (use --dry-run to check the script)"}'
    exit 3
  fi
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
exec timeout "${GPU_SH_TIMEOUT:-470}" "$PY" - "$MODE" <<'PYEOF'
import json, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch  # first: it loads the CUDA libraries (cuBLAS, cuDNN) that ONNX Runtime's CUDA provider needs

mode = sys.argv[1]
gpu = mode == "gpu"
device = "cuda" if gpu else "cpu"
t0 = time.perf_counter()
import onnxruntime as ort

from hark.bundle import Bundle
from hark.exporters.onnx_export import export_bundle
from hark.plugin.encoders import AudioEncoder, Reranker, TextEncoder
from hark.text import train_bpe_tokenizer
from hark.training.config import load_config
from hark.training.model import RetrievalModel
from hark.training.objectives import ContrastiveObjective

result = {"mode": {"gpu": "cuda", "--dry-run": "dry-run", "--cpu-full": "cpu-full"}[mode], "device": device,
          "onnxruntime": ort.__version__, "torch": torch.__version__}


def report(section):
    """One line per finished section: what a run stopped at its time limit has done so far."""
    print(json.dumps({"section": section, section: result.get(section)}), flush=True)


def sync():
    if gpu:
        torch.cuda.synchronize()


def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 2)


ort_cuda = False
if gpu:
    result["gpu"] = torch.cuda.get_device_name(0)
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # a partial preload still lets the session try; the reason is kept
            result["ort_preload"] = repr(exc)[:300]
    ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    result["ort_cuda_provider"] = ort_cuda
    if not ort_cuda:
        result["ort_error"] = ("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu): "
                               f"providers {ort.get_available_providers()}")

if mode == "--dry-run":
    cfg, precision, windows, k, texts, steps, batch_size = load_config("tiny", []), "fp32", 4, 64, 16, 2, 4
else:
    cfg = load_config("joint", ["audio.init=random", "text.model=random"])
    if gpu:
        precision, windows, k, texts, steps, batch_size = "fp16", 64, 1000, 256, 5, cfg.train.batch_size
    else:
        precision, windows, k, texts, steps, batch_size = "fp16", 2, 64, 4, 1, 2
torch.manual_seed(0)
model = RetrievalModel(cfg, train_bpe_tokenizer(["a dog barks", "rain on a tin roof"] * 20, 600))

# -- training step (torch) ------------------------------------------------------------------------------------
def train_rate(batch_size):
    model.to(device).train()
    objective = ContrastiveObjective(model, tau=cfg.train.tau)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    n = int(cfg.train.crop_seconds * cfg.audio.sample_rate)
    gen = torch.Generator().manual_seed(0)
    batch = {"waveform": 0.1 * torch.randn(batch_size, n, generator=gen),
             "lengths": torch.full((batch_size,), n, dtype=torch.long),
             "captions": [f"sound {i}: a siren wails, then a dog barks" for i in range(batch_size)],
             "caption_audio_index": torch.arange(batch_size), "audio_ids": [str(i) for i in range(batch_size)],
             "sources": ["gen"] * batch_size}
    losses = []

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=gpu):
            loss, _ = objective(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    step()  # warm-up: kernels, allocator
    sync()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    ms = median_ms(lambda: (step(), sync()), steps)
    out = {"batch": batch_size, "crop_s": cfg.train.crop_seconds, "amp": "bf16" if gpu else "fp32",
           "step_ms_median": ms, "clips_per_s": round(1000 * batch_size / ms, 1),
           "loss_finite": bool(np.isfinite(losses).all())}
    if gpu:
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    del opt, objective
    return out


while True:
    try:
        result["train_step"] = train_rate(batch_size)
        break
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        if batch_size <= 8:
            result["train_step"] = {"error": "out of GPU memory at batch 8"}
            break
        batch_size //= 2
model.to("cpu").eval()
if gpu:
    torch.cuda.empty_cache()
report("train_step")

with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    torch.save(model.checkpoint_payload(), tmp / "model.pt")
    del model
    start = time.perf_counter()
    bundle = Bundle.load(export_bundle(tmp / "model.pt", tmp / "bundle", precision=precision))
    result["export_s"] = round(time.perf_counter() - start, 1)
    report("export_s")
    rng = np.random.default_rng(0)
    # The CPU baseline runs the same graphs in the same process (fp32: the CPU provider's fp16 kernels are few).
    targets = [("cpu", "fp32")] + ([("cuda", precision)] if ort_cuda else [])
    if mode == "--dry-run":
        targets = [("cpu", precision)]

    # -- ingest: the audio encoder ----------------------------------------------------------------------------
    ingest = {}
    stored = None
    for dev, prec in targets:
        audio = AudioEncoder(bundle, dev, precision=prec)
        wave = [(0.1 * rng.standard_normal(audio.window_samples)).astype(np.float32) for _ in range(8)]
        audio.encode_windows(wave[:2])  # warm-up (CUDA kernels, cuDNN search)
        count = windows if dev != "cpu" or not gpu else max(8, windows // 8)
        out, start = [], time.perf_counter()
        while len(out) < count:
            out.extend(audio.encode_windows(wave))
        s = time.perf_counter() - start
        stored = out if stored is None or dev == "cuda" else stored
        ingest[f"{dev}_{prec}"] = {
            "windows": len(out), "window_s": audio.window_samples / bundle.sample_rate,
            "clips_per_s": round(len(out) / s, 2),
            "realtime_factor": round(len(out) * audio.window_samples / bundle.sample_rate / s, 1),
            "providers": audio.audio.get_providers()[:1]}
        if audio.moments is not None:  # the same windows without the moments sub-windows
            audio.encode_windows(wave[:2], with_moments=False)
            start, done = time.perf_counter(), 0
            while done < count:
                done += len(audio.encode_windows(wave, with_moments=False))
            ingest[f"{dev}_{prec}"]["clips_per_s_without_moments"] = round(done / (time.perf_counter() - start), 2)
        if dev == "cuda" or mode == "--dry-run":
            # The device's curve for AudioEncoder.batch_segments (moments run 4x as many sub-windows a call):
            # 32 windows a call fill the largest batch; the warm-up call meets every shape the timed calls use.
            many, sweep = wave * 4, {}
            for size in (8, 16, 32, 64):
                audio.batch_segments = size
                audio.encode_windows(many)
                row = {}
                for moments in (True, False):
                    start, done = time.perf_counter(), 0
                    while done < 2 * count:
                        done += len(audio.encode_windows(many, with_moments=moments))
                    row["with_moments" if moments else "without_moments"] = round(
                        done / (time.perf_counter() - start), 2)
                sweep[str(size)] = row
            ingest[f"{dev}_{prec}"]["by_batch_segments"] = sweep
        del audio
    result["ingest"] = next(iter(ingest.values())) if len(ingest) == 1 else ingest
    if len(ingest) == 2:
        result["ingest"]["ratio"] = round(ingest[f"cuda_{precision}"]["clips_per_s"] / ingest["cpu_fp32"]["clips_per_s"], 1)
    report("ingest")

    # -- the text encoder against batch size (the micro-batching curve of hark serve) -------------------------
    captions = ["a siren wails, then a dog barks in the distance"] * texts
    text_report, batch = {}, None
    for dev, prec in targets:
        text = TextEncoder(bundle, dev, precision=prec)
        text.encode(captions[:8])
        curve = {}
        for size in (1, 2, 4, 8, 16, 32):
            if size > texts:
                break
            ms = median_ms(lambda size=size: text.encode(captions[:size]), 10 if size <= 8 else 5)
            curve[str(size)] = {"ms": ms, "ms_per_query": round(ms / size, 2)}
        start = time.perf_counter()
        encoded = text.encode(captions)
        s = time.perf_counter() - start
        batch = encoded if batch is None or dev == "cuda" else batch
        text_report[f"{dev}_{prec}"] = {"batch": texts, "texts_per_s": round(texts / s, 1),
                                        "single_ms_median": curve["1"]["ms"], "by_batch": curve,
                                        "providers": text.session.get_providers()[:1]}
        del text
    result["text_encoder"] = next(iter(text_report.values())) if len(text_report) == 1 else text_report
    report("text_encoder")

    # -- the rerank over K candidates -------------------------------------------------------------------------
    if bundle.has_rerank:
        rerank = {}
        rows = [stored[i % len(stored)].rows for i in range(k)]
        for dev, _prec in targets:
            reranker = Reranker(bundle, dev)
            reranker.score(batch.tokens[0], batch.mask[0], rows[:8])
            scores = reranker.score(batch.tokens[0], batch.mask[0], rows)
            assert scores.shape == (k,) and np.isfinite(scores).all()
            rerank[dev] = {"k": k, "ms_median": median_ms(
                lambda r=reranker: r.score(batch.tokens[0], batch.mask[0], rows), 5)}
            del reranker
        result["rerank"] = next(iter(rerank.values())) if len(rerank) == 1 else rerank
        if len(rerank) == 2:
            result["rerank"]["ratio"] = round(rerank["cpu"]["ms_median"] / rerank["cuda"]["ms_median"], 1)
        report("rerank")
result["total_s"] = round(time.perf_counter() - t0, 1)
print(json.dumps(result), flush=True)
sys.exit(4 if gpu and not ort_cuda else 0)
PYEOF
