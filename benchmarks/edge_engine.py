"""Exact search vs HNSW on the embedded engine (hark.store.edge.EdgeStore), to choose the search defaults.

    python benchmarks/edge_engine.py --points 20000 --dim 256 [--noise 0.6] [--queries 20] [--ks 200,1000]

Synthetic clustered vectors (cosine), `global` only, no filter. Prints per-configuration p50 latency and recall
against exact search; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
from qdrant_client.http import models

from hark.store.edge import EdgeStore, folder_size


def _data(n: int, dim: int, noise: float, seed: int = 0) -> np.ndarray:
    """Points around n/200 random centres; `noise` is the spread relative to the centres (higher = harder)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(8, n // 200), dim)).astype(np.float32)
    return centers[rng.integers(0, len(centers), n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)


def _timed_query(store: EdgeStore, q: np.ndarray, k: int, params: models.SearchParams) -> tuple[float, list]:
    start = time.perf_counter()
    res = store.query_points("c", query=q.tolist(), using="global", limit=k, search_params=params, with_payload=False)
    return (time.perf_counter() - start) * 1000, [p.id for p in res.points]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--ks", default="200,1000")
    ap.add_argument("--noise", type=float, default=0.6)
    ap.add_argument("--extra", type=int, default=0, help="points added after the first optimize (default 10%%)")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    args.extra = args.extra or args.points // 10
    x = _data(args.points, args.dim, args.noise)
    rng = np.random.default_rng(1)
    queries = x[rng.integers(0, len(x), args.queries)] + 0.3 * rng.standard_normal((args.queries, args.dim))
    out: dict = {"points": args.points, "dim": args.dim, "noise": args.noise, "queries": args.queries}
    with tempfile.TemporaryDirectory() as tmp, EdgeStore(tmp) as store:
        store.create_collection("c", vectors_config={
            "global": models.VectorParams(size=args.dim, distance=models.Distance.COSINE)})
        start = time.perf_counter()
        for lo in range(0, len(x), 1000):
            store.upsert("c", models.Batch(ids=list(range(lo, min(lo + 1000, len(x)))),
                                           vectors={"global": x[lo:lo + 1000].tolist()}))
        out["upsert_s"] = round(time.perf_counter() - start, 2)
        out["unindexed_before"] = store.unindexed_count("c")
        start = time.perf_counter()
        store.optimize("c")
        out["optimize_s"] = round(time.perf_counter() - start, 2)
        out["unindexed_after"] = store.unindexed_count("c")
        out["disk_mb"] = round(folder_size(tmp) / 1e6, 1)
        for k in ks:
            exact = [_timed_query(store, q, k, models.SearchParams(exact=True)) for q in queries]
            out[f"exact_k{k}_p50_ms"] = round(statistics.median(t for t, _ in exact), 2)
            for factor in (1, 2):
                ef = factor * k
                hnsw = [_timed_query(store, q, k, models.SearchParams(hnsw_ef=ef)) for q in queries]
                recall = statistics.mean(len(set(h) & set(e)) / k for (_, h), (_, e) in zip(hnsw, exact, strict=True))
                out[f"hnsw_k{k}_ef{ef}_p50_ms"] = round(statistics.median(t for t, _ in hnsw), 2)
                out[f"hnsw_k{k}_ef{ef}_recall"] = round(recall, 3)
            print({key: v for key, v in out.items() if f"k{k}_" in key}, flush=True)
        # Incremental ingest: what a batch of new, unindexed points costs queries, and re-optimising.
        extra = _data(args.extra, args.dim, args.noise, seed=2)
        for lo in range(0, len(extra), 1000):
            ids = list(range(len(x) + lo, len(x) + min(lo + 1000, len(extra))))
            store.upsert("c", models.Batch(ids=ids, vectors={"global": extra[lo:lo + 1000].tolist()}))
        out["extra_points"] = args.extra
        out["extra_unindexed"] = store.unindexed_count("c")
        k = ks[0]
        mixed = [_timed_query(store, q, k, models.SearchParams(hnsw_ef=2 * k))[0] for q in queries]
        out[f"extra_hnsw_k{k}_p50_ms"] = round(statistics.median(mixed), 2)
        start = time.perf_counter()
        store.optimize("c")
        out["reoptimize_s"] = round(time.perf_counter() - start, 2)
        after = [_timed_query(store, q, k, models.SearchParams(hnsw_ef=2 * k))[0] for q in queries]
        out[f"reoptimized_hnsw_k{k}_p50_ms"] = round(statistics.median(after), 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
