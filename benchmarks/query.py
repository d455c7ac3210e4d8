"""Query latency at scale on the embedded Qdrant engine (`EdgeStore`, qdrant-edge): ingest, index, open, search.

A bundle with the report-size text encoder (RoBERTa-large, 24 layers, random weights, int8) and a report-size joint
head (`global` 1024, `tokens` up to 3 x 960 rows) is exported (in a child process, so this one never imports torch).
N clips of precomputed vectors are written to an EdgeStore folder on disk through `hark.store.ensure_collection`
(so the alias exists, as after `hark ingest`), then the HNSW index is built (`optimize`). Vectors come from the
bundle's clip.onnx over random segment embeddings (`--vectors onnx`, 1-3 segments per clip) or, to reach 1M clips
quickly, from numpy in large batches with the same layout (`--vectors numpy`: random `global`, random 960-d rows).
Measured:

- ingest: points/s of the upsert calls alone (wait=True, `--batch` points per call), the index build separately,
  bytes on disk per clip, RSS;
- `open_s`: close the store, reopen the folder and load the collection; `cold_search_s`: wall time of a subprocess
  running the real CLI (`hark search TEXT --json`, HARK_QDRANT_PATH / HARK_BUNDLE set), twice; HARK_STATE_DIR is
  `<work>/state`, so a second run skips hashing the bundle files that the first stamped (a bundle exported seconds
  earlier is too young to stamp; with `--keep` it is not);
- end-to-end latency through the facade (`AudioSearch`) at K candidates, every other query with a payload filter
  (`meta.split`, 1 clip in 4), and the median of each stage; the prefilter is also timed without fetching the
  candidates' `tokens` (what the fetch costs);
- recall@K of the engine's default search path (`hark.store.edge` decides: exact or HNSW) against exact search.

    python benchmarks/query.py --clips N [--k K] [--quick] [--engine edge|local] [--keep DIR] [--vectors numpy]
                               [--prewarm]

`--engine local` runs qdrant-client's local mode in memory instead (a baseline for small N: no open / cold search
/ disk figures). `--keep DIR` keeps the bundle and the store in DIR and reuses them on the next run (a store with
the same N, engine and vectors is not re-ingested; its recorded ingest figures are reported again). `--prewarm`
reads the collection's on-disk vectors into the page cache after opening, as `hark serve` does at start, so the
first pass measures a started server rather than a folder nobody has read.
The last line printed is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

WORDS = (
    'dog', 'barks', 'rain', 'falls', 'siren', 'wails', 'bell', 'rings', 'bird', 'chirps', 'engine', 'hums',
    'man', 'speaks', 'water', 'drips', 'footsteps', 'approach', 'wind', 'blows', 'car', 'passes', 'door',
    'slams', 'crowd', 'cheers', 'baby', 'cries', 'thunder', 'rumbles',
)
COLLECTION = "bench"
SPLITS = ("development", "validation", "evaluation", "other")  # payload meta.split, one clip in four each
FILTER = {"must": [{"key": "meta.split", "match": {"value": "evaluation"}}]}


# -- the bundle (child process: torch stays out of the measured one) --------------------------------------------------
def build_bundle(out: Path, quick: bool) -> Path:
    import torch

    from hark.exporters.onnx_export import export_bundle
    from hark.text import train_bpe_tokenizer
    from hark.training.config import load_config
    from hark.training.model import RetrievalModel

    layers = 2 if quick else 24
    # embed_dim 768 as PaSST-S: the stored rows are 768 + 8 x 24 = 960 wide; one shallow layer (audio.onnx unused).
    overrides = ["audio.init=random", "audio.embed_dim=768", "audio.depth=1", "audio.num_heads=4",
                 "audio.patch=32", "audio.stride=32", "text.model=random"]
    cfg = load_config("joint", overrides)
    # --quick: 2 layers and a vocabulary just above the tokenizer's 400 entries, so the export takes seconds.
    hf = {"vocab_size": 512 if quick else 50265, "hidden_size": 1024, "num_hidden_layers": layers,
          "num_attention_heads": 16, "intermediate_size": 4096, "max_position_embeddings": 514, "pad_token_id": 1,
          "bos_token_id": 0, "eos_token_id": 2, "type_vocab_size": 1, "model_type": "roberta"}
    torch.manual_seed(0)
    tokenizer = train_bpe_tokenizer([" ".join(WORDS)] * 20, 400)
    model = RetrievalModel(cfg, tokenizer, hf).eval()
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.checkpoint_payload(), out / "model.pt")
    bundle = export_bundle(out / "model.pt", out / "bundle", precision="int8")
    (out / "model.pt").unlink()
    return bundle


def bundle_dir(work: Path, quick: bool) -> Path:
    """The bundle in `work`, exported by a child process unless a previous run left one there."""
    out = work / ("bundle-quick" if quick else "bundle-full")
    if not (out / "bundle" / "manifest.json").is_file():
        cmd = [sys.executable, __file__, "--build-bundle", str(out)] + (["--quick"] if quick else [])
        subprocess.run(cmd, check=True)
    return out / "bundle"


# -- filling the store ----------------------------------------------------------------------------------------------
class Vectors:
    """Batches of (global, rows, segments used, moments) in the stored layout (moments: None without them)."""

    def __init__(self, bundle, kind: str, seed: int = 0) -> None:
        self.kind, self.rng = kind, np.random.default_rng(seed)
        self.m, self.seg_dim = bundle.max_segments, bundle.manifest.audio.embedding_dim
        specs = {s.name: s for s in bundle.vectors()}
        self.global_dim, self.row_dim = specs["global"].size, specs["tokens"].size
        self.clip = bundle.session("clip", "cpu") if kind == "onnx" else None
        # Moments: random unit rows, quantised as ingestion stores them (one per sub-window of the used segments).
        spec = bundle.moments
        self.moment_dim = specs["moments"].size if spec is not None else 0
        self.moments_per_segment = (round(bundle.manifest.audio.segment_seconds / spec.hop_s)
                                    if spec is not None else 0)

    def batch(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        used = self.rng.integers(1, self.m + 1, size=count)
        moments = None
        if self.moment_dim:
            from hark.moments import quantize

            per = self.m * self.moments_per_segment
            raw = self.rng.standard_normal((count * per, self.moment_dim), dtype=np.float32)
            moments = quantize(raw).reshape(count, per, self.moment_dim)
        if self.clip is not None:
            segs = self.rng.standard_normal((count, self.m, self.seg_dim), dtype=np.float32)
            mask = (np.arange(self.m)[None, :] < used[:, None]).astype(np.float32)
            glob, rows = self.clip.run(None, {"segment_embeddings": segs, "segment_mask": mask})
            return glob, rows, used, moments
        glob = self.rng.standard_normal((count, self.global_dim), dtype=np.float32)
        glob /= np.linalg.norm(glob, axis=1, keepdims=True)
        rows = self.rng.standard_normal((count, self.m, self.row_dim), dtype=np.float32)
        return glob, rows, used, moments


def fill(client, bundle, n: int, kind: str, batch: int) -> dict[str, Any]:
    from qdrant_client import models

    from hark.store import ensure_collection

    physical = ensure_collection(client, COLLECTION, bundle)
    client.create_payload_index(physical, "meta.split", models.PayloadSchemaType.KEYWORD)
    source = Vectors(bundle, kind)
    gen_s = upsert_s = 0.0
    step = max(1, n // 10)
    for start in range(0, n, batch):
        count = min(batch, n - start)
        t0 = time.perf_counter()
        glob, rows, used, moments = source.batch(count)
        per = source.moments_per_segment
        points = [models.PointStruct.model_construct(
            id=str(uuid.UUID(int=start + i)),
            vector={"global": glob[i], "tokens": rows[i, : used[i]],
                    **({"moments": moments[i, : per * used[i]]} if moments is not None else {})},
            payload={"n": start + i, "windows": 1, "source_uri": f"bench://{start + i}",
                     "window_duration": float(10 * used[i]), "meta": {"split": SPLITS[(start + i) % len(SPLITS)]}})
            for i in range(count)]
        t1 = time.perf_counter()
        client.upsert(physical, points, wait=True)
        gen_s += t1 - t0
        upsert_s += time.perf_counter() - t1
        if (start + count) // step != start // step:
            print(f"  ingested {start + count:,} / {n:,} ({upsert_s:.0f} s upsert, {gen_s:.0f} s vectors)",
                  flush=True)
    stats: dict[str, Any] = {"vectors": kind, "upsert_s": round(upsert_s, 2), "vector_gen_s": round(gen_s, 2),
                             "ingest_points_per_s": round(n / upsert_s, 1)}
    build = getattr(client, "optimize", None)
    if build is not None:  # the embedded engine: no background optimiser, build the HNSW index now
        t0 = time.perf_counter()
        build(COLLECTION)
        stats["index_build_s"] = round(time.perf_counter() - t0, 2)
        stats["unindexed_after_build"] = client.unindexed_count(COLLECTION)
        stats["ingest_points_per_s_with_index"] = round(n / (upsert_s + stats["index_build_s"]), 1)
    return stats


# -- measuring ------------------------------------------------------------------------------------------------------
def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2)


def default_path(k: int, points: int) -> str:
    """Which search the engine's default rule picks (hark.store.edge._search_params) at K and N."""
    from hark.store import edge

    if k >= edge.EXACT_MIN_K or points < edge.EXACT_MAX_POINTS:
        return "exact"
    return f"hnsw ef={max(edge.HNSW_EF_FACTOR * k, 64)}"


def measure_queries(client, bundle, queries: list[str], k: int) -> dict[str, Any]:
    """End-to-end latency through the facade; every other query carries the payload filter."""
    from hark.plugin.search import AudioSearch

    search = AudioSearch(client, bundle, COLLECTION, "cpu", text_precision="int8")
    for q in queries[:3]:  # warm-up: session allocations, first touches of the graph, the mmaps and the caches
        search.search(q, limit=10, candidates=k)
    totals, stages, filtered, unfiltered = [], [], [], []
    for i, q in enumerate(queries):
        flt = FILTER if i % 2 else None
        start = time.perf_counter()
        hits = search.search(q, limit=10, candidates=k, filter=flt)
        totals.append((time.perf_counter() - start) * 1000)
        stages.append(search.last_times.as_ms())
        (filtered if flt else unfiltered).append(totals[-1])
        if flt is not None:
            assert all(h.payload["meta"]["split"] == "evaluation" for h in hits), "the filter was not applied"
    med = {s: round(statistics.median(x[s] for x in stages), 2) for s in stages[0]}
    return {"search": search, "p50_ms": round(statistics.median(totals), 1), "p95_ms": percentile(totals, 95),
            "p50_filtered_ms": round(statistics.median(filtered), 1),
            "p50_unfiltered_ms": round(statistics.median(unfiltered), 1),
            "stages_ms": med}


def measure_store(client, sentences: np.ndarray, k: int, n_recall: int) -> dict[str, Any]:
    """The prefilter outside the facade: with and without the `tokens` fetch; recall of the default path."""
    from qdrant_client import models

    with_tokens, ids_only, exact_ms, recalls = [], [], [], []
    for i, s in enumerate(sentences):
        flt = models.Filter.model_validate(FILTER) if i % 2 else None
        for vectors, into in ((["tokens"], with_tokens), (False, ids_only)):
            start = time.perf_counter()
            client.query_points(COLLECTION, query=s, using="global", limit=k, query_filter=flt, with_payload=True,
                                with_vectors=vectors)
            into.append((time.perf_counter() - start) * 1000)
        if i < n_recall:
            default = client.query_points(COLLECTION, query=s, using="global", limit=k, query_filter=flt,
                                          with_payload=False).points
            start = time.perf_counter()
            exact = client.query_points(COLLECTION, query=s, using="global", limit=k, query_filter=flt,
                                        with_payload=False, search_params=models.SearchParams(exact=True)).points
            exact_ms.append((time.perf_counter() - start) * 1000)
            truth = {p.id for p in exact}
            recalls.append(len({p.id for p in default} & truth) / max(1, len(truth)))
    return {"prefilter_with_tokens_ms": round(statistics.median(with_tokens), 2),
            "prefilter_ids_only_ms": round(statistics.median(ids_only), 2),
            "exact_prefilter_ms": round(statistics.median(exact_ms), 2),
            "recall": round(statistics.mean(recalls), 4), "recall_min": round(min(recalls), 4),
            "recall_queries": len(recalls)}


def cold_search(folder: Path, bundle: Path, text: str, k: int, models_dir: Path) -> dict[str, Any]:
    """Wall time of the real CLI in a fresh process: imports, settings, open the folder, load the bundle, query."""
    env = {**os.environ, "HARK_QDRANT_PATH": str(folder), "HARK_BUNDLE": str(bundle), "HARK_COLLECTION": COLLECTION,
           "HARK_DEVICE": "cpu", "HARK_MODELS_DIR": str(models_dir), "HARK_STATE_DIR": str(models_dir.parent / "state")}
    env.pop("HARK_QDRANT_URL", None)
    cmd = [sys.executable, "-m", "hark.cli", "search", text, "--json", "--candidates", str(k)]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"hark search failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["hits"]:
        raise RuntimeError("hark search returned no hits")
    return {"wall_s": round(wall, 2), "timings_ms": result["timings_ms"]}


# -- the run ----------------------------------------------------------------------------------------------------------
def open_edge(folder: Path):
    """(store, seconds): open the folder and load the collection (the shard opens on first use)."""
    from hark.store.edge import EdgeStore

    start = time.perf_counter()
    store = EdgeStore(folder)
    store.count(COLLECTION, exact=False)
    return store, round(time.perf_counter() - start, 3)


def no_ort_spin() -> None:
    """Sessions created from now on in this process don't spin-wait between runs: measures the change proposed for
    `hark.onnx._options` (on a shared 2-core machine the spinning threads took the cores from the other stages)."""
    import hark.onnx

    options = hark.onnx._options

    def quiet_threads(quiet: bool = False):
        opts = options(quiet)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    hark.onnx._options = quiet_threads


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from hark.bundle import Bundle

    if args.no_ort_spin:
        no_ort_spin()

    rng = np.random.default_rng(0)
    queries = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 12)))) for _ in range(args.queries)]
    bundle_path = bundle_dir(work, args.quick)
    bundle = Bundle.load(bundle_path)
    out: dict[str, Any] = {"engine": args.engine, "clips": args.clips, "k": args.k, "vectors": args.vectors,
                           "queries": len(queries), "ort_spin": not args.no_ort_spin, "prewarm_s": None,
                           "text_encoder": "RoBERTa-large int8, " + ("2 layers (quick)" if args.quick else "24 layers")}
    if args.engine == "local":
        from qdrant_client import QdrantClient

        client = QdrantClient(":memory:")
        t0 = time.perf_counter()
        out.update(fill(client, bundle, args.clips, args.vectors, args.batch))
        out["fill_s"] = round(time.perf_counter() - t0, 1)
        out.update({"open_s": None, "cold_search_s": None, "disk_bytes_per_clip": None, "index_build_s": None,
                    "search_path": "local-mode scan"})
    else:
        from hark.store.edge import folder_size

        folder = work / f"qdrant-{args.clips}-{args.vectors}{'-quick' if args.quick else ''}"
        record = folder / "bench-ingest.json"  # the ingest figures of the run that filled this folder
        if record.is_file():
            out.update(json.loads(record.read_text()), ingest_reused=True)
            print(f"reusing {folder} (ingest figures from the run that filled it)", flush=True)
        else:
            import shutil

            from hark.store.edge import EdgeStore

            shutil.rmtree(folder, ignore_errors=True)  # an interrupted fill of ours: start again

            store = EdgeStore(folder)
            stats = fill(store, bundle, args.clips, args.vectors, args.batch)
            store.close()
            stats["rss_after_ingest_mb"] = rss_mb()
            stats["disk_bytes_per_clip"] = round(folder_size(folder) / args.clips)
            stats["disk_mb"] = round(folder_size(folder) / 1e6, 1)
            record.write_text(json.dumps(stats))
            out.update(stats)
        out["rss_before_open_mb"] = rss_mb()
        client, out["open_s"] = open_edge(folder)
        out["rss_after_open_mb"] = rss_mb()
        if args.prewarm:  # as `hark serve` does at start: the on-disk rows read once into the page cache
            start = time.perf_counter()
            client.prewarm(COLLECTION).join()
            out["prewarm_s"] = round(time.perf_counter() - start, 2)
            out["prewarm"] = client.prewarm_report
        out["search_path"] = default_path(args.k, client.count(COLLECTION).count)
    points = client.count(COLLECTION).count
    assert points == args.clips, f"the store holds {points} points, expected {args.clips}"
    result = measure_queries(client, bundle, queries, args.k)
    search = result.pop("search")
    out.update(result)
    # The same queries again: their candidates' `tokens` rows (on_disk) are now in the page cache. The first pass
    # reads them from disk (measured at 30k clips: 22.8 ms for the engine call with rows on first touch, 8.8 ms
    # when repeated, 8.4 ms without rows), so the two passes bracket a cold and a warm server.
    repeat = measure_queries(client, bundle, queries, args.k)
    repeat.pop("search")
    out["p50_repeat_ms"], out["stages_repeat_ms"] = repeat["p50_ms"], repeat["stages_ms"]
    sentences = search.text.encode(queries).sentence
    out.update(measure_store(client, sentences, args.k, args.recall_queries))
    out["rss_mb"] = rss_mb()
    out["load_average"] = round(os.getloadavg()[0], 1)  # the machine is shared: context for the timings
    out["rss_peak_mb"] = peak_rss_mb()
    client.close()
    if args.engine == "edge":
        runs = [cold_search(folder, bundle_path, queries[0], args.k, work / "models") for _ in range(2)]
        out["cold_search_s"] = runs[0]["wall_s"]
        out["cold_search_runs_s"] = [r["wall_s"] for r in runs]
        out["cold_search_stages_ms"] = runs[0]["timings_ms"]
    return out


def report(r: dict[str, Any]) -> None:
    s = r["stages_ms"]
    print(f"query benchmark: {r['engine']} engine, {r['clips']:,} clips ({r['vectors']} vectors), K={r['k']}, "
          f"text encoder {r['text_encoder']}, {r['queries']} queries (every other one filtered), limit 10, "
          f"ORT spin-wait {'on' if r['ort_spin'] else 'off'}, load average {r['load_average']}")
    print(f"  ingest   {r['ingest_points_per_s']:,.0f} points/s upsert-only ({r['upsert_s']} s)"
          + (f"; index build {r['index_build_s']} s; {r['disk_bytes_per_clip']:,} bytes/clip on disk"
             if r.get("index_build_s") is not None else ""))
    if r.get("open_s") is not None:
        print(f"  open     {r['open_s']} s; cold `hark search` {r['cold_search_s']} s "
              f"(runs {r['cold_search_runs_s']})"
              + (f"; prewarm (as `hark serve`) {r['prewarm_s']} s before the first query" if r["prewarm_s"] else ""))
    print(f"  query    p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms (unfiltered p50 {r['p50_unfiltered_ms']}, "
          f"filtered {r['p50_filtered_ms']})")
    print("  stages   " + ", ".join(f"{name} {ms}" for name, ms in s.items()) + " (median ms)")
    if r.get("p50_repeat_ms") is not None:
        print(f"  repeated p50 {r['p50_repeat_ms']} ms (the same queries again, their rows in the page cache); stages "
              + ", ".join(f"{name} {ms}" for name, ms in r["stages_repeat_ms"].items()))
    print(f"  store    prefilter with tokens {r['prefilter_with_tokens_ms']} ms, ids+payload only "
          f"{r['prefilter_ids_only_ms']} ms, exact {r['exact_prefilter_ms']} ms; default path {r['search_path']}, "
          f"recall@{r['k']} {r['recall']} (min {r['recall_min']}, {r['recall_queries']} queries)")
    print(f"  memory   RSS {r['rss_mb']} MB now, peak {r['rss_peak_mb']} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=None, help="clips stored (default 100000; 2000 with --quick)")
    parser.add_argument("--k", type=int, default=200, help="prefilter candidates K (default 200)")
    parser.add_argument("--quick", action="store_true", help="2k clips, a 2-layer text encoder, 10 queries")
    parser.add_argument("--engine", choices=("edge", "local"), default="edge")
    parser.add_argument("--keep", type=Path, default=None, help="keep (and reuse) the bundle and the store here")
    parser.add_argument("--vectors", choices=("onnx", "numpy"), default="onnx",
                        help="clip.onnx over random segments (default) or random numpy vectors in the same layout")
    parser.add_argument("--prewarm", action="store_true",
                        help="after opening, read the on-disk vectors into the page cache and wait, as `hark serve` "
                             "does at start (so the first pass measures a started server, not a cold folder)")
    parser.add_argument("--queries", type=int, default=None, help="timed queries (default 40; 10 with --quick)")
    parser.add_argument("--recall-queries", type=int, default=20)
    parser.add_argument("--no-ort-spin", action="store_true",
                        help="ONNX Runtime threads without spin-waiting (this process only; cold search unchanged)")
    parser.add_argument("--batch", type=int, default=1000, help="points per upsert call")
    parser.add_argument("--build-bundle", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_bundle is not None:
        build_bundle(args.build_bundle, args.quick)
        return
    args.clips = args.clips or (2000 if args.quick else 100_000)
    args.queries = args.queries or (10 if args.quick else 40)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args, Path(tmp))
    report(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
