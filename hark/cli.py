"""The `hark` command line. Heavy stacks are imported inside the commands that need them, so the runtime
commands never load torch."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from hark.errors import HarkError

log = logging.getLogger("hark")


class CLIError(HarkError):
    """A user-facing error: printed as one line, exit status 2."""


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, sort_keys=False, default=str))


def _print_metrics_table(rows: dict[str, dict[str, float]]) -> None:
    keys = sorted({k for r in rows.values() for k in r}, key=lambda k: (k[0] != "R", k))
    width = max(len(n) for n in rows) + 2
    print("".ljust(width) + "".join(k.rjust(12) for k in keys))
    for name, values in rows.items():
        print(name.ljust(width) + "".join(f"{values.get(k, float('nan')):12.2f}" for k in keys))


# -- training side -------------------------------------------------------------------------------
def cmd_configs(args: argparse.Namespace) -> int:
    from hark.training.config import describe_config, named_configs

    configs = named_configs()
    if args.json:
        _print_json({name: describe_config(path) for name, path in configs.items()})
    else:
        for name, path in configs.items():
            print(f"{name:22s} {describe_config(path)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hark.training.config import load_config
    from hark.training.run import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, args.data, Path(args.out), device=args.device, resume=not args.no_resume,
                   progress=not args.quiet)
    registered_to = None
    if args.register:
        from hark.exporters.onnx_export import export_bundle
        from hark.registry import register

        exported = export_bundle(Path(args.out) / "best.pt", Path(args.out) / "bundle", overwrite=True)
        registered_to = str(register(_settings(args), exported))
    summary = {"out": str(result.out_dir), "epochs": result.epochs_run, "best_val_mAP@10": result.best_metric,
               "last": result.history[-1] if result.history else {}, "registered": registered_to}
    if args.json:
        _print_json(summary)
    else:
        print(f"trained {result.epochs_run} epochs; best validation mAP@10 {result.best_metric:.2f}; "
              f"checkpoints and metrics.jsonl in {result.out_dir}"
              + (f"; bundle registered as {registered_to}" if registered_to else ""))
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from hark.training.run import distill

    result = distill(Path(args.init), [Path(t) for t in args.teacher], args.data, Path(args.out),
                     overrides=args.overrides, device=args.device, resume=not args.no_resume,
                     progress=not args.quiet)
    summary = {"out": str(result.out_dir), "epochs": result.epochs_run, "best_val_mAP@10": result.best_metric}
    if args.json:
        _print_json(summary)
    else:
        print(f"distilled {result.epochs_run} epochs; best validation mAP@10 {result.best_metric:.2f}; "
              f"checkpoints in {result.out_dir}")
    return 0


def _score_file_targets(queries: list[str], examples) -> list[str]:
    """The target audio of each score-file row.

    Captions repeat across clips (and across a clip's own captions), so the k-th row with a given text is
    matched to the k-th caption with that text in the split.
    """
    from hark.training import metrics

    owners: dict[str, list[str]] = {}
    for ex in examples:
        for caption in ex.captions:
            owners.setdefault(metrics.normalize_query(caption), []).append(ex.audio_path.name)
    seen: dict[str, int] = {}
    targets = []
    for row, query in enumerate(queries, start=2):
        key = metrics.normalize_query(query)
        if key not in owners:
            raise CLIError(f"score file row {row}: query {query[:60]!r} is not a caption of the split")
        targets.append(owners[key][seen.get(key, 0) % len(owners[key])])
        seen[key] = seen.get(key, 0) + 1
    return targets


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hark.training import metrics

    if bool(args.checkpoint) == bool(args.scores):
        raise CLIError("give either --checkpoint (one or more, averaged as an ensemble) or --scores")
    relevance = metrics.read_relevance(args.relevance) if args.relevance else None
    from hark.training.evaluate import relevance_metrics, score_split, split_metrics, write_score_csv
    from hark.training.run import load_split, pick_device

    examples = load_split(args.data, args.split)
    if not examples:
        raise CLIError(f"no examples for split '{args.split}' in {', '.join(args.data)}")
    rows: dict[str, dict[str, float]] = {}
    if args.scores:
        queries, names, scores = metrics.read_score_csv(args.scores)
        targets = _score_file_targets(queries, examples)
        result = metrics.evaluate_scores(scores, queries, names, targets, None)
        if relevance is not None:
            result.update(relevance_metrics(scores, queries, names, relevance))
        rows["scores"] = result
    else:
        from hark.training.model import load_checkpoint

        device = pick_device(args.device)
        splits = []
        for path in args.checkpoint:
            model, _ = load_checkpoint(path)
            split = score_split(model.to(device), examples, progress=not args.quiet)
            splits.append(split)
            if len(args.checkpoint) == 1:
                for head in split.scores:
                    rows[head] = split_metrics(split, head, relevance)
        if len(splits) > 1:
            # Members may skip different files only if their decoders disagree; they share one.
            base = splits[0]
            base.scores["ensemble"] = metrics.ensemble([s.scores["fused"] for s in splits])
            rows["ensemble"] = split_metrics(base, "ensemble", relevance)
        if args.write_scores:
            write_score_csv(splits[0], Path(args.write_scores),
                            "ensemble" if len(splits) > 1 else "fused")
    headline = rows.get("ensemble") or rows.get("fused") or rows.get("scores")
    if args.json:
        if len(rows) > 1:
            print(json.dumps({"heads": rows}), file=sys.stderr)
        _print_json(headline)
    else:
        _print_metrics_table(rows)
    return 0


# -- bundles -------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from hark.exporters.onnx_export import export_bundle
    from hark.plugin.verify import verify_bundle

    out = export_bundle(args.checkpoint, args.out, precision=args.precision, exporter=args.exporter,
                        overwrite=args.overwrite)
    report = verify_bundle(out)
    if args.json:
        _print_json(report)
    else:
        print(f"bundle {report['name']} version {report['version']} written to {out} "
              f"(graphs: {', '.join(report['graphs'])}; parity {json.dumps(report['parity'])})")
    return 0


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    from hark.plugin.verify import verify_bundle

    report = verify_bundle(args.bundle, device=args.device)
    if args.json:
        _print_json(report)
    else:
        print(f"OK  {report['name']} version {report['version']}: {report['files']} files hashed, graphs "
              + ", ".join(f"{g} ({'/'.join(p)})" for g, p in report["graphs"].items())
              + f", smoke test passed in {report['seconds']} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hark.demo import run_demo

    result = run_demo(Path(args.work), device=args.device, quiet=args.quiet)
    if args.json:
        _print_json(result)
    return 0


# -- settings and ingestion ------------------------------------------------------------------------
def _settings(args: argparse.Namespace):
    from hark.settings import Settings

    settings = Settings.load()
    if getattr(args, "device", None) and args.device != "auto":
        settings.device = args.device
    return settings


def cmd_config(args: argparse.Namespace) -> int:
    rows = _settings(args).describe()
    if args.json:
        _print_json({r["name"]: {"value": r["value"], "source": r["source"]} for r in rows})
    else:
        for r in rows:
            print(f"{r['name']:24s} {r['value']:32s} ({r['source']})")
    return 0


def _parse_meta(pairs: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair or not pair.split("=", 1)[0]:
            raise CLIError(f"--meta '{pair}' is not key=value")
        key, raw = pair.split("=", 1)
        try:
            meta[key] = json.loads(raw)
        except json.JSONDecodeError:
            meta[key] = raw
    return meta


def _print_job(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json({k: v for k, v in status.items() if k != "finished"})
        return
    print(f"job {status['id']} ({status['collection']}): {status['ingested']} ingested, "
          f"{status['duplicate']} skipped as duplicates, {status['failed']} failed, {status['pending']} pending")
    for path, reason in status["failures"].items():
        print(f"  failed: {path}: {reason}")


def _ingest_bundle(settings, ref: str | None, collection: str):
    """--bundle or HARK_BUNDLE if given; else the version live for the collection; else the newest registered."""
    from hark.registry import resolve_bundle

    if ref or settings.bundle or not settings.embedded_qdrant or settings.broker_url:
        return resolve_bundle(settings, ref)
    from hark.plugin.store import connect, live_version

    client = connect(settings)
    try:
        version = live_version(client, collection)
    finally:
        client.close()
    return resolve_bundle(settings, version)


def cmd_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hark.workers.ingest import Item, collect_files
    from hark.workers.submit import submit_job, wait_for

    settings = _settings(args)
    files = collect_files(args.paths, recursive=args.recursive)
    if not files:
        raise CLIError("no audio files found in the given paths")
    collection = args.collection or settings.collection
    bundle = str(_ingest_bundle(settings, args.bundle, collection).resolve())
    meta = _parse_meta(args.meta)
    items = [Item(path, meta) for path in files]
    if not settings.broker_url and settings.embedded_qdrant:
        from hark.plugin.store import connect

        connect(settings).close()  # fail now, with a clear message, if another process holds the folder
    bar = tqdm(total=len(items), unit="file", desc="ingest", disable=args.quiet or args.json)

    def update(status: dict[str, Any]) -> None:
        bar.n = len(items) - status["pending"]
        bar.set_postfix(failed=status["failed"], duplicates=status["duplicate"])
        bar.refresh()

    holder: dict[str, Any] = {}

    def after_batch() -> None:
        if "store" in holder:
            update(holder["store"].status(holder["job"]))

    job_id, store = submit_job(settings, items, collection, bundle, on_batch=after_batch,
                               on_created=lambda job, st: holder.update(job=job, store=st))
    if args.no_wait:
        bar.close()
        if args.json:
            _print_json({"job": job_id, "files": len(items), "queued": True})
        else:
            print(f"job {job_id}: {len(items)} files queued; follow it with `hark jobs {job_id}`")
        return 0
    status = wait_for(store, job_id, on_update=update)
    bar.close()
    _print_job(status, args.json)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
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
    settings = _settings(args)
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

    store = job_store(_settings(args))
    if args.job:
        try:
            status = store.status(args.job)
        except KeyError:
            raise CLIError(f"no job {args.job}") from None
        _print_job(status, args.json)
        return 0
    jobs = store.jobs()
    if args.json:
        _print_json([{k: v for k, v in j.items() if k not in {"finished", "failures"}} for j in jobs])
    else:
        for job in jobs:
            print(f"{job['id']}  {job['state']:8s} {job['collection']:16s} total {job['total']:5d}  "
                  f"ingested {job['ingested']:5d}  duplicates {job['duplicate']:5d}  failed {job['failed']:5d}")
    return 0


def cmd_failed(args: argparse.Namespace) -> int:
    from hark.workers.ingest import Item
    from hark.workers.jobs import job_store
    from hark.workers.submit import submit_job

    settings = _settings(args)
    store = job_store(settings)
    entries = store.dead_letters()
    if args.retry:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for entry in entries:
            groups.setdefault((entry["collection"], entry["bundle"]), []).append(entry)
        jobs = []
        for (collection, bundle), group in groups.items():
            store.clear_dead_letters({e["id"] for e in group})
            job_id, _ = submit_job(settings, [Item(e["path"], e.get("meta") or {}) for e in group], collection,
                                   bundle)
            jobs.append({"job": job_id, "files": len(group)})
        if args.json:
            _print_json(jobs)
        else:
            for job in jobs:
                print(f"re-submitted {job['files']} files as job {job['job']}")
        return 0
    if args.json:
        _print_json(entries)
    else:
        for entry in entries:
            print(f"{entry['at']}  job {entry['job']}  {entry['path']}: {entry['reason']}")
        if not entries:
            print("no failed files")
    return 0


# -- models and re-indexing -----------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from hark.registry import register, registered

    settings = _settings(args)
    if args.models_command == "register":
        target = register(settings, args.bundle)
        print(json.dumps({"registered": str(target)}) if args.json else f"registered {target}")
        return 0
    live: dict[str, list[str]] = {}
    try:
        from hark.plugin.store import connect, version_of

        client = connect(settings)
        try:
            for alias in client.get_aliases().aliases:
                live.setdefault(version_of(alias.collection_name) or "", []).append(alias.alias_name)
        finally:
            client.close()
    except HarkError:
        pass  # the embedded folder is busy: list without the live column
    rows = [{"version": v, "path": str(p), "created_at": c, "live_for": live.get(v, [])}
            for v, p, c in registered(settings)]
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            tag = f"  live for {', '.join(r['live_for'])}" if r["live_for"] else ""
            print(f"{r['version']}  {r['created_at']}  {r['path']}{tag}")
        if not rows:
            print(f"no bundles registered in {settings.models_dir}")
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from hark.workers.jobs import job_store
    from hark.workers.reindex import reindex

    settings = _settings(args)
    collection = args.collection or settings.collection
    report = reindex(settings, job_store(settings), collection, args.bundle)
    if args.json:
        _print_json(report)
    else:
        print(f"{collection} now serves {report['live']} (was {report['previous']}): {report['stored']} points, "
              f"{report['failed_files']} files failed, {report['recomputed']} vectors recomputed and matched"
              + (f"; dropped {', '.join(report['pruned'])}" if report["pruned"] else ""))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from hark.plugin.store import connect
    from hark.workers.reindex import rollback

    settings = _settings(args)
    client = connect(settings)
    try:
        result = rollback(settings, client, args.collection or settings.collection)
    finally:
        client.close()
    print(json.dumps(result) if args.json else f"{result['collection']} now serves {result['live']} "
          f"(was {result['previous']})")
    return 0


# -- queries -------------------------------------------------------------------------------------
def cmd_search(args: argparse.Namespace) -> int:
    from hark.bundle import Bundle
    from hark.plugin.search import AudioSearch
    from hark.plugin.store import connect
    from hark.registry import resolve_bundle

    settings = _settings(args)
    bundle = Bundle.load(resolve_bundle(settings, args.bundle))
    client = connect(settings)
    try:
        search = AudioSearch(client, bundle, args.collection or settings.collection, settings.device)
        collection = args.collection or settings.collection
        from hark.plugin.store import resolve_collection

        if not client.collection_exists(resolve_collection(client, collection)):
            raise CLIError(f"collection '{collection}' not found; ingest audio first (`hark ingest PATH`)")
        hits = search.search(args.text, limit=args.limit, filter=args.filter, candidates=args.candidates,
                             rerank=not args.no_rerank, group_by_source=args.group)
    finally:
        client.close()
    if args.json:
        _print_json({"hits": [h.to_dict() for h in hits], "timings_ms": search.last_times.as_ms()})
        return 0
    if not hits:
        print("no hits")
    for rank, hit in enumerate(hits, 1):
        where = f" @ {hit.offset:.0f} s" if hit.offset is not None else ""
        parts = f"cos {hit.cosine:.3f}" + (f"  att {hit.rerank:.3f}" if hit.rerank is not None else "")
        print(f"{rank:3d}. {hit.score:7.3f}  ({parts})  {hit.source}{where}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hark.plugin.service import create_app

    settings = _settings(args)
    if args.collection:
        settings.collection = args.collection
    app = create_app(settings, args.bundle)
    uvicorn.run(app, host=args.host or settings.host, port=args.port or settings.port, log_level="info")
    return 0


# -- parser ------------------------------------------------------------------------------------
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print results as JSON (the last line is one object)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hark", description="Language-based audio search for Qdrant.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the whole pipeline on a generated corpus, no servers needed",
                       description="Generate a captioned corpus, train a tiny joint model, export and verify its "
                       "bundle, evaluate bi-encoder vs rerank, and run example queries. Re-runs reuse the work "
                       "folder.")
    p.add_argument("--work", default=".hark/demo", metavar="DIR", help="work folder (default: .hark/demo)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="device for ONNX Runtime")
    _add_common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("search", help="search the collection by text",
                       description="Text -> cosine prefilter in Qdrant -> attention rerank -> ranked clips.")
    p.add_argument("text", help="what the recordings should sound like")
    p.add_argument("--limit", type=int, default=10, help="number of hits (default 10)")
    p.add_argument("--filter", help='Qdrant filter as JSON, e.g. \'{"must": [{"key": "meta.genre", "match": '
                   '{"value": "field"}}]}\'')
    p.add_argument("--candidates", type=int, default=None, help="prefilter size K (default 200)")
    p.add_argument("--no-rerank", action="store_true", help="cosine prefilter ranking only")
    p.add_argument("--group", action="store_true", help="one hit per recording (its best window)")
    p.add_argument("--collection", help="collection or alias; default HARK_COLLECTION")
    p.add_argument("--bundle", help="bundle folder or registered version; default HARK_BUNDLE or the newest")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="ONNX Runtime device")
    _add_common(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="run the HTTP service (Qdrant-compatible queries, inference protocol, page)",
                       description="Serve /collections/{name}/points/query (prefilter + rerank for hark Documents), "
                       "Qdrant's external inference protocol at /infer, /search, /healthz, /readyz, /metrics; "
                       "other routes pass through to the upstream Qdrant.")
    p.add_argument("--host", help="listen address; default HARK_HOST (127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port; default HARK_PORT (8000)")
    p.add_argument("--collection", help="default collection; default HARK_COLLECTION")
    p.add_argument("--bundle", help="bundle folder or registered version; default HARK_BUNDLE or the newest")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="ONNX Runtime device")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("models", help="the bundle registry (HARK_MODELS_DIR) and which version is live where")
    msub = p.add_subparsers(dest="models_command", required=True)
    m = msub.add_parser("list", help="registered bundles, oldest first, with the collections they serve")
    m.add_argument("--json", action="store_true", help="print as JSON")
    m.set_defaults(func=cmd_models)
    m = msub.add_parser("register", help="copy a verified bundle into the registry")
    m.add_argument("bundle", help="bundle folder")
    m.add_argument("--json", action="store_true", help="print as JSON")
    m.set_defaults(func=cmd_models)

    p = sub.add_parser("reindex", help="rebuild a collection with another model version, then switch its alias",
                       description="Builds NAME__VERSION from the source files recorded in the live collection, "
                       "verifies it (every live point present, sampled vectors recomputed), switches the alias "
                       "atomically and prunes versions beyond HARK_KEEP_COLLECTIONS. Resumes an interrupted run.")
    p.add_argument("--collection", help="collection alias; default HARK_COLLECTION")
    p.add_argument("--bundle", required=True, help="registered version or bundle folder to switch to")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("rollback", help="switch a collection's alias back to the previous version")
    p.add_argument("--collection", help="collection alias; default HARK_COLLECTION")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("config", help="print the effective settings and where each came from")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("ingest", help="embed audio files into Qdrant",
                       description="Enqueue audio files (or folders of them) for ingestion. With HARK_BROKER_URL "
                       "the batches go to the Celery workers; without it an in-process worker writes to the "
                       "embedded Qdrant folder. Waits with a progress bar unless --no-wait.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="audio files or folders")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--collection", help="collection (alias) to write; default HARK_COLLECTION")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE", help="metadata stored with every file "
                   "(payload field meta.KEY, filterable); repeatable")
    p.add_argument("--bundle", help="bundle folder or registered version; default HARK_BUNDLE or the newest")
    p.add_argument("--no-wait", action="store_true", help="return after enqueueing (broker mode)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="ONNX Runtime device")
    _add_common(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("worker", help="run a Celery ingestion worker (needs HARK_BROKER_URL)")
    p.add_argument("--pool", choices=["solo", "prefork", "threads"], default=None,
                   help="worker pool; default solo with the embedded Qdrant folder or CUDA, else prefork")
    p.add_argument("--concurrency", type=int, default=1, help="worker processes/threads")
    p.add_argument("--loglevel", default="INFO", help="Celery log level")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="ONNX Runtime device")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("beat", help="run the Celery beat that starts re-indexes when a newer model is registered")
    p.add_argument("--loglevel", default="INFO", help="Celery log level")
    p.set_defaults(func=cmd_beat)

    p = sub.add_parser("jobs", help="ingestion jobs and their progress")
    p.add_argument("job", nargs="?", help="one job's id for its details")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("failed", help="files that failed for good (dead-letter list); --retry re-submits them")
    p.add_argument("--retry", action="store_true", help="re-submit every dead-lettered file and clear the list")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_failed)

    p = sub.add_parser("configs", help="list the named model configs")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("train", help="train a model (stage 1, contrastive)",
                       description="Train a model on one or more dataset folders (Clotho, AudioCaps, WavCaps, "
                       "TACOS layouts). Resumes from OUT/last.pt when it exists.")
    p.add_argument("config", help="a named config (see `hark configs`) or a JSON config file")
    p.add_argument("--data", action="append", required=True, metavar="DIR",
                   help="dataset folder; repeat to mix datasets")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder: checkpoints, metrics.jsonl")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/last.pt exists")
    p.add_argument("--register", action="store_true",
                   help="export the best checkpoint and register the bundle (the beat re-indexes with it)")
    p.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="config overrides, e.g. train.epochs=3 heads.attention=full")
    _add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="fine-tune a student on an ensemble's scores (stage 2)",
                       description="Knowledge distillation: the student starts from its stage-1 checkpoint "
                       "(--init) and learns the averaged score matrices of the teachers.")
    p.add_argument("--init", required=True, metavar="CKPT", help="the student's stage-1 checkpoint")
    p.add_argument("--teacher", action="append", required=True, metavar="CKPT",
                   help="a teacher checkpoint; repeat for an ensemble")
    p.add_argument("--data", action="append", required=True, metavar="DIR", help="dataset folder")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/last.pt exists")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")
    _add_common(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="R@1/5/10, mAP@10 (and mAP@16) on a dataset split",
                       description="Score a split with one or more checkpoints (several are averaged as an "
                       "ensemble), or score any system's predictions from a score CSV (a `query` column, "
                       "then one column per audio file name).")
    p.add_argument("--checkpoint", action="append", metavar="CKPT", help="checkpoint file or run folder")
    p.add_argument("--scores", metavar="CSV", help="score file to evaluate instead of a checkpoint")
    p.add_argument("--data", action="append", required=True, metavar="DIR", help="dataset folder")
    p.add_argument("--split", default="evaluation", help="split name (default: evaluation)")
    p.add_argument("--relevance", metavar="CSV", help="DCASE 2025 relevance file (query,audio_filenames)")
    p.add_argument("--write-scores", metavar="CSV", help="also write the score matrix as a score CSV")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

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
    p.add_argument("--json", action="store_true", help="print the verification report as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bundle", help="inspect model bundles")
    bsub = p.add_subparsers(dest="bundle_command", required=True)
    v = bsub.add_parser("verify", help="check hashes and format, load every graph, run a smoke input")
    v.add_argument("bundle", help="bundle folder")
    v.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="ONNX Runtime device")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=cmd_bundle_verify)
    return parser


USER_ERRORS = (HarkError, FileNotFoundError, ValueError, PermissionError, IsADirectoryError)


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `hark failed | head` ends quietly
    parser = build_parser()
    # Overrides may follow the options (argparse only collects positionals given before them).
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:
        if exc.name in {"torch", "torchaudio", "transformers", "hear21passt", "onnx"}:
            print(f"hark: error: this command needs the training stack ({exc.name} is missing); "
                  "install it with: pip install 'hark[train]'", file=sys.stderr)
            return 2
        raise
    except USER_ERRORS as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"hark: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
