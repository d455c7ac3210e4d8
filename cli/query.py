"""Query commands: search and serve."""

from __future__ import annotations

import argparse
import json

from hark.settings import PORT_ALLOWED, PORTS

from .common import CLIError, add_common, add_device, print_json, settings_from


def cmd_search(args: argparse.Namespace) -> int:
    from hark.bundle import Bundle
    from hark.plugin.search import AudioSearch
    from hark.registry import bundle_for_collection
    from hark.store import connect, resolve_collection

    settings = settings_from(args)
    collection = args.collection or settings.collection
    query_filter = None
    if args.filter:
        try:
            query_filter = json.loads(args.filter)
        except json.JSONDecodeError as exc:
            raise CLIError(f"--filter is not valid JSON ({exc})") from None
    client = connect(settings)
    try:
        if not client.collection_exists(resolve_collection(client, collection)):
            raise CLIError(f"collection '{collection}' not found; ingest audio first (`hark ingest PATH`)")
        # Queries are encoded with the bundle that built the live collection (after a rollback too).
        bundle = bundle_for_collection(settings, collection, args.bundle, client=client)
        search = AudioSearch(client, Bundle.load(bundle, state_dir=settings.state_dir), collection, settings.device)
        hits = search.search(args.text, limit=args.limit, filter=query_filter, candidates=args.candidates,
                             rerank=not args.no_rerank, group_by_source=args.group)
        times = search.last_times.as_ms()
    finally:
        client.close()
    if args.json:
        print_json({"hits": [h.to_dict() for h in hits], "timings_ms": times})
        return 0
    if not hits:
        print("no hits")
    for rank, hit in enumerate(hits, 1):
        # The matched moment when the model stores moments, else the window's start for long recordings.
        if hit.moment is not None:
            where = f" @ {hit.moment['start']:.0f}-{hit.moment['end']:.0f} s"
        else:
            where = f" @ {hit.offset:.0f} s" if hit.offset is not None else ""
        parts = f"cos {hit.cosine:.3f}" + (f"  att {hit.rerank:.3f}" if hit.rerank is not None else "")
        parts += f"  order {hit.order:+.2f}" if hit.order is not None else ""
        print(f"{rank:3d}. {hit.score:7.3f}  ({parts})  {hit.source}{where}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hark.plugin.serve import create_app

    settings = settings_from(args)
    if args.collection:
        settings.collection = args.collection
    app = create_app(settings, args.bundle)
    host, port = args.host or settings.host, args.port or settings.port
    print(f"hark serve: search page at http://{host}:{port}/ui", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0


def port_number(text: str) -> int:
    """`serve --port`: a port as HARK_PORT takes it (argparse prints the reason and exits with status 2)."""
    try:
        port = int(text)
    except ValueError:
        port = None
    if port is None or not PORTS[0] <= port <= PORTS[1]:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: it must be {PORT_ALLOWED}")
    return port


def register(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--bundle", help="bundle folder or registered version; default HARK_BUNDLE, else the "
                   "version live for the collection")
    add_device(p)
    add_common(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="run the HTTP service (search page, Qdrant-compatible queries, inference)",
                       description="Serve the search page at /ui, /collections/{name}/points/query (prefilter + "
                       "rerank for hark Documents), Qdrant's external inference protocol at /infer, /search, "
                       "/healthz, /readyz, /metrics and OpenAPI at /docs; other routes pass through to the "
                       "upstream Qdrant.")
    p.add_argument("--host", help="listen address; default HARK_HOST (127.0.0.1)")
    p.add_argument("--port", type=port_number, help="listen port (1-65535); default HARK_PORT (8000)")
    p.add_argument("--collection", help="default collection; default HARK_COLLECTION")
    p.add_argument("--bundle", help="bundle folder or registered version; default HARK_BUNDLE or the newest")
    add_device(p)
    p.set_defaults(func=cmd_serve)
