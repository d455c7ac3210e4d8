"""Retrieval quality of a training recipe on synthetic corpora: mAP@10/mAP@16, order accuracy, cost.

Trains a config on a generated Clotho-layout corpus (variant "a", the default generator, or "b", the one
never tuned on), keeps the best epoch by validation mAP@10, and reports on the evaluation split:
mAP@10 (one target per caption, as validation), mAP@10/mAP@16 over the relevance file, order accuracy on
held-out swapped pairs, and the training's wall time, CPU time (user + system of this process) and the load
average around it (the machine may be shared: CPU time is the honest cost, wall time depends on the load).
Beside it, the linear model (`hark linear`) fitted on the same development split, on the same evaluation metrics.

    python benchmarks/quality.py --variant b [--config tiny] [--set train.epochs=12 ...] [--clips 300 100 100]
                                 [--linear-only]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hark.demo.synth import VARIANTS, make_scene, write_clotho_corpus
from hark.training.config import load_config
from hark.training.data.formats import load_split
from hark.training.evaluate import score_split, split_metrics
from hark.training.metrics import read_relevance, retrieval_metrics
from hark.training.model import RetrievalModel, load_checkpoint
from hark.training.run import train

# Seeds of the benchmark corpora (each variant salts its own seed space as well).
CORPUS_SEEDS = {"a": 5, "b": 7}


def corpus(root: Path, variant: str, clips: tuple[int, int, int], seed: int | None = None) -> Path:
    """The benchmark corpus of a variant, generated once under root."""
    seed = CORPUS_SEEDS[variant] if seed is None else seed
    folder = root / f"corpus_{variant}_{seed}_{'-'.join(map(str, clips))}"
    if not (folder / "relevance_evaluation.csv").is_file():
        counts = dict(zip(("development", "validation", "evaluation"), clips, strict=True))
        write_clotho_corpus(folder, n_clips=counts, seed=seed, variant=variant)
    return folder


def swapped_pairs(variant: str, n_pairs: int, seed: int = 99, duration_s: float = 16.0):
    """Held-out clips where event A precedes B, each with its caption "A <then> B" and the swapped "B <then> A".

    The captions use the variant's first sequence template and each event's first clause, so the two
    captions differ only in order.
    """
    style = VARIANTS[variant]
    template = style.two["sequence"][0]
    names = list(style.events)
    rng = np.random.default_rng([seed, 4242, *style.seed_salt])
    out = []
    for _ in range(n_pairs):
        a, b = (names[i] for i in rng.choice(len(names), size=2, replace=False))
        scene = make_scene(rng, duration_s, 32000, events=[a, b], arrangement="sequence", variant=variant)
        first, second = style.events[a][0], style.events[b][0]
        right = template.format(a=first, b=second)
        wrong = template.format(a=second, b=first)
        out.append((scene.audio, right[0].upper() + right[1:] + ".", wrong[0].upper() + wrong[1:] + "."))
    return out


@torch.no_grad()
def order_accuracy(model: RetrievalModel, pairs) -> dict[str, float]:
    """Share of pairs where the right-order caption outscores the swapped one, per head and fused."""
    model.eval()
    wins: dict[str, list[bool]] = {}
    for audio, right, wrong in pairs:
        wave = torch.from_numpy(audio)[None].to(model.device)
        enc = model.encode_audio(wave, torch.tensor([len(audio)], device=model.device))
        scores = model.head_scores(model.encode_captions([right, wrong]), enc)
        scores["fused"] = model.fuse(scores)
        for name, s in scores.items():
            wins.setdefault(name, []).append(bool(s[0, 0] > s[1, 0]))
    return {name: float(np.mean(v)) for name, v in wins.items()}


def linear_baseline(data: Path, config: str) -> dict[str, float]:
    """The linear model (`hark linear`) on the same corpus: what every trained model is compared with."""
    from hark.training.linear import fit_linear

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    model = fit_linear(load_split([data], "development"), load_config(config).audio)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    split = score_split(model, load_split([data], "evaluation"))
    relevance = read_relevance(data / "relevance_evaluation.csv")
    out = {f"linear_eval_{k}": round(v, 2) for k, v in split_metrics(split, relevance=relevance).items()}
    out["linear_fit_cpu_s"] = round((cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime), 1)
    return out


def evaluate(run_dir: Path, data: Path, variant: str, n_pairs: int) -> dict[str, float]:
    model, _ = load_checkpoint(run_dir)
    split = score_split(model, load_split([data], "evaluation"), progress=False)
    relevance = read_relevance(data / "relevance_evaluation.csv")
    out = {f"eval_{k}": round(v, 2) for k, v in split_metrics(split, relevance=relevance).items()}
    out["eval_target_mAP@10"] = round(retrieval_metrics(split.scores["fused"], split.targets)["mAP@10"], 2)
    for head in model.head_names:
        out[f"eval_{head}_mAP@10"] = round(retrieval_metrics(split.scores[head], split.targets)["mAP@10"], 2)
    for name, acc in order_accuracy(model, swapped_pairs(variant, n_pairs)).items():
        out[f"order_{name}"] = round(acc, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="a")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, section.field=value")
    parser.add_argument("--clips", nargs=3, type=int, default=(300, 100, 100), help="dev/val/eval clips")
    parser.add_argument("--seed", type=int, default=None, help="corpus seed (default: the variant's)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/hark-quality"))
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: under --root)")
    parser.add_argument("--pairs", type=int, default=60, help="swapped pairs for order accuracy")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--linear-only", action="store_true", help="only the linear model (no training)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = corpus(args.root, args.variant, tuple(args.clips), args.seed)
    if args.linear_only:
        print(json.dumps({"variant": args.variant, "corpus": str(data), **linear_baseline(data, args.config)}))
        return 0
    cfg = load_config(args.config, list(args.set))
    out = args.out or args.root / f"run_{args.variant}_{int(time.time())}"
    load_before = os.getloadavg()
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.time()
    result = train(cfg, [data], out, device="cpu", resume=False, progress=False)
    cpu1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.time()
    report = {
        "variant": args.variant, "config": args.config, "overrides": args.set, "corpus": str(data),
        "train_wall_s": round(wall1 - wall0, 1),
        "train_cpu_s": round((cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime), 1),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "epochs_run": result.epochs_run,
        "best_epoch": max(result.history, key=lambda h: h.get("val_mAP@10", -1))["epoch"],
        "val_mAP@10_by_epoch": [round(h.get("val_mAP@10", float("nan")), 2) for h in result.history],
    }
    report.update(evaluate(out, data, args.variant, args.pairs))
    report.update(linear_baseline(data, args.config))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
