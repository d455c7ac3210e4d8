"""Does distillation from an ensemble of three teachers help a tiny student? Measured on validation.

Stage 1 trains four tiny models that differ only in their seed: three teachers and the student. Then two
comparisons, each between runs that differ only in the loss (same init, same data order, same epochs), through
the same pipeline (`hark.training.run.distill`):

- continue (`--stage2 continue`): the student continues from its stage-1 checkpoint for `--stage2-epochs` twice,
  once with kd_lambda=0 (the hard NT-Xent loss only: the student "trained without distillation", at equal
  compute) and once with the teachers' averaged predictions as soft targets;
- scratch (`--stage2 scratch`): the student's config and seed trained from scratch for the whole schedule with
  the teachers' soft targets, against its own stage-1 run (the same schedule on the hard loss alone).

Reported: the best validation mAP@10 of each, and the teachers' ensemble on validation. Tuned on (and reported
for) the default generator's validation split only. `--jobs 2` trains two models at a time (one process each,
`--threads` threads each).

    python benchmarks/distill.py [--clips 300 100 100] [--epochs 6] [--stage2 both|continue|scratch]
                                 [--stage2-epochs 4] [--stage2-lr 1e-4] [--kd-lambda 0.5] [--jobs 2]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import corpus

from hark.training.config import load_config
from hark.training.data.formats import load_split
from hark.training.evaluate import score_split
from hark.training.metrics import ensemble, retrieval_metrics
from hark.training.model import load_checkpoint
from hark.training.run import distill, train


def _cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def _best(history: list[dict]) -> float:
    return round(max(h.get("val_mAP@10", -1.0) for h in history), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--set", nargs="*", default=[], help="stage-1 config overrides")
    parser.add_argument("--clips", nargs=3, type=int, default=(300, 100, 100))
    parser.add_argument("--epochs", type=int, default=None, help="stage-1 epochs (default: the config's)")
    parser.add_argument("--stage2-epochs", type=int, default=4)
    parser.add_argument("--stage2-lr", type=float, default=None, help="stage-2 peak lr (default: the config's)")
    parser.add_argument("--kd-lambda", type=float, default=1.0)
    parser.add_argument("--root", type=Path, default=Path("/tmp/hark-quality"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training process")
    parser.add_argument("--jobs", type=int, default=1, help="models trained at a time, one process each")
    parser.add_argument("--stage2", choices=["both", "continue", "scratch"], default="both")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = corpus(args.root, "a", tuple(args.clips))
    work = args.root / f"distill_{int(time.time())}"
    overrides = list(args.set) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    load_before, wall0, cpu0 = os.getloadavg(), time.time(), _cpu()
    with _pool(args.jobs) as pool:
        # 0: the student; 1-3: the teachers
        stage1 = {seed: pool.submit(_job, args.threads, "train", args.config, [*overrides, f"train.seed={seed}"],
                                    None, [], data, work / f"seed{seed}") for seed in (0, 1, 2, 3)}
        runs = {seed: job.result() for seed, job in stage1.items()}
        teachers = [work / f"seed{s}" / "best.pt" for s in (1, 2, 3)]
        stage2 = [f"train.epochs={args.stage2_epochs}", "train.warmup_epochs=0"]
        if args.stage2_lr is not None:
            stage2.append(f"train.lr={args.stage2_lr}")
        student = work / "seed0" / "best.pt"
        jobs = {}
        if args.stage2 in ("both", "scratch"):
            jobs["scratch"] = pool.submit(_job, args.threads, "distill", args.config,
                                          [*overrides, "train.seed=0", f"train.kd_lambda={args.kd_lambda}"], None,
                                          teachers, data, work / "scratch_kd")
        if args.stage2 in ("both", "continue"):
            jobs["hard"] = pool.submit(_job, args.threads, "distill", args.config, [*stage2, "train.kd_lambda=0.0"],
                                       student, teachers, data, work / "hard")
            jobs["kd"] = pool.submit(_job, args.threads, "distill", args.config,
                                     [*stage2, f"train.kd_lambda={args.kd_lambda}"], student, teachers, data,
                                     work / "kd")
        results = {name: job.result() for name, job in jobs.items()}
    wall, cpu = time.time() - wall0, _cpu() - cpu0 + sum(r["cpu_s"] for r in [*runs.values(), *results.values()])

    val = load_split([data], "validation")
    members = [score_split(load_checkpoint(t)[0], val, progress=False) for t in teachers]
    fused = ensemble([m.scores["prediction"] for m in members])
    report = {
        "corpus": str(data), "config": args.config, "overrides": overrides, "stage2_epochs": args.stage2_epochs,
        "kd_lambda": args.kd_lambda, "stage2_lr": args.stage2_lr, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "stage1_val_mAP@10": {f"seed{s}": _best(r["history"]) for s, r in runs.items()},
        "teacher_ensemble_val_mAP@10": round(retrieval_metrics(fused, members[0].targets)["mAP@10"], 2),
        "stage2": args.stage2,
    }
    gains = []
    if "scratch" in results:
        report["scratch_hard_by_epoch"] = _by_epoch(runs[0]["history"])
        report["scratch_kd_by_epoch"] = _by_epoch(results["scratch"]["history"])
        report["scratch_hard_val_mAP@10"] = _best(runs[0]["history"])
        report["scratch_kd_val_mAP@10"] = _best(results["scratch"]["history"])
        report["scratch_kd_gain"] = round(report["scratch_kd_val_mAP@10"] - report["scratch_hard_val_mAP@10"], 2)
        gains.append(report["scratch_kd_gain"])
    if "kd" in results:
        report["student_hard_val_mAP@10"] = _best(results["hard"]["history"])
        report["student_kd_val_mAP@10"] = _best(results["kd"]["history"])
        report["hard_by_epoch"] = _by_epoch(results["hard"]["history"])
        report["kd_by_epoch"] = _by_epoch(results["kd"]["history"])
        report["kd_gain"] = round(report["student_kd_val_mAP@10"] - report["student_hard_val_mAP@10"], 2)
        gains.append(report["kd_gain"])
    print(json.dumps(report))
    return 0 if all(np.isfinite(g) for g in gains) else 1


def _by_epoch(history: list[dict]) -> list[float]:
    return [round(h["val_mAP@10"], 2) for h in history]


def _pool(jobs: int):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max(1, jobs), mp_context=multiprocessing.get_context("spawn"))


def _job(threads: int, kind: str, config: str, overrides: list[str], init: Path | None, teachers: list[Path],
         data: Path, out: Path) -> dict:
    """One training run in a worker process: its validation history and CPU seconds."""
    torch.set_num_threads(threads)
    cpu0 = _cpu()
    if kind == "train":
        result = train(load_config(config, overrides), [data], out, device="cpu", resume=False, progress=False)
    elif init is None:  # a student from scratch: the config (and seed) of its stage-1 run, the teachers' targets
        result = distill(None, teachers, [data], out, device="cpu", resume=False, progress=False,
                         config=load_config(config, overrides))
    else:
        result = distill(init, teachers, [data], out, overrides=overrides, device="cpu", resume=False,
                         progress=False)
    return {"history": result.history, "cpu_s": _cpu() - cpu0}


if __name__ == "__main__":
    sys.exit(main())
