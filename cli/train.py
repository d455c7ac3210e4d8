"""Training-side commands: configs, train, distill, evaluate. They import the training stack lazily, so
the runtime commands never load torch; `evaluate --scores` needs numpy only."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import (
    CLIError,
    add_common,
    add_device,
    add_json,
    out_folder,
    print_json,
    print_metrics_table,
    settings_from,
)


def cmd_configs(args: argparse.Namespace) -> int:
    from hark.training.config import describe_config, named_configs

    configs = named_configs()
    if args.json:
        print_json({name: describe_config(path) for name, path in configs.items()})
    else:
        for name, path in configs.items():
            print(f"{name:22s} {describe_config(path)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hark.training.config import load_config
    from hark.training.run import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, args.data, out_folder(args.out), device=args.device, resume=not args.no_resume,
                   progress=not args.quiet)
    registered_to = None
    if args.register:
        from hark.exporters.onnx_export import export_bundle
        from hark.registry import register
        from hark.training.calibrate import calibrate_checkpoint

        best = Path(args.out) / "best.pt"
        exported = export_bundle(best, Path(args.out) / "bundle", overwrite=True,
                                 calibration=calibrate_checkpoint(best, args.data, "validation"))
        registered_to = str(register(settings_from(args), exported))
    summary = {"out": str(result.out_dir), "epochs": result.epochs_run, "best_val_mAP@10": result.best_metric,
               "last": result.history[-1] if result.history else {}, "registered": registered_to}
    if args.json:
        print_json(summary)
    else:
        print(f"trained {result.epochs_run} epochs; best validation mAP@10 {result.best_metric:.2f}; "
              f"checkpoints and metrics.jsonl in {result.out_dir}"
              + (f"; bundle registered as {registered_to}" if registered_to else ""))
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from hark.training.run import distill

    config = None
    if args.config:
        from hark.training.config import load_config

        config = load_config(args.config)
    result = distill(Path(args.init) if args.init else None, [Path(t) for t in args.teacher], args.data,
                     out_folder(args.out), overrides=args.overrides, device=args.device, resume=not args.no_resume,
                     progress=not args.quiet, config=config)
    summary = {"out": str(result.out_dir), "epochs": result.epochs_run, "best_val_mAP@10": result.best_metric}
    if args.json:
        print_json(summary)
    else:
        print(f"distilled {result.epochs_run} epochs; best validation mAP@10 {result.best_metric:.2f}; "
              f"checkpoints in {result.out_dir}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def cmd_linear(args: argparse.Namespace) -> int:
    from hark.training.config import load_config
    from hark.training.data.formats import load_split
    from hark.training.linear import LinearConfig, fit_linear
    from hark.training.metrics import retrieval_metrics

    out = Path(args.out)
    if out.suffix != ".npz":
        raise CLIError(f"--out {out}: a linear model file ends in .npz (that is how --teacher tells it apart)")
    if out.exists() and not args.overwrite:
        raise CLIError(f"--out {out} exists; give --overwrite to replace it")
    audio = load_config(args.config).audio
    examples = load_split(args.data, "development")
    if not examples:
        raise CLIError(f"no development examples in {', '.join(args.data)}")
    config = LinearConfig(rank=args.rank, audio_reg=args.audio_reg, text_reg=args.text_reg, power=args.power,
                          folds=args.folds)
    model = fit_linear(examples, audio, config)
    model.save(out)
    summary = {"out": str(out), "clips": len(examples), "terms": len(model.vocabulary), "scale": model.scale}
    validation = load_split(args.data, "validation")
    if validation:
        scores, targets, _ = model.split_scores(validation)
        summary["val_mAP@10"] = round(retrieval_metrics(scores, targets)["mAP@10"], 2)
    if args.json:
        print_json(summary)
    else:
        print(f"linear model of {summary['clips']} clips and {summary['terms']} terms in {out}"
              + (f"; validation mAP@10 {summary['val_mAP@10']:.2f}" if validation else ""))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hark.training import metrics
    from hark.training.data.formats import load_split

    if bool(args.checkpoint) == bool(args.scores):
        raise CLIError("give either --checkpoint (one or more, averaged as an ensemble) or --scores")
    relevance = metrics.read_relevance(args.relevance) if args.relevance else None
    examples = load_split(args.data, args.split)
    if not examples:
        raise CLIError(f"no examples for split '{args.split}' in {', '.join(args.data)}")
    rows: dict[str, dict[str, float]] = {}
    reports: dict[str, dict[str, int]] = {}

    def with_relevance(name: str, result: dict[str, float], scores, queries, names) -> None:
        if relevance is not None:
            found, report = metrics.relevance_metrics(scores, queries, names, relevance, strict=args.strict)
            result.update(found)
            reports[name] = report.to_dict()
        rows[name] = result

    if args.scores:
        queries, names, scores = metrics.read_score_csv(args.scores)
        targets = metrics.score_file_targets(queries, [(ex.audio_path.name, ex.captions) for ex in examples])
        with_relevance("scores", metrics.evaluate_scores(scores, queries, names, targets), scores, queries, names)
    else:
        from hark.training.evaluate import score_split, write_score_csv
        from hark.training.linear import LinearModel, is_linear_model
        from hark.training.model import load_checkpoint
        from hark.training.run import pick_device

        device = pick_device(args.device)
        splits = []
        for path in args.checkpoint:
            model = LinearModel.load(path) if is_linear_model(path) else load_checkpoint(path)[0].to(device)
            splits.append(score_split(model, examples, progress=not args.quiet))
        if len(splits) == 1:
            split = splits[0]
            for head, scores in split.scores.items():
                if head != "prediction":  # ranks like "fused": only ensembles need its scale
                    with_relevance(head, metrics.retrieval_metrics(scores, split.targets), scores, split.queries,
                                   split.audio_names)
        else:
            # The ensemble's prediction: the mean of its members' predictions (objectives.prediction).
            base = splits[0]
            if any(s.audio_names != base.audio_names for s in splits):
                raise CLIError("ensemble members decoded different files of the split; check the audio folder")
            base.scores["ensemble"] = metrics.ensemble([s.scores["prediction"] for s in splits])
            with_relevance("ensemble", metrics.retrieval_metrics(base.scores["ensemble"], base.targets),
                           base.scores["ensemble"], base.queries, base.audio_names)
        if args.write_scores:
            write_score_csv(splits[0], Path(args.write_scores), "ensemble" if len(splits) > 1 else "fused")
    headline = rows.get("ensemble") or rows.get("fused") or rows.get("scores")
    if args.json:
        if len(rows) > 1:
            print(json.dumps({"heads": rows}), file=sys.stderr)
        print_json({**headline, **({"relevance_mismatch": reports} if reports else {})})
    else:
        print_metrics_table(rows)
        for name, report in reports.items():
            if any(report.values()):
                print(f"{name}: relevance mismatch {report} (see the warning above; --strict makes it an error)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hark.training.report import render

    out = render(Path(args.run), Path(args.out) if args.out else None)
    if args.json:
        print_json({"report": str(out)})
    else:
        print(f"curves written to {out} (open it in a browser); TensorBoard: tensorboard --logdir "
              f"{Path(args.run) / 'tensorboard'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("configs", help="list the named model configs")
    add_json(p)
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("train", help="train a model (stage 1, contrastive)",
                       description="Train a model on one or more dataset folders (Clotho, AudioCaps, WavCaps, "
                       "TACOS layouts). Resumes from OUT/last.pt when it exists.")
    p.add_argument("config", help="a named config (see `hark configs`) or a JSON config file")
    p.add_argument("--data", action="append", required=True, metavar="DIR",
                   help="dataset folder; repeat to mix datasets")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder: checkpoints, metrics.jsonl")
    add_device(p, "torch device")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/last.pt exists")
    p.add_argument("--register", action="store_true",
                   help="export the best checkpoint and register the bundle (the beat re-indexes with it)")
    p.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="config overrides, e.g. train.epochs=3 heads.attention=full")
    add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="fine-tune a student on an ensemble's scores (stage 2)",
                       description="Knowledge distillation: the student starts from its stage-1 checkpoint "
                       "(--init), or from scratch as a named config describes (--config), and learns the averaged "
                       "predictions of the teachers.")
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--init", metavar="CKPT", help="the student's stage-1 checkpoint")
    start.add_argument("--config", metavar="NAME_OR_JSON",
                       help="train the student from scratch with this config (its seed, init and data order, as "
                            "`hark train` would), on the teachers' targets")
    p.add_argument("--teacher", action="append", required=True, metavar="CKPT",
                   help="a teacher checkpoint, or a linear model file (.npz, from `hark linear`); repeat for an "
                        "ensemble")
    p.add_argument("--data", action="append", required=True, metavar="DIR", help="dataset folder")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder")
    add_device(p, "torch device")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/last.pt exists")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")
    add_common(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("linear", help="fit the linear model (spectral statistics + words, CCA): a baseline and "
                       "a distillation teacher",
                       description="Fits per-band log-mel statistics and a bag of words (and word pairs) by "
                       "regularised CCA on the development split, in seconds, calibrates its scores to the "
                       "contrastive temperature, and writes one .npz file that `hark distill --teacher` takes. "
                       "Prints its validation mAP@10 when the data has a validation split.")
    p.add_argument("--data", action="append", required=True, metavar="DIR", help="dataset folder")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="the model file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--config", default="tiny", metavar="NAME_OR_JSON",
                   help="the config whose mel front end the features use: the student's (default tiny)")
    p.add_argument("--rank", type=_positive_int, default=32, help="canonical components kept (32)")
    p.add_argument("--audio-reg", type=_positive_float, default=1.0, help="ridge on the audio covariance (1.0)")
    p.add_argument("--text-reg", type=_positive_float, default=0.01, help="ridge on the text covariance (0.01)")
    p.add_argument("--folds", type=int, choices=[0, *range(3, 11)], default=4, metavar="K",
                   help="cross-fitting folds (0, or 3-10; default 4): distillation then scores each training pair "
                        "with a fit that did not see it")
    p.add_argument("--power", type=_positive_float, default=4.0,
                   help="components weighted by correlation to this power (4)")
    add_common(p)
    p.set_defaults(func=cmd_linear)

    p = sub.add_parser("evaluate", help="R@1/5/10, mAP@10 (and mAP@16) on a dataset split",
                       description="Score a split with one or more checkpoints (an ensemble averages the "
                       "members' predictions: each member's fusion-weighted mean of its heads), or score any "
                       "system's predictions from a score CSV (a `query` column, then one column per audio "
                       "file name). Relevance-file queries and files that do not match the split are reported.")
    p.add_argument("--checkpoint", action="append", metavar="CKPT",
                   help="checkpoint file or run folder, or a linear model file (.npz); repeat for an ensemble")
    p.add_argument("--scores", metavar="CSV", help="score file to evaluate instead of a checkpoint")
    p.add_argument("--data", action="append", required=True, metavar="DIR", help="dataset folder")
    p.add_argument("--split", default="evaluation", help="split name (default: evaluation)")
    p.add_argument("--relevance", metavar="CSV", help="DCASE 2025 relevance file (query,audio_filenames)")
    p.add_argument("--strict", action="store_true",
                   help="fail when the relevance file and the split do not match exactly (default: warn)")
    p.add_argument("--write-scores", metavar="CSV", help="also write the score matrix as a score CSV")
    add_device(p, "torch device")
    add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="render a run's loss and validation curves to an HTML page",
                       description="Reads RUN/metrics.jsonl (written by `hark train` and `hark distill`, beside "
                       "TensorBoard event files in RUN/tensorboard) and writes one self-contained HTML page.")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", metavar="FILE", help="where to write (default RUN/report.html)")
    add_json(p, "print the written path as JSON")
    p.set_defaults(func=cmd_report)
