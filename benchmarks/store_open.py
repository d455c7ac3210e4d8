"""Opening an embedded store folder: what the engine's write-ahead log costs on every load, and what `EdgeStore` does
about it.

    python benchmarks/store_open.py [--clips 20000] [--batch 1000] [--repeats 7] [--quick]

The engine (qdrant-edge) replays the newest entry of a shard's WAL each time the shard loads, even when that entry
was flushed long ago. hark's writers upsert in batches, so the newest entry used to be a whole batch of clips with
their `tokens` and `moments` rows, decoded again by every process that opened the folder (`hark search`, a worker,
`hark serve`). `EdgeStore` now ends a writer's log with an empty operation (`_seal`) and flushes on a timer during
long writes.

Two folders get the same clips (report-size layout: `global` 1024, `tokens` 3 x 960, `moments` 10 x 1024 uint8,
a payload like ingestion's) through `EdgeStore`, in `--batch`-clip upserts: "sealed" as hark writes them now,
"unsealed" with the seal switched off (the previous behaviour). Then each folder is opened in turn, `--repeats`
times: a fresh `EdgeStore` and its first `count`, which loads the shard. Prints medians and the ratio; the last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from qdrant_client.http import models

import hark.store.edge as edge
from hark.store.edge import EdgeStore, folder_size

VECTORS = {
    "global": models.VectorParams(size=1024, distance=models.Distance.COSINE),
    "tokens": models.VectorParams(size=960, distance=models.Distance.DOT, on_disk=True,
                                  hnsw_config=models.HnswConfigDiff(m=0),
                                  multivector_config=models.MultiVectorConfig(
                                      comparator=models.MultiVectorComparator.MAX_SIM)),
    "moments": models.VectorParams(size=1024, distance=models.Distance.COSINE, on_disk=True,
                                   datatype=models.Datatype.UINT8, hnsw_config=models.HnswConfigDiff(m=0),
                                   multivector_config=models.MultiVectorConfig(
                                       comparator=models.MultiVectorComparator.MAX_SIM)),
}


def _write(folder: Path, clips: int, batch: int, seal: bool) -> float:
    rng = np.random.default_rng(0)
    original = edge.EdgeStore._seal
    if not seal:
        def flush_only(self, physical, shard):  # the behaviour before `_seal`: flush, nothing logged
            shard.flush()
            self._dirty.discard(physical)
        edge.EdgeStore._seal = flush_only
    start = time.perf_counter()
    try:
        with EdgeStore(folder) as store:
            store.create_collection("c", vectors_config=VECTORS)
            for lo in range(0, clips, batch):
                n = min(batch, clips - lo)
                g = rng.standard_normal((n, 1024), dtype=np.float32)
                t = rng.standard_normal((n, 3, 960), dtype=np.float32)
                m = rng.integers(0, 256, (n, 10, 1024))
                store.upsert("c", models.Batch(
                    ids=list(range(lo, lo + n)),
                    vectors={"global": g.tolist(), "tokens": t.tolist(), "moments": m.tolist()},
                    payloads=[{"source_uri": f"file:///clips/{i}.wav", "duration": 30.0, "window": 0,
                               "meta": {"split": "test"}} for i in range(lo, lo + n)]))
    finally:
        edge.EdgeStore._seal = original
    return time.perf_counter() - start


def _open(folder: Path) -> float:
    start = time.perf_counter()
    with EdgeStore(folder) as store:
        store.count("c", exact=False)
        took = time.perf_counter() - start
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="2,000 clips, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.clips, args.repeats = 2000, 3
    with tempfile.TemporaryDirectory(prefix="hark-open-") as tmp:
        folders = {"sealed": Path(tmp) / "sealed", "unsealed": Path(tmp) / "unsealed"}
        write_s = {name: _write(path, args.clips, args.batch, seal=name == "sealed") for name, path in folders.items()}
        times: dict[str, list[float]] = {name: [] for name in folders}
        for _ in range(args.repeats):  # alternate, so both see the same machine load
            for name, path in folders.items():
                times[name].append(_open(path))
        med = {name: statistics.median(v) for name, v in times.items()}
        for name in folders:
            print(f"{name:9s} open + first count: median {med[name] * 1000:7.1f} ms "
                  f"(min {min(times[name]) * 1000:.1f}, max {max(times[name]) * 1000:.1f}); "
                  f"written in {write_s[name]:.1f} s; folder {folder_size(folders[name]) / 1e6:.0f} MB")
        ratio = med["unsealed"] / med["sealed"]
        print(f"unsealed / sealed: {ratio:.1f}x")
        print(json.dumps({"clips": args.clips, "batch": args.batch, "repeats": args.repeats,
                          "open_ms": {k: round(v * 1000, 1) for k, v in med.items()}, "ratio": round(ratio, 2),
                          "write_s": {k: round(v, 1) for k, v in write_s.items()}}))


if __name__ == "__main__":
    main()
