"""End-to-end query latency through the facade: tokenize, text encoder, Qdrant prefilter + fetch, rerank, fuse.

A bundle with the report-size text encoder (RoBERTa-large, random weights) and a report-size joint head
(d 1024, 8 heads, 3 segments per clip) is exported in fp32 and int8. N clips are stored in the embedded
Qdrant (local mode, in memory): their `global` vectors and `tokens` rows come from the bundle's clip.onnx
over random segment embeddings (1-3 segments per clip). Queries are distinct captions.

    python benchmarks/query.py [--quick] [--sizes 10000 100000] [--candidates 100 200 1000]

Reports p50/p95 of the end-to-end latency and the median of each stage, per (clips, precision, K).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

WORDS = (
    'dog', 'barks', 'rain', 'falls', 'siren', 'wails', 'bell', 'rings', 'bird', 'chirps', 'engine', 'hums',
    'man', 'speaks', 'water', 'drips', 'footsteps', 'approach', 'wind', 'blows', 'car', 'passes', 'door',
    'slams', 'crowd', 'cheers', 'baby', 'cries', 'thunder', 'rumbles',
)


def build_bundle(tmp: Path, quick: bool) -> Path:
    import torch

    from hark.exporters.onnx_export import export_bundle
    from hark.text import train_bpe_tokenizer
    from hark.training.config import load_config
    from hark.training.model import RetrievalModel

    layers = 2 if quick else 24
    overrides = ["audio.init=random", "audio.embed_dim=64", "audio.depth=1", "audio.num_heads=4",
                 "audio.patch=32", "audio.stride=32", "text.model=random"]
    cfg = load_config("joint", overrides)
    hf = {"vocab_size": 50265, "hidden_size": 1024, "num_hidden_layers": layers, "num_attention_heads": 16,
          "intermediate_size": 4096, "max_position_embeddings": 514, "pad_token_id": 1, "bos_token_id": 0,
          "eos_token_id": 2, "type_vocab_size": 1, "model_type": "roberta"}
    torch.manual_seed(0)
    tokenizer = train_bpe_tokenizer([" ".join(WORDS)] * 20, 400)
    model = RetrievalModel(cfg, tokenizer, hf).eval()
    torch.save(model.checkpoint_payload(), tmp / "model.pt")
    return export_bundle(tmp / "model.pt", tmp / "bundle", precision="int8")


def fill(client, bundle, n: int, collection: str, rng: np.random.Generator) -> None:
    from qdrant_client import models

    from hark.plugin.store import ensure_collection

    physical = ensure_collection(client, collection, bundle)
    clip = bundle.session("clip", "cpu")
    m, dim = bundle.max_segments, bundle.manifest["audio"]["embedding_dim"]
    for start in range(0, n, 1000):
        count = min(1000, n - start)
        segs = rng.standard_normal((count, m, dim)).astype(np.float32)
        used = rng.integers(1, m + 1, size=count)
        mask = (np.arange(m)[None, :] < used[:, None]).astype(np.float32)
        glob, rows = clip.run(None, {"segment_embeddings": segs, "segment_mask": mask})
        points = [models.PointStruct(id=str(uuid.UUID(int=start + i)),
                                     vector={"global": glob[i].tolist(), "tokens": rows[i, : used[i]].tolist()},
                                     payload={"n": start + i, "windows": 1})
                  for i in range(count)]
        client.upsert(physical, points, wait=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2k clips, a 2-layer text encoder, 10 queries")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--candidates", type=int, nargs="+", default=[100, 200, 1000])
    parser.add_argument("--queries", type=int, default=None)
    args = parser.parse_args()
    sizes = args.sizes or ([2000] if args.quick else [10000, 100000])
    n_queries = args.queries or (10 if args.quick else 40)
    rng = np.random.default_rng(0)
    queries = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 12)))) for _ in range(n_queries)]

    from qdrant_client import QdrantClient

    from hark.bundle import Bundle
    from hark.plugin.search import AudioSearch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Bundle.load(build_bundle(Path(tmp), args.quick))
        for size in sizes:
            client = QdrantClient(":memory:")
            started = time.perf_counter()
            fill(client, bundle, size, "bench", rng)
            fill_s = time.perf_counter() - started
            for precision in ("fp32", "int8"):
                search = AudioSearch(client, bundle, "bench", "cpu", text_precision=precision)
                search.search(queries[0], limit=10)  # warm-up
                for k in args.candidates:
                    totals, stages = [], []
                    for q in queries:
                        start = time.perf_counter()
                        search.search(q, limit=10, candidates=k)
                        totals.append((time.perf_counter() - start) * 1000)
                        stages.append(search.last_times.as_ms())
                    med = {s: round(statistics.median(x[s] for x in stages), 2) for s in stages[0]}
                    p50 = statistics.median(totals)
                    p95 = float(np.percentile(totals, 95))
                    rows.append({"clips": size, "precision": precision, "k": k, "p50_ms": round(p50, 1),
                                 "p95_ms": round(p95, 1), "stages_ms": med,
                                 "rerank_share": round(med["rerank"] / p50, 3), "fill_s": round(fill_s, 1)})
            client.close()

    print(f"query benchmark: text encoder RoBERTa-large ({'2 layers, quick' if args.quick else '24 layers'}), "
          f"d 1024, 8 heads, up to 3 segments per clip, embedded Qdrant (local mode, in memory), "
          f"{n_queries} queries, limit 10")
    print(f"{'clips':>7} {'prec':>5} {'K':>5} {'p50':>7} {'p95':>7} | {'tok':>5} {'text':>6} {'qdrant':>7} "
          f"{'rerank':>7} {'fuse':>5} | rerank share")
    for r in rows:
        s = r["stages_ms"]
        print(f"{r['clips']:>7} {r['precision']:>5} {r['k']:>5} {r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} | "
              f"{s['tokenize']:>5.1f} {s['text_encoder']:>6.1f} {s['prefilter']:>7.1f} {s['rerank']:>7.1f} "
              f"{s['fuse']:>5.1f} | {100 * r['rerank_share']:.1f}%")
    target = next((r for r in rows if r["clips"] == max(sizes) and r["precision"] == "int8" and r["k"] == 200),
                  rows[-1])
    print(json.dumps({"clips": target["clips"], "precision": target["precision"], "k": target["k"],
                      "p50_ms": target["p50_ms"], "p95_ms": target["p95_ms"], "stages_ms": target["stages_ms"],
                      "rerank_share": target["rerank_share"]}))


if __name__ == "__main__":
    main()
