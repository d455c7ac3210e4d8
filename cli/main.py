"""The `hark` entry point: the parser assembled from the command modules, and one error policy.

Command modules import their layers lazily, inside the commands, so runtime commands never load torch.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from hark import __version__
from hark.errors import HarkError

from . import bundles, collections, ingest, query, setup, train

MODULES = (setup, query, bundles, collections, ingest, train)
TRAINING_STACK = {"torch", "torchaudio", "transformers", "hear21passt", "onnx"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hark", description="Language-based audio search for Qdrant.")
    parser.add_argument("--version", action="version", version=f"hark {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in MODULES:
        module.register(sub)
    return parser


# Errors a user can cause and fix: one line, exit status 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (HarkError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


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
        if exc.name in TRAINING_STACK:
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
    except Exception as exc:
        message = service_error(exc)
        if message is None:
            raise
        print(f"hark: error: {message}", file=sys.stderr)
        return 2


# A server that is down, unreachable or refuses hark is the operator's to fix, not a bug: one line naming the
# setting. Matched by the exception's module, so the CLI imports neither client to catch them.
_SERVICES = (("redis", "Redis (HARK_BROKER_URL)"), ("kombu", "the broker (HARK_BROKER_URL)"),
             ("qdrant_client", "Qdrant (HARK_QDRANT_URL)"), ("httpx", "Qdrant (HARK_QDRANT_URL)"),
             ("httpcore", "Qdrant (HARK_QDRANT_URL)"))


def service_error(exc: BaseException) -> str | None:
    """One line for an error from a server hark talks to (None for anything else)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # the client's own exception may wrap the socket's
        seen.add(id(current))
        module = type(current).__module__ or ""
        for prefix, service in _SERVICES:
            if module == prefix or module.startswith(prefix + "."):
                text = " ".join(str(exc).split()) or type(current).__name__
                return f"{service}: {text[:300]}"
        if isinstance(current, ConnectionError | TimeoutError) or type(current).__name__ == "gaierror":
            return f"cannot reach a server: {' '.join(str(current).split())[:300]}"
        current = current.__cause__ or current.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
