"""First-run commands: demo and config."""

from __future__ import annotations

import argparse

from .common import add_common, add_device, add_json, out_folder, print_json, settings_from


def cmd_demo(args: argparse.Namespace) -> int:
    from hark.demo.run import run_demo

    result = run_demo(out_folder(args.work, "--work"), device=args.device, quiet=args.quiet)
    if args.json:
        print_json(result)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    rows = settings_from(args).describe()
    if args.json:
        print_json({r["name"]: {"value": r["value"], "source": r["source"]} for r in rows})
    else:
        for r in rows:
            print(f"{r['name']:26s} {r['value']:32s} ({r['source']})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on a generated corpus, no servers needed",
                       description="Generate a captioned corpus, train a tiny joint model, export and verify its "
                       "bundle, evaluate bi-encoder vs rerank, and run example queries. Re-runs reuse the work "
                       "folder.")
    p.add_argument("--work", default=".hark/demo", metavar="DIR", help="work folder (default: .hark/demo)")
    add_device(p, "device for ONNX Runtime")
    add_common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("config", help="print the effective settings and where each came from")
    add_json(p)
    p.set_defaults(func=cmd_config)
