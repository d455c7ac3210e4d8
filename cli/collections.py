"""Collection commands: reindex and rollback."""

from __future__ import annotations

import argparse
import json

from .common import CLIError, add_json, print_json, settings_from


def cmd_reindex(args: argparse.Namespace) -> int:
    from hark.workers.jobs import job_store
    from hark.workers.reindex import reindex

    settings = settings_from(args)
    collection = args.collection or settings.collection
    report = reindex(settings, job_store(settings), collection, args.bundle, allow_failures=args.allow_failures)
    if args.json:
        print_json(report)
    else:
        print(f"{collection} now serves {report['live']} (was {report['previous']}): {report['stored']} points, "
              f"{report['failed_files']} files failed, {report['recomputed']} vectors recomputed and matched"
              + (f"; dropped {', '.join(report['pruned'])}" if report["pruned"] else ""))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from hark.store import connect
    from hark.workers.reindex import rollback

    settings = settings_from(args)
    client = connect(settings)
    try:
        result = rollback(settings, client, args.collection or settings.collection, sticky=not args.no_pin)
    finally:
        client.close()
    pinned = (f"; pinned to {result['pinned']} until a newer bundle is registered (lift it: "
              f"hark models unpin --collection {result['collection']})") if result["pinned"] else ""
    print(json.dumps(result) if args.json else f"{result['collection']} now serves {result['live']} "
          f"(was {result['previous']}){pinned}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from hark.store.edge import backup

    settings = settings_from(args)
    if not settings.embedded_qdrant:
        raise CLIError("HARK_QDRANT_URL is set: back up a Qdrant server with its snapshots "
                       "(POST /collections/{name}/snapshots), see deploy/README.md")
    dest = backup(settings.qdrant_path, args.dest)
    print(json.dumps({"backup": str(dest)}) if args.json else f"backed up {settings.qdrant_path} to {dest}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from hark.store.edge import restore

    settings = settings_from(args)
    if not settings.embedded_qdrant:
        raise CLIError("HARK_QDRANT_URL is set: restore a Qdrant server from its snapshots")
    path = restore(args.source, settings.qdrant_path)
    print(json.dumps({"restored": str(path)}) if args.json else f"restored {args.source} into {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reindex", help="rebuild a collection with another model version, then switch its alias",
                       description="Builds NAME__VERSION from the source files recorded in the live collection, "
                       "verifies it (every live file stored complete, sampled vectors recomputed), switches the alias "
                       "atomically and prunes versions beyond HARK_KEEP_COLLECTIONS. Resumes an interrupted run; "
                       "files that failed refuse the switch, and running it again retries them.")
    p.add_argument("--collection", help="collection alias; default HARK_COLLECTION")
    p.add_argument("--bundle", required=True, help="registered version or bundle folder to switch to")
    p.add_argument("--allow-failures", action="store_true",
                   help="switch even though some files failed to re-ingest (they stay only in the previous "
                        "collection, which is then not pruned)")
    add_json(p, "print the report as JSON")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("rollback", help="switch a collection's alias back to the previous version",
                       description="Switches the alias back and pins the collection to that version: queries, "
                       "ingestion and the beat follow it until a newer bundle is registered or the pin is lifted "
                       "(`hark models unpin`).")
    p.add_argument("--collection", help="collection alias; default HARK_COLLECTION")
    p.add_argument("--no-pin", action="store_true", help="do not pin: the beat may re-index to the newest again")
    add_json(p)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("backup", help="copy the embedded Qdrant folder consistently (stop writers first)",
                       description="A consistent copy of HARK_QDRANT_PATH to DEST (which must not exist), taken "
                       "while no write can run: the folder must not be held by a running worker or server. "
                       "A Qdrant server is backed up with its own snapshots.")
    p.add_argument("dest", help="backup folder to create")
    add_json(p)
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", help="put a backup in place as HARK_QDRANT_PATH (which must be absent or empty)")
    p.add_argument("source", help="a folder written by `hark backup`")
    add_json(p)
    p.set_defaults(func=cmd_restore)
