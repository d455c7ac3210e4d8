"""`hark demo`: the whole pipeline on a generated corpus, on one machine, with no servers.

Every step reuses what an earlier run left in the work folder: the corpus, the trained run (resumed if
it was interrupted), and the bundle (re-exported only if it fails verification).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

DEMO_SPLITS = {"development": 160, "validation": 40, "evaluation": 40}
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
    from hark.synth import write_clotho_corpus

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


def runtime_rankings(bundle_dir: Path, examples, device: str = "auto") -> dict[str, Any]:
    """Score an evaluation split through the bundle (ONNX Runtime): cosine alone and cosine + rerank."""
    from hark.audio import AudioDecodeError, decode_audio
    from hark.bundle import Bundle
    from hark.plugin.models import AudioEncoder, Reranker, TextEncoder

    bundle = Bundle.load(bundle_dir)
    audio = AudioEncoder(bundle, device)
    kept, clips = [], []
    for ex in examples:
        try:
            wave = decode_audio(ex.audio_path, bundle.sample_rate)[: audio.window_samples]
        except AudioDecodeError:
            continue
        kept.append(ex)
        clips.append(audio.encode_windows([wave])[0])
    queries = [c for ex in kept for c in ex.captions]
    targets = np.array([i for i, ex in enumerate(kept) for _ in ex.captions])
    text = TextEncoder(bundle, device).encode(queries)
    glob = np.stack([c.global_ for c in clips])
    cosine = text.sentence @ glob.T
    out = {"cosine": cosine}
    if bundle.has_rerank:
        reranker = Reranker(bundle, device)
        att = np.stack([reranker.score(text.tokens[q], text.mask[q], [c.rows for c in clips])
                        for q in range(len(queries))])
        out["fused"] = bundle.fusion["cosine"] * cosine + bundle.fusion["attention"] * att
    return {"scores": out, "targets": targets, "queries": queries, "audio": [ex.audio_path.name for ex in kept],
            "clips": clips}


def run_demo(work: Path, device: str = "auto", quiet: bool = False) -> dict[str, Any]:
    from hark.plugin.verify import verify_bundle
    from hark.training import metrics
    from hark.training.config import load_config
    from hark.training.run import load_split, train

    started = time.time()
    work.mkdir(parents=True, exist_ok=True)
    _step("1/5 generate a corpus of synthesized sound events with captions")
    corpus = make_corpus(work / "corpus")

    _step("2/5 train a tiny joint model (cosine + cross-modal attention heads) on CPU")
    run_dir = work / "run"
    result = train(load_config("tiny"), [corpus], run_dir, device="cpu" if device == "cpu" else "auto",
                   progress=not quiet)
    print(f"best validation mAP@10 {result.best_metric:.1f} after {result.epochs_run} epochs ({run_dir})")

    _step("3/5 export the model bundle and verify it")
    bundle_dir = work / "bundle"
    try:
        report = verify_bundle(bundle_dir)
        print(f"reusing bundle {report['version']} in {bundle_dir}")
    except Exception:
        from hark.exporters.onnx_export import export_bundle

        export_bundle(run_dir / "best.pt", bundle_dir, precision="fp32", overwrite=True)
        report = verify_bundle(bundle_dir)
        print(f"exported bundle {report['version']} to {bundle_dir}; parity {json.dumps(report['parity'])}")

    _step("4/5 evaluate the held-out split through ONNX Runtime: bi-encoder alone vs with rerank")
    ranked = runtime_rankings(bundle_dir, load_split([corpus], "evaluation"), device)
    table = {name: metrics.retrieval_metrics(s, ranked["targets"]) for name, s in ranked["scores"].items()}
    relevance = metrics.read_relevance(corpus / "relevance_evaluation.csv")
    from hark.training.evaluate import relevance_metrics

    for name, s in ranked["scores"].items():
        table[name].update(relevance_metrics(s, ranked["queries"], ranked["audio"], relevance))
    print(f"{'':22s}" + "".join(f"{k:>10s}" for k in ("R@1", "R@5", "R@10", "mAP@10", "mAP@16")))
    for name, row in table.items():
        label = "bi-encoder (cosine)" if name == "cosine" else "cosine + rerank"
        print(f"{label:22s}" + "".join(f"{row[k]:10.1f}" for k in ("R@1", "R@5", "R@10", "mAP@10", "mAP@16")))

    _step("5/5 example queries (top 3 clips of the evaluation split)")
    from hark.bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    for query in EXAMPLE_QUERIES:
        sims = query_scores(bundle, query, ranked["clips"], device)
        order = np.argsort(-sims)[:3]
        print(f'"{query}": ' + ", ".join(f"{ranked['audio'][i]} ({sims[i]:.3f})" for i in order))
    elapsed = time.time() - started
    print(f"\ndone in {elapsed:.0f} s. Next: hark evaluate --checkpoint {run_dir} --data {corpus}")
    return {"metrics": table, "bundle": str(bundle_dir), "run": str(run_dir), "seconds": round(elapsed, 1)}


def query_scores(bundle, query: str, clips, device: str = "auto") -> np.ndarray:
    """Fused score of a free-text query against encoded clips, through the bundle."""
    from hark.plugin.models import Reranker, TextEncoder

    text = TextEncoder(bundle, device).encode([query])
    glob = np.stack([c.global_ for c in clips])
    score = bundle.fusion["cosine"] * (glob @ text.sentence[0])
    if bundle.has_rerank:
        score = score + bundle.fusion["attention"] * Reranker(bundle, device).score(
            text.tokens[0], text.mask[0], [c.rows for c in clips])
    return score
