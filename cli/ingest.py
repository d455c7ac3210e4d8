"""Ingestion commands: ingest, worker, beat, jobs, failed."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from .common import CLIError, add_common, add_device, add_json, parse_meta, print_json, settings_from


def _shown(job: dict[str, Any], drop: set[str]) -> dict[str, Any]:
    """A job for printing: epoch times as ISO 8601 (UTC), internal fields dropped."""
    out = {k: v for k, v in job.items() if k not in drop}
    if "created" in out:
        with contextlib.suppress(TypeError, ValueError):
            out["created"] = dt.datetime.fromtimestamp(float(out["created"]), dt.UTC).isoformat(timespec="seconds")
    return out


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(float(epoch), dt.UTC).isoformat(timespec="seconds")


def print_job(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(_shown(status, {"finished"}))
        return
    print(f"job {status['id']} ({status['collection']}): {status['ingested']} ingested, "
          f"{status['duplicate']} skipped as duplicates, {status['failed']} failed, {status['pending']} pending")
    for path, reason in status.get("duplicates", {}).items():
        print(f"  duplicate: {path}: {reason}")
    for path, reason in status["failures"].items():
        print(f"  failed: {path}: {reason}")
    for batch in status.get("batches", []):
        print(f"  batch {batch['task']}: {batch['state']} (taken by {batch['worker']} at "
              f"{_iso(batch['taken'])})")


def _check_collection_name(name: str) -> None:
    """Refuse a name the store would refuse, before any file is queued (each file failed with it, one by one, and
    went to the dead-letter list). The versioned collection adds `__<version>` to it."""
    from hark.store.edge import validate_name
    from hark.store.errors import StoreError

    try:
        validate_name(name)
        validate_name(f"{name}__{'0' * 16}")
    except StoreError as exc:
        raise CLIError(f"--collection: {exc}") from None


def _check_window(settings: Any, bundle: str) -> None:
    """HARK_WINDOW_SECONDS longer than the bundle's encoder takes failed every file of the job, one by one, each to
    the dead-letter list: refuse it before anything is queued."""
    if not settings.window_seconds:
        return
    from hark.bundle import Bundle

    loaded = Bundle.load(bundle, verify_hashes=False)
    longest = loaded.segment_samples * loaded.max_segments
    if round(settings.window_seconds * loaded.sample_rate) > longest:
        raise CLIError(f"HARK_WINDOW_SECONDS={settings.window_seconds:g} is longer than the bundle's window "
                       f"({longest / loaded.sample_rate:g} s at most)")


def cmd_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hark.registry import bundle_for_collection
    from hark.workers.ingest import Item, collect_files
    from hark.workers.submit import submit_job, wait_for

    settings = settings_from(args)
    files = collect_files(args.paths, recursive=args.recursive)
    if not files:
        raise CLIError("no audio files found in the given paths")
    collection = args.collection or settings.collection
    _check_collection_name(collection)
    meta = parse_meta(args.meta)
    bundle = str(bundle_for_collection(settings, collection, args.bundle).resolve())
    _check_window(settings, bundle)
    items = [Item(path, dict(meta)) for path in files]
    if not settings.broker_url and settings.embedded_qdrant:
        from hark.store import connect

        connect(settings).close()  # fail now, with a clear message, if another process holds the folder
    # In a log (no TTY) the bar would repeat its line at every refresh: print the summary only.
    bar = tqdm(total=len(items), unit="file", desc="ingest",
               disable=args.quiet or args.json or not sys.stderr.isatty())

    def update(status: dict[str, Any]) -> None:
        bar.n = len(items) - status["pending"]
        bar.set_postfix(failed=status["failed"], duplicates=status["duplicate"])
        bar.refresh()

    job_id, store = submit_job(settings, items, collection, bundle, on_progress=update)
    if args.no_wait:
        bar.close()
        if args.json:
            print_json({"job": job_id, "files": len(items), "queued": True})
        else:
            print(f"job {job_id}: {len(items)} files queued; follow it with `hark jobs {job_id}`")
        return 0
    status = wait_for(store, job_id, on_update=update)
    bar.close()
    print_job(status, args.json)
    # A script must see that files failed (each is listed above with its reason, and on the dead-letter list).
    return 1 if status["failed"] else 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if not settings.broker_url:
        raise CLIError("HARK_BROKER_URL is not set: without a broker, `hark ingest` runs its own in-process "
                       "worker and needs no `hark worker`")
    pool = args.pool
    if pool is None:
        # The embedded folder has one owner, and CUDA must not be initialised before a fork.
        pool = "solo" if settings.embedded_qdrant or settings.device == "cuda" else "prefork"
    if settings.embedded_qdrant and (pool != "solo" or args.concurrency > 1):
        raise CLIError("with the embedded Qdrant folder only one worker process may write: use --pool solo "
                       "--concurrency 1, or a Qdrant server (HARK_QDRANT_URL)")
    from hark.workers.app import make_app, worker_argv

    app = make_app(settings)
    app.worker_main(worker_argv(pool, args.concurrency, args.loglevel))
    return 0


def cmd_beat(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if not settings.broker_url:
        raise CLIError("HARK_BROKER_URL is not set: the beat schedules re-index checks for the Celery workers")
    if settings.reindex_interval <= 0:
        raise CLIError("HARK_REINDEX_INTERVAL is 0: the re-index schedule is disabled")
    from hark.workers.app import make_app

    app = make_app(settings)
    schedule = Path(settings.state_dir) / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    app.start(["beat", f"--loglevel={args.loglevel}", f"--schedule={schedule}"])
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from hark.workers.jobs import job_store

    store = job_store(settings_from(args))
    if args.job:
        try:
            status = store.status(args.job)
        except KeyError:
            raise CLIError(f"no job {args.job}") from None
        print_job(status, args.json)
        return 0
    from hark.workers.jobs import UNREADABLE

    jobs = store.jobs()
    if args.json:
        print_json([_shown(j, {"finished", "failures"}) for j in jobs])
    else:
        for job in jobs:
            print(f"{job['id']}  {job['state']:8s} {job['collection']:16s} total {job['total']:5d}  "
                  f"ingested {job['ingested']:5d}  duplicates {job['duplicate']:5d}  failed {job['failed']:5d}")
    # The other jobs are still listed, but a script must learn that one record could not be read (its files'
    # outcomes are unknown until it is repaired): say why on stderr and exit 1, as `hark ingest` does for a failure.
    broken = [job for job in jobs if job["state"] == UNREADABLE]
    for job in broken:
        print(f"hark: job {job['id']}: {job['error']}", file=sys.stderr)
    return 1 if broken else 0


def cmd_failed(args: argparse.Namespace) -> int:
    from hark.workers.jobs import job_store
    from hark.workers.submit import resubmit_dead_letters

    settings = settings_from(args)
    if args.retry:
        jobs = resubmit_dead_letters(settings)
        if args.json:
            print_json(jobs)
        else:
            for job in jobs:
                print(f"re-submitted {job['files']} files as job {job['job']}")
        return 0
    entries = job_store(settings).dead_letters()
    if args.json:
        print_json(entries)
    else:
        for entry in entries:
            print(f"{entry['at']}  job {entry['job']}  {entry['path']}: {entry['reason']}")
        if not entries:
            print("no failed files")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="embed audio files into Qdrant",
                       description="Enqueue audio files (or folders of them) for ingestion. With HARK_BROKER_URL "
                       "the batches go to the Celery workers; without it an in-process worker writes to the "
                       "embedded Qdrant folder. Waits with a progress bar unless --no-wait.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="audio files or folders: local paths, file://, "
                   "http(s)://, s3://, gs:// or az:// URIs (a folder or prefix is listed; a missing or unreadable "
                   "one is reported as a failed file)")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--collection", help="collection (alias) to write; default HARK_COLLECTION")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE", help="metadata stored with every file "
                   "(payload field meta.KEY, filterable); repeatable")
    p.add_argument("--bundle", help="bundle folder or registered version; default HARK_BUNDLE, else the version "
                   "live for the collection, else the newest registered")
    p.add_argument("--no-wait", action="store_true", help="return after enqueueing (broker mode)")
    add_device(p)
    add_common(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("worker", help="run a Celery ingestion worker (needs HARK_BROKER_URL)")
    p.add_argument("--pool", choices=["solo", "prefork", "threads"], default=None,
                   help="worker pool; default solo with the embedded Qdrant folder or CUDA, else prefork")
    p.add_argument("--concurrency", type=int, default=1, help="worker processes/threads")
    p.add_argument("--loglevel", default="INFO", help="Celery log level")
    add_device(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("beat", help="run the Celery beat that starts re-indexes when a newer model is registered")
    p.add_argument("--loglevel", default="INFO", help="Celery log level")
    p.set_defaults(func=cmd_beat)

    p = sub.add_parser("jobs", help="ingestion jobs and their progress")
    p.add_argument("job", nargs="?", help="one job's id for its details")
    add_json(p)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("failed", help="files that failed for good (dead-letter list); --retry re-submits them")
    p.add_argument("--retry", action="store_true", help="re-submit every dead-lettered file and clear the list")
    add_json(p)
    p.set_defaults(func=cmd_failed)
