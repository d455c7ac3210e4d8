"""Moments: does a hit's span cover the sound the query names? Measured through the exported bundle.

Held-out synthetic clips (12-28 s, one stored window each) hold two or three events one after another with known
onsets and offsets. For each event, its caption clause (e.g. "a dog barks") is the query; the span comes from
the product path: the bundle's moments graph at ingest (quantised as stored), the text graph's sentence vector,
`hark.moments.best_span`. Reported: the share of queries whose span has IoU >= 0.5 with the event, the mean IoU,
the same for the whole window (what a hit without moments points at), a sweep of `keep` (the default 0.5 was set
before any measurement), the bytes stored per 30 s window with and without moments, and the ingest cost of
moments (the same windows encoded with and without them, in this process).

    python benchmarks/moments.py --run RUN_DIR --variant a|b [--scenes 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hark.bundle import Bundle
from hark.demo.spans import ProductScorer, order_accuracy, planted_clips, span_quality, split_map, swapped_pairs
from hark.demo.synth import VARIANTS
from hark.plugin.encoders import AudioEncoder

# Report-size stored shapes (benchmarks/README.md "rerank"): global 1024, tokens 3 x 960, moments 15 x 1024.
REPORT = {"global": 1024, "tokens": 3 * 960, "moments": 15 * 1024}


def measure(bundle: Bundle, clips, threads: int) -> dict:
    result = span_quality(bundle, clips)
    spec, sr = bundle.moments, bundle.sample_rate
    audio = AudioEncoder(bundle, "cpu")
    # Bytes per full window, this model: global and tokens as float32, moments one byte per value.
    glob, rows_ = bundle.manifest.vectors["global"].size, 0
    if "tokens" in bundle.manifest.vectors:
        rows_ = bundle.max_segments * bundle.manifest.vectors["tokens"].size
    window_s = bundle.segment_samples * bundle.max_segments / sr
    moments = len(spec.starts(window_s)) * bundle.manifest.vectors["moments"].size
    before = 4 * (glob + rows_)
    after = before + moments

    # Ingest cost: the same 30 s windows with and without moments, interleaved.
    rng = np.random.default_rng(0)
    windows = [(0.1 * rng.standard_normal(audio.window_samples)).astype(np.float32) for _ in range(4)]
    audio.encode_windows(windows[:1])
    audio.encode_windows(windows[:1], with_moments=False)
    with_m, without = [], []
    for _ in range(3):
        t = time.perf_counter()
        audio.encode_windows(windows)
        with_m.append(time.perf_counter() - t)
        t = time.perf_counter()
        audio.encode_windows(windows, with_moments=False)
        without.append(time.perf_counter() - t)
    ingest = {"ms_per_window_with": round(1000 * statistics.median(with_m) / len(windows), 1),
              "ms_per_window_without": round(1000 * statistics.median(without) / len(windows), 1)}
    ingest["ratio"] = round(ingest["ms_per_window_with"] / ingest["ms_per_window_without"], 2)
    report_before = 4 * (REPORT["global"] + REPORT["tokens"])
    return {
        **result,
        "bytes_per_window": {"without": before, "with": after, "ratio": round(after / before, 2),
                             "report_size_without": report_before,
                             "report_size_with": report_before + REPORT["moments"],
                             "report_size_ratio": round((report_before + REPORT["moments"]) / report_before, 2)},
        "ingest": ingest, "threads": threads,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="training run folder (best.pt) or checkpoint")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="a")
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=60, help="swapped-order pairs for order accuracy (0: skip)")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="a corpus folder (benchmarks/quality.py's) whose evaluation split gives mAP@10 with "
                             "and without the order term")
    parser.add_argument("--split", default="evaluation", help="the corpus split for --corpus")
    parser.add_argument("--weights", type=float, nargs="*", default=[0.0, 0.05, 0.1, 0.2, 0.5],
                        help="weights of the order term to report")
    args = parser.parse_args(argv)
    import os

    os.environ["HARK_ORT_THREADS"] = str(args.threads)
    from hark.exporters.onnx_export import export_bundle

    checkpoint = args.run / "best.pt" if args.run.is_dir() else args.run
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Bundle.load(export_bundle(checkpoint, Path(tmp) / "bundle"))
        result = {"variant": args.variant, "checkpoint": str(checkpoint),
                  **measure(bundle, planted_clips(args.variant, args.scenes), args.threads)}
        scorer = ProductScorer(bundle)
        if args.pairs:
            result["order_accuracy"] = order_accuracy(scorer, swapped_pairs(args.variant, args.pairs), args.weights)
        if args.corpus is not None:
            result["eval"] = {"split": args.split, **split_map(scorer, args.corpus, args.weights, args.split)}
    print(f"moments, variant {args.variant}: {result['queries']} queries, IoU >= 0.5 for "
          f"{result['iou50_share']:.1%} (whole window {result['whole_window']['iou50_share']:.1%}), "
          f"mean IoU {result['mean_iou']:.3f}; bytes x{result['bytes_per_window']['ratio']} "
          f"(report size x{result['bytes_per_window']['report_size_ratio']}); ingest x{result['ingest']['ratio']}")
    for key in ("order_accuracy", "eval"):
        if key in result:
            print(key, result[key])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
