"""Ingestion throughput with report-size PaSST-S (random weights): PyTorch eager vs ONNX Runtime fp32 / int8.

Clips of 10-30 s are generated and written as FLAC at 44.1 kHz (so decoding includes resampling). Decode time
is measured once and shown separately; each variant then embeds the same decoded windows (segments ->
embeddings -> clip vectors). The int8 variant is also run end to end into the embedded Qdrant (decode,
embed, upsert with wait). Throughput: clips per second and real-time factor (audio seconds per second).

    python benchmarks/ingest.py [--quick] [--device cpu|cuda] [--decoders N]

--decoders N decodes with N processes (for GPU machines, where decoding becomes the bottleneck).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 clips and a 4-layer PaSST (about a minute)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--clips", type=int, default=None)
    parser.add_argument("--decoders", type=int, default=1, help="decode processes")
    args = parser.parse_args()
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
          "(decode + embed + upsert into embedded Qdrant)")
    summary["onnx-int8-end-to-end"] = {"clips_per_s": round(n / end_to_end, 3),
                                       "realtime_factor": round(seconds / end_to_end, 2)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
