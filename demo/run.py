"""`hark demo`: the whole pipeline on a generated corpus, on one machine, with no servers.

Every step reuses what an earlier run left in the work folder: the corpus, the trained run (resumed if
it was interrupted), and the bundle (re-exported only if it fails verification).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DEMO_SPLITS = {"development": 160, "validation": 40, "evaluation": 40}
# The demo keeps the short schedule (1 warm-up + 4 epochs) so the README's first command stays a few minutes on
# 2 cores; `tiny`'s own 1 + 29 epochs (chosen by validation, benchmarks/README.md) take about six times as long.
DEMO_TRAIN = ["train.epochs=4", "train.warmup_epochs=1"]
EXAMPLE_QUERIES = [
    "a dog barks while rain falls",
    "a siren wails, then a dog barks",
    "a bell rings",
    "birds chirping in the wind",
    "a man speaks over an engine",
]


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def make_corpus(root: Path, seed: int = 0) -> Path:
    from hark.demo.synth import write_clotho_corpus

    marker = root / ".complete"
    if marker.is_file():
        print(f"reusing corpus in {root}")
        return root
    summary = write_clotho_corpus(root, n_clips=DEMO_SPLITS, durations=(10.0, 24.0), seed=seed,
                                  formats=("wav", "flac", "ogg", "mp3"), sample_rates=(32000, 44100, 22050, 48000),
                                  channels=(1, 2), broken=3)
    marker.write_text(json.dumps({"broken": summary["broken"]}))
    total = sum(DEMO_SPLITS.values())
    print(f"wrote {total} clips (wav/flac/ogg/mp3, 22-48 kHz, mono/stereo) and {len(summary['broken'])} broken "
          f"files to {root}")
    return root


def _broken(corpus: Path) -> list[str]:
    marker = corpus / ".complete"
    return json.loads(marker.read_text()).get("broken", []) if marker.is_file() else []


def run_demo(work: Path, device: str = "auto", quiet: bool = False) -> dict[str, Any]:
    from hark.plugin.verify import verify_bundle
    from hark.training import metrics
    from hark.training.config import load_config
    from hark.training.run import load_split, train

    started = time.time()
    work.mkdir(parents=True, exist_ok=True)
    _step("1/6 generate a corpus of synthesized sound events with captions")
    corpus = make_corpus(work / "corpus")

    _step("2/6 train a tiny joint model (cosine + cross-modal attention heads) on CPU")
    run_dir = work / "run"
    result = train(load_config("tiny", DEMO_TRAIN), [corpus], run_dir, device="cpu" if device == "cpu" else "auto",
                   progress=not quiet)
    print(f"best validation mAP@10 {result.best_metric:.1f} after {result.epochs_run} epochs ({run_dir})")

    _step("3/6 fit the fusion of the two heads on the validation split, export the model bundle, verify it")
    bundle_dir = work / "bundle"
    try:
        report = verify_bundle(bundle_dir)
        print(f"reusing bundle {report['version']} in {bundle_dir}")
    except Exception:
        from hark.exporters.onnx_export import export_bundle
        from hark.training.calibrate import calibrate_checkpoint

        calibration = calibrate_checkpoint(run_dir / "best.pt", [corpus], "validation")
        if calibration:
            val = calibration["validation"]
            print(f"validation mAP@10: cosine {val['cosine']:.1f}, attention {val['attention']:.1f}, fused "
                  f"{val['fused']:.1f} with weights {calibration['fusion']}"
                  + ("" if calibration["rerank"] else " (the rerank does not help: it is off by default)"))
        export_bundle(run_dir / "best.pt", bundle_dir, precision="fp32", overwrite=True, calibration=calibration)
        report = verify_bundle(bundle_dir)
        print(f"exported bundle {report['version']} to {bundle_dir}; parity {json.dumps(report['parity'])}")

    _step("4/6 register the bundle and ingest the held-out split into the embedded Qdrant (in-process worker)")
    from hark.registry import register
    from hark.settings import Settings
    from hark.workers.ingest import Item, collect_files
    from hark.workers.submit import submit_job, wait_for

    settings = Settings.load()
    registered_dir = register(settings, bundle_dir)
    files = collect_files([corpus / "evaluation"]) + [str(corpus / "development" / name)
                                                      for name in _broken(corpus)]
    job, store = submit_job(settings, [Item(f, {"split": "evaluation"}) for f in files], settings.collection,
                            str(registered_dir))
    status = wait_for(store, job)
    print(f"job {job}: {status['ingested']} ingested, {status['duplicate']} already there, {status['failed']} failed "
          f"into collection '{settings.collection}' ({settings.qdrant_path})")
    for path, reason in status["failures"].items():
        print(f"  failed: {Path(path).name}: {reason}")

    _step("5/6 evaluate through Qdrant: bi-encoder (cosine prefilter) alone vs with the attention rerank")
    from hark.bundle import Bundle
    from hark.plugin.search import AudioSearch
    from hark.store import connect

    examples = [ex for ex in load_split([corpus], "evaluation")]
    names = [ex.audio_path.name for ex in examples]
    queries = [c for ex in examples for c in ex.captions]
    targets = np.array([i for i, ex in enumerate(examples) for _ in ex.captions])
    relevance = metrics.read_relevance(corpus / "relevance_evaluation.csv")
    client = connect(settings)
    try:
        search = AudioSearch(client, Bundle.load(registered_dir), settings.collection, device,
                             candidates=len(names))
        table = {}
        for label, rerank in (("bi-encoder (cosine)", False), ("cosine + rerank", True)):
            scores = np.full((len(queries), len(names)), -np.inf)
            column = {n: i for i, n in enumerate(names)}
            for start in range(0, len(queries), 16):
                batch = search.search_batch(queries[start:start + 16], limit=len(names), rerank=rerank,
                                            group_by_source=True)
                for row, hits in enumerate(batch, start):
                    for hit in hits:
                        if hit.payload.get("file_name") in column:
                            scores[row, column[hit.payload["file_name"]]] = hit.score
            table[label] = metrics.retrieval_metrics(scores, targets)
            table[label].update(metrics.relevance_metrics(scores, queries, names, relevance)[0])
        print(f"{'':22s}" + "".join(f"{k:>10s}" for k in ("R@1", "R@5", "R@10", "mAP@10", "mAP@16")))
        for label, row in table.items():
            print(f"{label:22s}" + "".join(f"{row[k]:10.1f}" for k in ("R@1", "R@5", "R@10", "mAP@10", "mAP@16")))

        _step("6/6 example queries (top 3)")
        for query in EXAMPLE_QUERIES:
            hits = search.search(query, limit=3)
            print(f'"{query}": ' + ", ".join(f"{Path(h.source).name} ({h.score:.3f})" for h in hits))
    finally:
        client.close()
    elapsed = time.time() - started
    hark = Path(sys.executable).with_name("hark")
    print(f"\ndone in {elapsed:.0f} s. `hark` lives in this environment: run `source {hark.parent}/activate` "
          f"first, or call it as {hark}. Next:\n"
          f'  hark search "a dog barks while rain falls"      # the embedded collection, ranked with rerank\n'
          f"  hark serve                                       # the search page at http://127.0.0.1:8000/ui, "
          f"Qdrant-compatible queries, /infer\n"
          f"  hark ingest PATH...                              # your own audio\n"
          f"  hark evaluate --checkpoint {run_dir} --data {corpus}")
    return {"metrics": table, "bundle": str(bundle_dir), "run": str(run_dir), "seconds": round(elapsed, 1)}
