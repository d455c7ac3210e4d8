"""Bundle commands: export, bundle verify, and the registry (models list / register)."""

from __future__ import annotations

import argparse
import json
import logging

from .common import add_device, add_json, print_json, settings_from

log = logging.getLogger(__name__)


def cmd_export(args: argparse.Namespace) -> int:
    from hark.exporters.onnx_export import export_bundle
    from hark.plugin.verify import verify_bundle

    calibration = None
    if args.calibrate_on:
        from hark.training.calibrate import calibrate_checkpoint

        calibration = calibrate_checkpoint(args.checkpoint, args.calibrate_on, args.calibrate_split)
    out = export_bundle(args.checkpoint, args.out, precision=args.precision, exporter=args.exporter,
                        overwrite=args.overwrite, calibration=calibration)
    report = verify_bundle(out)
    if args.json:
        print_json(report)
    else:
        print(f"bundle {report['name']} version {report['version']} written to {out} "
              f"(graphs: {', '.join(report['graphs'])}; parity {json.dumps(report['parity'])})")
    return 0


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    from hark.bundle import BundleError
    from hark.errors import HarkError
    from hark.plugin.verify import verify_bundle

    try:
        report = verify_bundle(args.bundle, device=args.device)
    except (HarkError, ImportError, MemoryError):
        raise
    except Exception as exc:
        # The manifest is checked when it loads; what still fails here is the bundle's graphs disagreeing with
        # it (a shape, an input). Checking bundles is this command's job: say so in one line (-v: traceback).
        log.debug("bundle verification failed", exc_info=True)
        reason = (str(exc).splitlines() or [""])[0]
        raise BundleError(f"{args.bundle}: verification failed: {type(exc).__name__}"
                          + (f": {reason}" if reason else "")) from exc
    if args.json:
        print_json(report)
    else:
        print(f"OK  {report['name']} version {report['version']}: {report['files']} files hashed, graphs "
              + ", ".join(f"{g} ({'/'.join(p)})" for g, p in report["graphs"].items())
              + f", smoke test passed in {report['seconds']} s")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from hark.registry import register, registry_rows

    settings = settings_from(args)
    if args.models_command == "unpin":
        from hark.registry import unpin

        collection = args.collection or settings.collection
        lifted = unpin(settings, collection)
        if args.json:
            print_json({"collection": collection, "unpinned": lifted})
        else:
            print(f"{collection}: pin lifted; the beat re-indexes it to the newest registered version"
                  if lifted else f"{collection} was not pinned")
        return 0
    if args.models_command == "register":
        target = register(settings, args.bundle)
        print(json.dumps({"registered": str(target)}) if args.json else f"registered {target}")
        return 0
    rows = registry_rows(settings)
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            tag = f"  live for {', '.join(r['live_for'])}" if r["live_for"] else ""
            pin = f"  pinned for {', '.join(r['pinned_for'])}" if r.get("pinned_for") else ""
            print(f"{r['version']}  {r['created_at']}  {r['path']}{tag}{pin}")
        if not rows:
            print(f"no bundles registered in {settings.models_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint as an ONNX model bundle",
                       description="Write audio/clip/text/rerank ONNX graphs, the tokenizer and manifest.json "
                       "(hashes, parity, collection schema) to OUT, then verify the bundle.")
    p.add_argument("checkpoint", help="checkpoint file or run folder (best.pt is used)")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to write")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                   help="default precision of the encoders (fp32 graphs are always included)")
    p.add_argument("--exporter", default="torchscript", choices=["torchscript", "dynamo"],
                   help="torch.onnx exporter to use")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.add_argument("--calibrate-on", action="append", metavar="DIR",
                   help="dataset folder whose validation split fits the fusion weights (and whether to rerank); "
                   "repeatable")
    p.add_argument("--calibrate-split", default="validation", help="split to fit on (default: validation)")
    add_json(p, "print the verification report as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bundle", help="inspect model bundles")
    bsub = p.add_subparsers(dest="bundle_command", required=True)
    v = bsub.add_parser("verify", help="check hashes and format, load every graph, run a smoke input")
    v.add_argument("bundle", help="bundle folder")
    add_device(v, default="cpu")
    add_json(v, "print the report as JSON")
    v.set_defaults(func=cmd_bundle_verify)

    p = sub.add_parser("models", help="the bundle registry (HARK_MODELS_DIR) and which version is live where")
    msub = p.add_subparsers(dest="models_command", required=True)
    m = msub.add_parser("list", help="registered bundles, oldest first, with the collections they serve")
    add_json(m)
    m.set_defaults(func=cmd_models)
    m = msub.add_parser("unpin", help="lift a rollback's pin so the beat may re-index to the newest version")
    m.add_argument("--collection", help="collection alias; default HARK_COLLECTION")
    add_json(m)
    m.set_defaults(func=cmd_models)
    m = msub.add_parser("register", help="copy a verified bundle into the registry")
    m.add_argument("bundle", help="bundle folder")
    add_json(m)
    m.set_defaults(func=cmd_models)
