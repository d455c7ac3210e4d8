"""Ingestion throughput with report-size PaSST-S (random weights): PyTorch eager vs ONNX Runtime fp32 / int8.

Clips of 10-30 s are generated and written as FLAC at 44.1 kHz (so decoding includes resampling). Decode time
is measured once and shown separately; each variant then embeds the same decoded windows (segments ->
embeddings -> clip vectors). The int8 variant is also run end to end into the embedded Qdrant (decode,
embed, upsert with wait). Throughput: clips per second and real-time factor (audio seconds per second).

    python benchmarks/ingest.py [--quick] [--device cpu|cuda] [--decoders N]
    python benchmarks/ingest.py --rss [--minutes 10 60 120]

--decoders N decodes with N processes (for GPU machines, where decoding becomes the bottleneck). The
end-to-end row runs the worker's path: decoding in a thread that runs ahead of the encoder (overlapped).
--rss measures peak RSS of one worker process ingesting one recording of each length (32 kHz mono FLAC) with
the tiny bundle (random weights), in a fresh subprocess per length: it must not grow with the length.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from hark.audio import decode_audio
from hark.bundle import Bundle
from hark.demo.synth import make_clip, write_audio
from hark.exporters.onnx_export import export_bundle
from hark.plugin.encoders import AudioEncoder
from hark.settings import Settings
from hark.text import train_bpe_tokenizer
from hark.training.config import load_config
from hark.training.model import RetrievalModel


def build_bundle(tmp: Path, quick: bool) -> tuple[RetrievalModel, Path]:
    # Report-size audio tower and heads; the text tower is irrelevant to ingestion and kept small.
    overrides = ["audio.init=random", "text.model=random", "text.hidden_size=256", "text.num_layers=1",
                 "text.num_heads=4", "text.intermediate_size=512", "heads.compare_to=query"]
    if quick:
        overrides.append("audio.depth=4")
    cfg = load_config("joint", overrides)
    torch.manual_seed(0)
    model = RetrievalModel(cfg, train_bpe_tokenizer(["a dog barks"] * 10, 300)).eval()
    ckpt = tmp / "model.pt"
    torch.save(model.checkpoint_payload(), ckpt)
    return model, export_bundle(ckpt, tmp / "bundle", precision="int8")


RSS_CHILD = """
import re, sys, time
from hark.bundle import Bundle
from hark.settings import Settings
from hark.workers.ingest import Ingestor, Item
path, bundle, qdrant = sys.argv[1:4]


def hwm():  # peak RSS of this process in KiB; unlike ru_maxrss it does not inherit the parent's peak at exec
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))


settings = Settings.load(toml_path=qdrant + "/none.toml", env={"HARK_QDRANT_PATH": qdrant, "HARK_DEVICE": "cpu"})
ingestor = Ingestor(Bundle.load(bundle), settings)
start = time.perf_counter()
out = ingestor.ingest([Item(path)], "audio", settings)[0]
assert out.status == "ingested", out
print(hwm(), out.points, time.perf_counter() - start)
"""


def rss_vs_length(minutes: list[int], container: str = "flac") -> None:
    import subprocess
    import sys

    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = load_config("tiny", [])
        torch.manual_seed(0)
        model = RetrievalModel(cfg, train_bpe_tokenizer(["a dog barks"] * 10, 300)).eval()
        torch.save(model.checkpoint_payload(), tmp / "model.pt")
        bundle = export_bundle(tmp / "model.pt", tmp / "bundle", precision="fp32")
        rows = []
        rng = np.random.default_rng(0)
        for m in minutes:
            path = tmp / f"{m}min.{container}"
            with sf.SoundFile(path, "w", 32000, 1, format=container.upper(), subtype="PCM_16") as out:
                for _ in range(m):
                    out.write((0.1 * rng.standard_normal(32000 * 60)).astype(np.float32))
            run = subprocess.run([sys.executable, "-c", RSS_CHILD, str(path), str(bundle), str(tmp / f"q{m}")],
                                 capture_output=True, text=True, check=True)
            peak_kib, windows, seconds = run.stdout.split()
            rows.append({"minutes": m, "format": container, "file_mb": round(path.stat().st_size / 1e6, 1),
                         "peak_rss_mb": round(int(peak_kib) / 1024, 1), "windows": int(windows),
                         "seconds": round(float(seconds), 1)})
            row = rows[-1]
            print(f"{m:5d} min  {container.upper()} {row['file_mb']:7.1f} MB  peak RSS {row['peak_rss_mb']:7.1f} MB  "
                  f"{windows} windows in {row['seconds']} s", flush=True)
            path.unlink()
    print(json.dumps({"rss_vs_length": rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rss", action="store_true", help="peak RSS against recording length (tiny bundle)")
    parser.add_argument("--minutes", type=int, nargs="+", default=[10, 60, 120], help="lengths for --rss")
    parser.add_argument("--format", default="flac", choices=["flac", "wav"], help="container for --rss")
    parser.add_argument("--quick", action="store_true", help="4 clips and a 4-layer PaSST (about a minute)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--clips", type=int, default=None)
    parser.add_argument("--decoders", type=int, default=1, help="decode processes")
    args = parser.parse_args()
    if args.rss:
        rss_vs_length(args.minutes, args.format)
        return
    n = args.clips or (4 if args.quick else 12)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files, seconds = [], 0.0
        for i in range(n):
            duration = float(rng.uniform(10, 30))
            audio, _ = make_clip(rng, duration, 44100)
            files.append(write_audio(tmp / f"clip{i}.flac", audio, 44100, 2))
            seconds += duration
        model, bundle_dir = build_bundle(tmp, args.quick)
        bundle = Bundle.load(bundle_dir)

        start = time.perf_counter()
        if args.decoders > 1:
            with ProcessPoolExecutor(args.decoders) as pool:
                waves = list(pool.map(decode_audio, files))
        else:
            waves = [decode_audio(f) for f in files]
        decode_s = time.perf_counter() - start
        window = 30 * 32000
        windows = [w[:window] for w in waves]

        results = {}
        with torch.no_grad():
            dev = torch.device(args.device)
            model.to(dev)
            start = time.perf_counter()
            for w in windows:
                wave = torch.from_numpy(w)[None].to(dev)
                model.encode_audio(wave, torch.tensor([len(w)], device=dev))
            results["pytorch-eager"] = time.perf_counter() - start
            model.to("cpu")
        for precision in ("fp32", "int8"):
            encoder = AudioEncoder(bundle, args.device, precision=precision)
            encoder.encode_windows(windows[:1])  # session warm-up
            start = time.perf_counter()
            for w in windows:
                encoder.encode_windows([w])
            results[f"onnx-{precision}"] = time.perf_counter() - start

        from hark.workers.ingest import Ingestor, Item

        settings = Settings.load(toml_path=tmp / "none.toml", env={"HARK_QDRANT_PATH": str(tmp / "qdrant"),
                                                                  "HARK_DEVICE": args.device})
        ingestor = Ingestor(bundle, settings)
        start = time.perf_counter()
        outcomes = ingestor.ingest([Item(str(f)) for f in files], "bench", settings)
        end_to_end = time.perf_counter() - start
        assert all(o.status == "ingested" for o in outcomes)

    print(f"ingest benchmark: {n} clips, {seconds:.0f} s of audio (FLAC 44.1 kHz stereo), device {args.device}, "
          f"PaSST {'4 layers (quick)' if args.quick else 'S, 12 layers'}, threads {torch.get_num_threads()}")
    print(f"decode ({args.decoders} process{'es' if args.decoders > 1 else ''}): {decode_s:.2f} s "
          f"({seconds / decode_s:.0f}x real time)")
    print(f"{'variant':16s} {'embed s':>8s} {'clips/s':>8s} {'RTF':>7s}  (clips/s and RTF include decoding)")
    summary = {"device": args.device, "quick": args.quick, "clips": n, "audio_seconds": round(seconds, 1),
               "decode_s": round(decode_s, 2)}
    baseline = results["pytorch-eager"]
    for name, embed in results.items():
        total = embed + decode_s
        print(f"{name:16s} {embed:8.2f} {n / total:8.2f} {seconds / total:7.1f}  ({baseline / embed:.2f}x eager)")
        summary[name] = {"clips_per_s": round(n / total, 3), "realtime_factor": round(seconds / total, 2),
                         "embed_s": round(embed, 2)}
    print(f"{'int8 end to end':16s} {end_to_end:8.2f} {n / end_to_end:8.2f} {seconds / end_to_end:7.1f}  "
          "(decode overlapped with embed, + upsert into embedded Qdrant)")
    summary["onnx-int8-end-to-end"] = {"clips_per_s": round(n / end_to_end, 3),
                                       "realtime_factor": round(seconds / end_to_end, 2)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
