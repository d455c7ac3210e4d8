"""Does distillation from an ensemble of three teachers help a tiny student? Measured on validation.

Stage 1 trains the three teachers (`--teachers`, `--teacher-epochs`) and each student seed (`--students`,
`--epochs`) on the hard loss; models differ only in seed and budget. Then, per student, two comparisons between
runs that differ only in the loss (same init, same data order, same epochs), through the same pipeline
(`hark.training.run.distill`):

- continue (`--stage2 continue`): the student continues from its stage-1 checkpoint for `--stage2-epochs` twice,
  once with kd_lambda=0 (the hard NT-Xent loss only: the student "trained without distillation", at equal
  compute) and once with the teachers' averaged predictions as soft targets;
- scratch (`--stage2 scratch`): the student's config and seed trained from scratch for its stage-1 schedule with
  the teachers' soft targets, against its own stage-1 run (the same schedule on the hard loss alone).

Reported: the best validation mAP@10 of each, the gains per student and their mean, and the teachers' ensemble on
validation; then each run's best checkpoint (and the teachers' ensemble) on the evaluation split, which chose
nothing: mAP@10 against each caption's own clip and, over the relevance file (every clip with the caption's event
set is relevant), the many-to-many mAP@16 the report's table 2 also gains on. Tuned on (and reported for) the
default generator only. `--jobs N` trains N models at a time (one process each, `--threads` threads each).

    python benchmarks/distill.py [--clips 300 100 100] [--epochs 9] [--teacher-epochs 29] [--students 0 4 5]
                                 [--stage2 both|continue|scratch] [--stage2-epochs 3] [--stage2-lr 2e-4]
                                 [--kd-lambda 1] [--jobs 2] [--threads 1] [--teacher-heads same|report|linear]
                                 [--teachers-from RUN] [--device cuda]
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
from hark.training.metrics import ensemble, read_relevance, relevance_metrics, retrieval_metrics
from hark.training.model import load_checkpoint
from hark.training.run import distill, train

# The report's three systems as head overrides of one config: the ensemble it distils is of different heads.
REPORT_HEADS = [["heads.attention=none"], ["heads.cosine=false", "heads.attention=sentence"], ["heads.cosine=false"]]


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
    parser.add_argument("--corpus-seed", type=int, default=None, help="corpus seed (default: the variant's)")
    parser.add_argument("--epochs", type=int, default=None, help="students' stage-1 epochs (default: the config's)")
    parser.add_argument("--teacher-epochs", type=int, default=None, help="teachers' epochs (default: --epochs)")
    parser.add_argument("--students", nargs="+", type=int, default=[0], help="student seeds")
    parser.add_argument("--teachers", nargs=3, type=int, default=[1, 2, 3], help="teacher seeds")
    parser.add_argument("--teacher-heads", choices=["same", "report", "linear"], default="same",
                        help="same: the config's heads for every teacher; report: the report's three systems "
                             "(cosine bi-encoder, sentence-token attention, full-text attention) at the config's size; "
                             "linear: the report's cosine and full-text systems and the linear model (`hark linear`)")
    parser.add_argument("--stage2-epochs", type=int, default=4)
    parser.add_argument("--stage2-lr", type=float, default=None, help="stage-2 peak lr (default: the config's)")
    parser.add_argument("--kd-lambda", type=float, default=1.0)
    parser.add_argument("--caption-noise", type=float, default=0.0,
                        help="share of development clips whose captions are another clip's (weak web labels)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/hark-quality"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training process")
    parser.add_argument("--jobs", type=int, default=1, help="models trained at a time, one process each")
    parser.add_argument("--stage2", choices=["both", "continue", "scratch"], default="both")
    parser.add_argument("--teachers-from", type=Path, default=None,
                        help="an earlier run's folder: its teacher<seed> runs are the teachers (not trained again)")
    parser.add_argument("--device", default="cpu", help="torch device of every training process (cpu, cuda)")
    args = parser.parse_args(argv)
    if set(args.students) & set(args.teachers):
        parser.error("a seed cannot be both a student and a teacher")
    torch.set_num_threads(args.threads)
    if not 0 <= args.caption_noise < 1:
        parser.error("--caption-noise must be in [0, 1)")
    data = corpus(args.root, "a", tuple(args.clips), args.corpus_seed)
    if args.caption_noise:
        data = noisy_corpus(data, args.caption_noise)
    work = args.root / f"distill_{int(time.time())}"
    student_set = list(args.set) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    teacher_epochs = args.teacher_epochs or args.epochs
    teacher_set = list(args.set) + ([f"train.epochs={teacher_epochs}"] if teacher_epochs else [])
    load_before, wall0, cpu0 = os.getloadavg(), time.time(), _cpu()
    with _pool(args.jobs) as pool:
        def submit(kind: str, overrides: list[str], init: Path | None, teachers: list[Path], out: Path):
            return pool.submit(_job, args.device, args.threads, kind, args.config, overrides, init, teachers, data,
                               work / out)

        heads = REPORT_HEADS if args.teacher_heads in ("report", "linear") else [[]] * 3
        home = args.teachers_from or work
        neural = args.teachers if args.teacher_heads != "linear" else [args.teachers[0], args.teachers[2]]
        stage1 = {} if args.teachers_from else {
            ("teacher", s): submit("train", [*teacher_set, *h, f"train.seed={s}"], None, [], f"teacher{s}")
            for s, h in zip(args.teachers, heads, strict=True) if s in neural}
        stage1 |= {("student", s): submit("train", [*student_set, f"train.seed={s}"], None, [], f"student{s}")
                   for s in args.students}
        teachers = [home / f"teacher{s}" / "best.pt" for s in args.teachers]
        if args.teacher_heads == "linear":  # the linear model in place of the weakest (sentence-attention) system
            teachers[1] = _fit_linear(data, args.config, work / "linear.npz")
        stage2 = [f"train.epochs={args.stage2_epochs}", "train.warmup_epochs=0"]
        if args.stage2_lr is not None:
            stage2.append(f"train.lr={args.stage2_lr}")
        # Stage 2 needs the teachers: wait for them (students' stage 1 may still be running).
        runs = {key: job.result() for key, job in stage1.items() if key[0] == "teacher"}
        if args.teachers_from:
            runs |= {("teacher", s): {"history": _history(home / f"teacher{s}"), "cpu_s": 0.0} for s in neural}
        jobs = {}
        for s in args.students:
            if args.stage2 in ("both", "scratch"):
                jobs[("scratch", s)] = submit(
                    "distill", [*student_set, f"train.seed={s}", f"train.kd_lambda={args.kd_lambda}"], None, teachers,
                    f"scratch_kd{s}")
        runs |= {key: job.result() for key, job in stage1.items() if key[0] == "student"}
        for s in args.students:
            if args.stage2 in ("both", "continue"):
                init = work / f"student{s}" / "best.pt"
                for name, lam in (("hard", 0.0), ("kd", args.kd_lambda)):
                    jobs[(name, s)] = submit("distill", [*stage2, f"train.kd_lambda={lam}"], init, teachers,
                                             f"{name}{s}")
        results = {key: job.result() for key, job in jobs.items()}
    wall, cpu = time.time() - wall0, _cpu() - cpu0 + sum(r["cpu_s"] for r in [*runs.values(), *results.values()])

    val = load_split([data], "validation")
    members = [_member_scores(t, val, args.device) for t in teachers]
    fused = ensemble([m.scores["prediction"] for m in members])
    report = {
        "corpus": str(data), "config": args.config, "student_overrides": student_set,
        "teacher_overrides": teacher_set, "teachers_from": str(args.teachers_from or ""),
        "teacher_heads": args.teacher_heads, "stage2_epochs": args.stage2_epochs,
        "kd_lambda": args.kd_lambda, "caption_noise": args.caption_noise,
        "stage2_lr": args.stage2_lr, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "teachers_val_mAP@10": {f"seed{s}": _best(runs[("teacher", s)]["history"]) for s in neural}
        | ({"linear": round(retrieval_metrics(members[1].scores["prediction"], members[1].targets)["mAP@10"], 2)}
           if args.teacher_heads == "linear" else {}),
        "teacher_ensemble_val_mAP@10": round(retrieval_metrics(fused, members[0].targets)["mAP@10"], 2),
        "stage2": args.stage2, "students": {},
    }
    test = load_split([data], "evaluation")
    relevance = read_relevance(data / "relevance_evaluation.csv")
    test_members = [_member_scores(t, test, args.device) for t in teachers]
    report["teacher_ensemble_eval"] = _eval_metrics(test_members[0], relevance,
                                                   ensemble([m.scores["prediction"] for m in test_members]))
    gains: dict[str, list[float]] = {"scratch": [], "continue": []}
    eval_gains: dict[str, list[float]] = {"scratch_mAP@16": [], "continue_mAP@16": [], "continue_mAP@10": []}
    for s in args.students:
        hard_history = runs[("student", s)]["history"]
        row = {"stage1_val_mAP@10": _best(hard_history), "stage1_by_epoch": _by_epoch(hard_history)}
        if ("scratch", s) in results:
            kd = results[("scratch", s)]["history"]
            row |= {"scratch_kd_by_epoch": _by_epoch(kd), "scratch_kd_val_mAP@10": _best(kd),
                    "scratch_kd_gain": round(_best(kd) - _best(hard_history), 2)}
            gains["scratch"].append(row["scratch_kd_gain"])
        if ("kd", s) in results:
            hard, kd = results[("hard", s)]["history"], results[("kd", s)]["history"]
            row |= {"hard_by_epoch": _by_epoch(hard), "kd_by_epoch": _by_epoch(kd),
                    "student_hard_val_mAP@10": _best(hard), "student_kd_val_mAP@10": _best(kd),
                    "kd_gain": round(_best(kd) - _best(hard), 2)}
            gains["continue"].append(row["kd_gain"])
            hard_eval = _eval_run(work / f"hard{s}", test, relevance, args.device)
            kd_eval = _eval_run(work / f"kd{s}", test, relevance, args.device)
            row |= {"hard_eval": hard_eval, "kd_eval": kd_eval}
            eval_gains["continue_mAP@16"].append(round(kd_eval["mAP@16"] - hard_eval["mAP@16"], 2))
            eval_gains["continue_mAP@10"].append(round(kd_eval["mAP@10"] - hard_eval["mAP@10"], 2))
        if ("scratch", s) in results:
            scratch_eval = _eval_run(work / f"scratch_kd{s}", test, relevance, args.device)
            stage1_eval = _eval_run(work / f"student{s}", test, relevance, args.device)
            row |= {"stage1_eval": stage1_eval, "scratch_kd_eval": scratch_eval}
            eval_gains["scratch_mAP@16"].append(round(scratch_eval["mAP@16"] - stage1_eval["mAP@16"], 2))
        report["students"][f"seed{s}"] = row
    report["gains"] = {k: {"each": v, "mean": round(float(np.mean(v)), 2)} for k, v in gains.items() if v}
    report["eval_gains"] = {k: {"each": v, "mean": round(float(np.mean(v)), 2),
                                "stderr": round(float(np.std(v, ddof=1) / np.sqrt(len(v))), 2) if len(v) > 1 else None}
                            for k, v in eval_gains.items() if v}
    print(json.dumps(report))
    return 0 if all(np.isfinite(g) for v in gains.values() for g in v) else 1


def noisy_corpus(clean: Path, share: float, seed: int = 7) -> Path:
    """`clean` with wrong development captions for `share` of its clips, validation and evaluation untouched.

    Web-scraped training captions (WavCaps, a part of the report's data) are often about another sound. The chosen
    clips trade captions among themselves (a random derangement), so the captions' wording stays that of the corpus
    and only the pairing is wrong. Audio and the other splits are symlinks to the clean corpus."""
    import csv
    import shutil

    out = clean.parent / f"{clean.name}_noise{share:g}_{seed}"
    if (out / "noisy-done").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for entry in clean.iterdir():
        (out / entry.name).symlink_to(entry.resolve())
    captions = out / "clotho_captions_development.csv"
    captions.unlink()
    with open(clean / captions.name, newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(rows), size=round(share * len(rows)), replace=False)
    shift = np.roll(chosen, 1)  # each chosen clip gets the captions of the one before it: none keeps its own
    texts = [row[1:] for row in rows]
    for i, j in zip(chosen, shift, strict=True):
        rows[i] = [rows[i][0], *texts[j]]
    with open(captions, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    (out / "noisy-done").write_text(f"{len(chosen)} of {len(rows)} development clips carry another clip's captions\n")
    return out


def _eval_metrics(split, relevance: dict[str, list[str]], scores: np.ndarray | None = None) -> dict[str, float]:
    """mAP@10 and R@1 against each caption's own clip; mAP@16 and mAP@10 over the relevance file."""
    scores = split.scores["fused"] if scores is None else scores
    own = retrieval_metrics(scores, split.targets)
    many, _ = relevance_metrics(scores, split.queries, split.audio_names, relevance)
    return {"mAP@10": round(own["mAP@10"], 2), "R@1": round(own["R@1"], 2),
            "mAP@16": round(many["mAP@16"], 2), "relevance_mAP@10": round(many["mAP@10_rel"], 2)}


def _eval_run(run: Path, test, relevance: dict[str, list[str]], device: str) -> dict[str, float]:
    model, _ = load_checkpoint(run / "best.pt")
    return _eval_metrics(score_split(model.to(device), test, progress=False), relevance)


def _fit_linear(data: Path, config: str, out: Path) -> Path:
    """The linear model (`hark linear`) fitted on the corpus' development split, on the students' mel front end."""
    from hark.training.linear import fit_linear

    out.parent.mkdir(parents=True, exist_ok=True)
    return fit_linear(load_split([data], "development"), load_config(config).audio).save(out)


def _member_scores(teacher: Path, split, device: str):
    """An ensemble member's scores of a split, as `score_split` orders them (a checkpoint or a linear model)."""
    from hark.training.linear import LinearModel, is_linear_model

    if is_linear_model(teacher):
        return score_split(LinearModel.load(teacher), split)
    return score_split(load_checkpoint(teacher)[0].to(device), split, progress=False)


def _history(run: Path) -> list[dict]:
    """The epoch records of a finished run's metrics.jsonl."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "val_mAP@10" in r]


def _by_epoch(history: list[dict]) -> list[float]:
    return [round(h["val_mAP@10"], 2) for h in history]


def _pool(jobs: int):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max(1, jobs), mp_context=multiprocessing.get_context("spawn"))


def _job(device: str, threads: int, kind: str, config: str, overrides: list[str], init: Path | None,
         teachers: list[Path], data: Path, out: Path) -> dict:
    """One training run in a worker process: its validation history and CPU seconds."""
    torch.set_num_threads(threads)
    cpu0 = _cpu()
    if kind == "train":
        result = train(load_config(config, overrides), [data], out, device=device, resume=False, progress=False)
    elif init is None:  # a student from scratch: the config (and seed) of its stage-1 run, the teachers' targets
        result = distill(None, teachers, [data], out, device=device, resume=False, progress=False,
                         config=load_config(config, overrides))
    else:
        result = distill(init, teachers, [data], out, overrides=overrides, device=device, resume=False,
                         progress=False)
    return {"history": result.history, "cpu_s": _cpu() - cpu0}


if __name__ == "__main__":
    sys.exit(main())
