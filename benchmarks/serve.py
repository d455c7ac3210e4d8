"""`hark serve` under concurrent load: requests/s and p50/p95 of POST /search at 1, 4 and 16 clients.

The bundle and the collection are built as in benchmarks/query.py: a report-size text encoder (RoBERTa-large shape,
random weights; 2 layers with --quick) exported in int8, a report-size joint head, and N clips in the
embedded store (the qdrant-edge engine by default; `--store local` for qdrant-client's local mode, whose
Python scan of the `tokens` rows dominates and serialises on the GIL). The server runs in this process
(uvicorn in a thread); clients are threads with their own HTTP connections, in a second process by default
(`--clients process`): clients in the server's own process (`--clients thread`, what earlier runs did) take the
server's GIL to build requests and parse responses, which caps the very concurrency being measured. Also
measured: the text encoder's cost per query against batch size (what the micro-batcher's defaults are chosen from).

    python benchmarks/serve.py [--quick] [--clips 10000] [--seconds 30] [--warmup 10] [--store edge|local]
                               [--clients process|thread]

The embedded store's row cache (`hark.store.rowcache`) follows HARK_ROW_CACHE_MB (0 = off, for A/B runs); the
warm-up (one client) runs before any measured phase, so the lone client is not measured against a cold cache, and
each phase reports the share of candidates whose rows came from the cache.

Last line: one JSON object {"rps": {concurrency: r/s}, "p50_ms": {...}, "p95_ms": {...}, "encoder_ms_per_query": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

WORDS = (
    "dog", "barks", "rain", "falls", "siren", "wails", "bell", "rings", "bird", "chirps", "engine", "hums",
    "man", "speaks", "water", "drips", "footsteps", "approach", "wind", "blows", "car", "passes", "door",
    "slams", "crowd", "cheers", "baby", "cries", "thunder", "rumbles",
)


def build_bundle(out: Path, quick: bool) -> Path:
    """The report-size joint model with random weights (RoBERTa-large shape; 2 layers with --quick), int8."""
    import torch

    from hark.exporters.onnx_export import export_bundle
    from hark.text import train_bpe_tokenizer
    from hark.training.config import load_config
    from hark.training.model import RetrievalModel

    overrides = ["audio.init=random", "audio.embed_dim=768", "audio.depth=1", "audio.num_heads=4",
                 "audio.patch=32", "audio.stride=32", "text.model=random"]
    hf = {"vocab_size": 512 if quick else 50265, "hidden_size": 1024, "num_hidden_layers": 2 if quick else 24,
          "num_attention_heads": 16, "intermediate_size": 4096, "max_position_embeddings": 514, "pad_token_id": 1,
          "bos_token_id": 0, "eos_token_id": 2, "type_vocab_size": 1, "model_type": "roberta"}
    torch.manual_seed(0)
    tokenizer = train_bpe_tokenizer([" ".join(WORDS)] * 20, 400)
    model = RetrievalModel(load_config("joint", overrides), tokenizer, hf).eval()
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.checkpoint_payload(), out / "model.pt")
    return export_bundle(out / "model.pt", out / "bundle", precision="int8")


def fill(client, bundle, n: int, collection: str, rng: np.random.Generator) -> None:
    """n clips whose `global` vectors and `tokens` rows come from clip.onnx over random segment embeddings."""
    from qdrant_client import models

    from hark.store import ensure_collection

    physical = ensure_collection(client, collection, bundle)
    clip = bundle.session("clip", "cpu")
    audio = bundle.manifest["audio"] if isinstance(bundle.manifest, dict) else bundle.manifest.audio
    m = bundle.max_segments
    dim = audio["embedding_dim"] if isinstance(audio, dict) else audio.embedding_dim
    for start in range(0, n, 1000):
        count = min(1000, n - start)
        segs = rng.standard_normal((count, m, dim)).astype(np.float32)
        used = rng.integers(1, m + 1, size=count)
        mask = (np.arange(m)[None, :] < used[:, None]).astype(np.float32)
        glob, rows = clip.run(None, {"segment_embeddings": segs, "segment_mask": mask})
        points = [models.PointStruct(id=str(uuid.UUID(int=start + i)),
                                     vector={"global": glob[i].tolist(), "tokens": rows[i, : used[i]].tolist()},
                                     payload={"n": start + i, "windows": 1}) for i in range(count)]
        client.upsert(physical, points, wait=True)
    if hasattr(client, "optimize"):  # the embedded engine builds its index on request only
        client.optimize(physical)


def encoder_curve(bundle, sizes: list[int], repeats: int) -> dict[int, float]:
    """Milliseconds of text-encoder time per query at each batch size (int8, CPU), for texts of 4-11 words like the
    load's: a batch is padded to its longest text, so texts of one length would overstate what merging saves."""
    from hark.plugin.encoders import TextEncoder

    encoder = TextEncoder(bundle, "cpu", "int8")
    rng = np.random.default_rng(1)
    out = {}
    encoder.encode([" ".join(WORDS[:11])] * max(sizes))  # warm-up: the longest shape
    for size in sizes:
        runs = []
        for _ in range(max(repeats, 16 // size)):  # fresh texts each call: lone calls vary with their length
            texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 12)))) for _ in range(size)]
            start = time.perf_counter()
            encoder.encode(texts)
            runs.append(time.perf_counter() - start)
        out[size] = round(1000 * statistics.median(runs) / size, 2)
    return out


def _cpu_list(text: str) -> list[int]:
    """'0,2-4' -> [0, 2, 3, 4] (taskset's list syntax)."""
    out: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _cpu_s() -> float:
    import resource

    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def load(url: str, clients: int, seconds: float, k: int, cpus: frozenset[int] | None = None,
         ) -> tuple[float, list[float], dict[str, float], float]:
    """(requests/s, latencies in ms, median ms per stage as each response reported it, CPU seconds this process
    spent generating the load). `cpus`: the cores the load generator runs on (its own process only)."""
    import httpx

    if cpus:
        os.sched_setaffinity(0, cpus)

    latencies: list[float] = []
    stages: list[dict[str, float]] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.perf_counter() < stop:
                text = " ".join(rng.choice(WORDS, size=int(rng.integers(4, 12))))
                start = time.perf_counter()
                response = http.post("/search", json={"text": text, "limit": 10, "candidates": k})
                elapsed = time.perf_counter() - start
                response.raise_for_status()
                with lock:
                    latencies.append(elapsed * 1000)
                    stages.append(response.json()["timings_ms"])

    started, cpu = time.perf_counter(), _cpu_s()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    medians = {s: round(statistics.median(x[s] for x in stages), 1) for s in stages[0]} if stages else {}
    return len(latencies) / (time.perf_counter() - started), latencies, medians, _cpu_s() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2-layer text encoder, 8 s per concurrency")
    parser.add_argument("--clips", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of one-client load before measuring")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--store", choices=["edge", "local"], default="edge",
                        help="the embedded engine (hark.store.edge.EdgeStore) or qdrant-client's local mode")
    parser.add_argument("--clients", choices=["process", "thread"], default="process",
                        help="run the client threads in a second process (default) or in the server's process")
    parser.add_argument("--client-cpus", type=str, default=None,
                        help="cores for the load-generating process, e.g. 2-5 (with taskset -c 0,1 on the whole run: "
                             "a server on 2 cores whose clients do not take its CPU, as remote clients would not)")
    parser.add_argument("--encoder-threads", type=int, default=None,
                        help="the micro-batcher's encoder threads (default: plugin.serve.batcher.ENCODER_THREADS)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the bundle and the embedded store here and reuse them on the next run (A/B runs "
                             "of settings such as HARK_ORT_THREADS without re-exporting)")
    args = parser.parse_args()
    seconds = args.seconds or (8 if args.quick else 30)
    client_cpus = frozenset(_cpu_list(args.client_cpus)) if args.client_cpus else None
    if client_cpus and args.clients != "process":
        parser.error("--client-cpus needs --clients process")

    import uvicorn
    from qdrant_client import QdrantClient

    from hark.bundle import Bundle
    from hark.onnx import usable_cpus
    from hark.plugin.serve import create_app
    from hark.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        built = work / ("bundle-quick" if args.quick else "bundle-full")
        if not (built / "bundle" / "manifest.json").is_file():
            build_bundle(built, args.quick)
        bundle = Bundle.load(built / "bundle")
        curve = encoder_curve(bundle, [1, 2, 4, 8, 16], 3 if args.quick else 5)
        if args.store == "edge":
            from hark.store.edge import EdgeStore

            folder = work / f"edge-{args.clips}{'-quick' if args.quick else ''}"
            filled = folder / "bench-filled"  # written after the fill: a folder without it is an interrupted run
            if not filled.is_file():
                import shutil

                shutil.rmtree(folder, ignore_errors=True)
            cache_mb = float(os.environ.get("HARK_ROW_CACHE_MB", Settings.row_cache_mb))
            client = EdgeStore(folder, row_cache_bytes=int(cache_mb * 2**20))
            if not filled.is_file():
                fill(client, bundle, args.clips, "bench", np.random.default_rng(0))
                filled.write_text("ok")
        else:
            client = QdrantClient(":memory:")
            fill(client, bundle, args.clips, "bench", np.random.default_rng(0))
        settings = Settings.load(toml_path=Path(tmp) / "none.toml", env={
            "HARK_COLLECTION": "bench", "HARK_DEVICE": "cpu", "HARK_QDRANT_PATH": str(Path(tmp) / "q"),
            **{k: v for k, v in os.environ.items()
               if k in {"HARK_QUERY_BATCH_WAIT_MS", "HARK_QUERY_BATCH_MAX", "HARK_ORT_THREADS",
                        "HARK_ROW_CACHE_MB"}}})
        app = create_app(settings, bundle, client=client)
        batcher = app.state.service.batcher
        if args.encoder_threads:
            batcher.threads = args.encoder_threads
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        generator = None
        if args.clients == "process":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            generator = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

        def run_load(clients: int, span: float):
            if generator is None:
                return load(url, clients, span, args.candidates)
            return generator.submit(load, url, clients, span, args.candidates, client_cpus).result()

        cache = getattr(client, "row_cache", None)

        def cache_counts() -> tuple[int, int]:
            return (cache.hits, cache.misses) if cache is not None else (0, 0)

        run_load(1, args.warmup)  # warm-up: the client process's imports, the page cache and the row cache
        rows = {}
        for clients in args.concurrency:
            before, server_cpu, encoded = cache_counts(), _cpu_s(), (batcher.calls, batcher.texts)
            rps, lat, stages, client_cpu = run_load(clients, seconds)
            server_cpu = _cpu_s() - server_cpu
            encoded = (batcher.calls - encoded[0], batcher.texts - encoded[1])
            hits, misses = (a - b for a, b in zip(cache_counts(), before, strict=True))
            rows[clients] = {"rps": round(rps, 2), "p50_ms": round(statistics.median(lat), 1),
                             "p95_ms": round(float(np.percentile(lat, 95)), 1), "requests": len(lat),
                             "row_cache_hit_rate": round(hits / (hits + misses), 3) if hits + misses else None,
                             # CPU per request: the server process's (every thread, ONNX Runtime's included) and
                             # the load generator's (same process as the server with --clients thread)
                             "server_cpu_ms": round(1000 * server_cpu / max(1, len(lat)), 1),
                             "client_cpu_ms": round(1000 * client_cpu / max(1, len(lat)), 1),
                             "mean_batch": round(encoded[1] / encoded[0], 2) if encoded[0] else None,
                             "stages": stages}
        calls = batcher.calls
        if generator is not None:
            generator.shutdown()
        server.should_exit = True
        thread.join(timeout=10)

    store = "EdgeStore" if args.store == "edge" else "local mode, in memory"
    print(f"serve benchmark: POST /search, K={args.candidates}, {args.clips} clips (embedded: {store}), int8 text "
          f"encoder ({'2 layers, quick' if args.quick else '24 layers'}), {seconds:.0f} s per concurrency, "
          f"clients in {'a second process' if args.clients == 'process' else 'the server process'}, "
          f"batch wait {settings.query_batch_wait_ms} ms, cap {settings.query_batch_max or 'by device'}, "
          f"{batcher.threads} encoder threads, "
          f"ONNX Runtime intra-op "
          f"threads {settings.ort_threads or usable_cpus()}, row cache "
          f"{f'{cache.max_bytes / 2**20:.0f} MiB' if cache is not None and cache.enabled else 'off'}, "
          f"load average {os.getloadavg()[0]:.1f}; server on {usable_cpus()} of {os.cpu_count()} cores ({_cpu_model()})"
          + (f", clients on cores {sorted(client_cpus)}" if client_cpus else ""))
    print(f"{'clients':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'requests':>9} {'batch':>6} {'cache hits':>10} "
          f"{'CPU ms/req server, client':>26} | median ms per stage")
    for clients, r in rows.items():
        parts = " ".join(f"{k} {v}" for k, v in r["stages"].items())
        hit = "-" if r["row_cache_hit_rate"] is None else f"{r['row_cache_hit_rate']:.3f}"
        cpu = f"{r['server_cpu_ms']}, {r['client_cpu_ms']}"
        print(f"{clients:>7} {r['rps']:>7.2f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['requests']:>9} "
              f"{r['mean_batch'] or '-':>6} {hit:>10} "
              f"{cpu:>26} | {parts}")
    print("text encoder ms per query by batch size: " + ", ".join(f"{b}: {ms}" for b, ms in curve.items()))
    print(f"encoder calls during the load: {calls}")
    base = rows.get(1, {}).get("rps")
    print(json.dumps({"ort_threads": settings.ort_threads, "load_average": round(os.getloadavg()[0], 1),
                      "server_cores": usable_cpus(), "cpu_model": _cpu_model(),
                      "client_cores": sorted(client_cpus) if client_cpus else None,
                      "clients": args.clients,
                      "rps": {str(c): r["rps"] for c, r in rows.items()},
                      "p50_ms": {str(c): r["p50_ms"] for c, r in rows.items()},
                      "p95_ms": {str(c): r["p95_ms"] for c, r in rows.items()},
                      "row_cache_hit_rate": {str(c): r["row_cache_hit_rate"] for c, r in rows.items()},
                      "mean_batch": {str(c): r["mean_batch"] for c, r in rows.items()},
                      "encoder_threads": batcher.threads,
                      "cpu_ms_per_request": {str(c): [r["server_cpu_ms"], r["client_cpu_ms"]] for c, r in rows.items()},
                      "store": args.store, "speedup_4": round(rows[4]["rps"] / base, 2) if base and 4 in rows else None,
                      "encoder_ms_per_query": {str(b): v for b, v in curve.items()}}))


if __name__ == "__main__":
    main()
