"""Report-size export: PaSST-S and RoBERTa-large with random weights, through both torch.onnx exporters.

For each exporter: export time per graph, file sizes, session load time, and per-item latency of
ONNX Runtime fp32 and int8 (one 10 s segment through audio.onnx, one 32-token query through text.onnx) next
to PyTorch eager measured in the same process, with the cosine of int8 against fp32 outputs.

    python benchmarks/export.py [--quick] [--exporter torchscript|dynamo|both]

--quick uses 2-layer towers of the report's widths (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from hark.bundle import Bundle
from hark.exporters.onnx_export import export_bundle
from hark.onnx import create_session
from hark.text import train_bpe_tokenizer
from hark.training.config import load_config
from hark.training.model import RetrievalModel

CAPTIONS = ["a dog barks while rain falls on a tin roof and a car passes by in the distance slowly"] * 20


def roberta_large(layers: int) -> dict:
    return {"vocab_size": 50265, "hidden_size": 1024, "num_hidden_layers": layers, "num_attention_heads": 16,
            "intermediate_size": 4096, "max_position_embeddings": 514, "pad_token_id": 1, "bos_token_id": 0,
            "eos_token_id": 2, "type_vocab_size": 1, "layer_norm_eps": 1e-5, "model_type": "roberta"}


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2-layer towers of the report's widths")
    parser.add_argument("--exporter", default="both", choices=["torchscript", "dynamo", "both"])
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement")
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 10)
    depth = 2 if args.quick else None
    torch.manual_seed(0)
    overrides = ["audio.init=random", "text.model=random"]
    if depth:
        overrides.append(f"audio.depth={depth}")
    cfg = load_config("joint", overrides)
    tokenizer = train_bpe_tokenizer(CAPTIONS, 300)
    model = RetrievalModel(cfg, tokenizer, roberta_large(depth or 24)).eval()
    params = {"audio": sum(p.numel() for p in model.audio.parameters()),
              "text": sum(p.numel() for p in model.text.parameters())}
    segment = 0.1 * torch.randn(1, 320000)
    ids, mask = tokenizer.encode(CAPTIONS[:1])
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        eager = {
            "audio": median_ms(lambda: model.audio.embed_segments(segment), reps),
            "text": median_ms(lambda: model.text(ids_t, mask_t), reps),
        }
    exporters = ["torchscript", "dynamo"] if args.exporter == "both" else [args.exporter]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.pt"
        torch.save(model.checkpoint_payload(), ckpt)
        for exporter in exporters:
            out = Path(tmp) / f"bundle-{exporter}"
            started = time.perf_counter()
            try:
                export_bundle(ckpt, out, precision="int8", exporter=exporter)
            except Exception as exc:
                rows.append({"exporter": exporter, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
                traceback.print_exc()
                continue
            export_s = time.perf_counter() - started
            bundle = Bundle.load(out)
            row = {"exporter": exporter, "export_s": round(export_s, 1),
                   "graph_export_s": bundle.manifest.export["seconds"], "parity": bundle.manifest.parity}
            for graph, feed in (("audio", {"segments": segment.numpy()}),
                                ("text", {"input_ids": ids, "attention_mask": mask})):
                for precision in ("fp32", "int8"):
                    path = bundle.graph_path(graph, precision)
                    load_start = time.perf_counter()
                    sess = create_session(path, "cpu")
                    load_s = time.perf_counter() - load_start
                    ms = median_ms(lambda s=sess, f=feed: s.run(None, f), reps)
                    row[f"{graph}_{precision}"] = {"mb": round(path.stat().st_size / 2**20, 1),
                                                   "load_s": round(load_s, 2), "ms": round(ms, 1)}
                fp32 = create_session(bundle.graph_path(graph, "fp32"), "cpu").run(None, feed)[0]
                int8 = create_session(bundle.graph_path(graph, "int8"), "cpu").run(None, feed)[0]
                row[f"{graph}_int8_cos"] = round(cosine(fp32, int8), 5)
            rows.append(row)

    print(f"report-size export benchmark ({'quick: 2 layers' if args.quick else 'full depth'}); "
          f"params audio {params['audio'] / 1e6:.1f} M, text {params['text'] / 1e6:.1f} M; "
          f"threads {torch.get_num_threads()}")
    print(f"PyTorch eager: audio (one 10 s segment) {eager['audio']:.1f} ms, text (one query) {eager['text']:.1f} ms")
    for row in rows:
        if "error" in row:
            print(f"{row['exporter']:12s} FAILED: {row['error']}")
            continue
        print(f"{row['exporter']:12s} export {row['export_s']} s (per graph {row['graph_export_s']})")
        for graph in ("audio", "text"):
            for precision in ("fp32", "int8"):
                r = row[f"{graph}_{precision}"]
                print(f"  {graph:5s} {precision}: {r['mb']:8.1f} MB  load {r['load_s']:5.2f} s  "
                      f"{r['ms']:8.1f} ms/item  ({eager[graph] / r['ms']:.2f}x eager)")
            print(f"  {graph:5s} int8 vs fp32 cosine {row[f'{graph}_int8_cos']}")
    best = next((r for r in rows if "error" not in r), None)
    summary = {"quick": args.quick, "eager_audio_ms": round(eager["audio"], 1),
               "eager_text_ms": round(eager["text"], 1)}
    if best:
        summary.update({"exporter": best["exporter"], "audio_fp32_ms": best["audio_fp32"]["ms"],
                        "audio_int8_ms": best["audio_int8"]["ms"], "text_fp32_ms": best["text_fp32"]["ms"],
                        "text_int8_ms": best["text_int8"]["ms"], "audio_int8_cos": best["audio_int8_cos"],
                        "text_int8_cos": best["text_int8_cos"], "audio_fp32_mb": best["audio_fp32"]["mb"],
                        "text_fp32_mb": best["text_fp32"]["mb"]})
    summary["exporters"] = {r["exporter"]: ("failed" if "error" in r else r["export_s"]) for r in rows}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
