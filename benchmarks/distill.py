"""Does distillation from an ensemble of three teachers help a tiny student? Measured on validation.

Stage 1 trains four tiny models that differ only in their seed: three teachers and the student. Stage 2
continues the student for the same number of epochs twice, from the same checkpoint, through the same
pipeline (`hark.training.run.distill`), once with kd_lambda=0 (the hard NT-Xent loss only: the student
"trained without distillation", at equal compute) and once with the teachers' averaged predictions as soft
targets. Reported: the best validation mAP@10 of each, and the teachers' ensemble on validation. Tuned on
(and reported for) the default generator's validation split only.

    python benchmarks/distill.py [--clips 300 100 100] [--epochs 6] [--stage2-epochs 4] [--stage2-lr 1e-4]
                                 [--kd-lambda 0.5]
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
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = corpus(args.root, "a", tuple(args.clips))
    work = args.root / f"distill_{int(time.time())}"
    overrides = list(args.set) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    load_before, wall0, cpu0 = os.getloadavg(), time.time(), _cpu()
    runs = {}
    for seed in (0, 1, 2, 3):  # 0: the student; 1-3: the teachers
        cfg = load_config(args.config, [*overrides, f"train.seed={seed}"])
        result = train(cfg, [data], work / f"seed{seed}", device="cpu", resume=False, progress=False)
        runs[seed] = result
    teachers = [work / f"seed{s}" / "best.pt" for s in (1, 2, 3)]
    stage2 = [f"train.epochs={args.stage2_epochs}", "train.warmup_epochs=0"]
    if args.stage2_lr is not None:
        stage2.append(f"train.lr={args.stage2_lr}")
    hard = distill(work / "seed0" / "best.pt", teachers, [data], work / "hard",
                   overrides=[*stage2, "train.kd_lambda=0.0"], device="cpu", resume=False, progress=False)
    soft = distill(work / "seed0" / "best.pt", teachers, [data], work / "kd",
                   overrides=[*stage2, f"train.kd_lambda={args.kd_lambda}"], device="cpu", resume=False,
                   progress=False)
    wall, cpu = time.time() - wall0, _cpu() - cpu0

    val = load_split([data], "validation")
    members = [score_split(load_checkpoint(t)[0], val, progress=False) for t in teachers]
    fused = ensemble([m.scores["prediction"] for m in members])
    report = {
        "corpus": str(data), "config": args.config, "overrides": overrides, "stage2_epochs": args.stage2_epochs,
        "kd_lambda": args.kd_lambda, "stage2_lr": args.stage2_lr, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "stage1_val_mAP@10": {f"seed{s}": _best(r.history) for s, r in runs.items()},
        "teacher_ensemble_val_mAP@10": round(retrieval_metrics(fused, members[0].targets)["mAP@10"], 2),
        "student_hard_val_mAP@10": _best(hard.history),
        "student_kd_val_mAP@10": _best(soft.history),
        "hard_by_epoch": [round(h["val_mAP@10"], 2) for h in hard.history],
        "kd_by_epoch": [round(h["val_mAP@10"], 2) for h in soft.history],
    }
    report["kd_gain"] = round(report["student_kd_val_mAP@10"] - report["student_hard_val_mAP@10"], 2)
    print(json.dumps(report))
    return 0 if np.isfinite(report["kd_gain"]) else 1


if __name__ == "__main__":
    sys.exit(main())
