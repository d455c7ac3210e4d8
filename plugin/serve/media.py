"""Which files /audio/{id} may serve: those under the media roots, after resolving symlinks.

Roots: Settings.media_roots when set (separated by ";", or by os.pathsep when no entry is a URI; an entry
with a scheme such as `s3://bucket/audio/` or `https://host/audio/` is a prefix of remote sources, streamed
through hark.sources); otherwise the parent folders of the files
that ingestion recorded as ingested (or duplicate) in the embedded job records
(`<state_dir>/jobs/*.json`, written by the operator's own `hark ingest`); otherwise none, and nothing is
served. The stored `source_uri`s are never trusted as roots: anyone who can upsert could name any file.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from hark.settings import Settings

REFRESH_SECONDS = 10.0  # recorded roots are re-read this often, so new ingests become playable


def _recorded_roots(state_dir: Path) -> set[Path]:
    return {r for r in _recorded(state_dir) if isinstance(r, Path)}


def _recorded_prefixes(state_dir: Path) -> set[str]:
    return {r for r in _recorded(state_dir) if isinstance(r, str)}


def _recorded(state_dir: Path) -> set[Path | str]:
    """Parent folders (local) and parent prefixes (remote URIs, ending in "/") of recorded ingests."""
    roots: set[Path | str] = set()
    jobs = state_dir / "jobs"
    if not jobs.is_dir():
        return roots
    for record in jobs.glob("*.json"):
        try:
            files = json.loads(record.read_text(encoding="utf-8")).get("files", {})
        except (OSError, ValueError, AttributeError):
            continue
        if not isinstance(files, dict):
            continue
        for path, outcome in files.items():
            if not isinstance(outcome, dict) or outcome.get("status") not in {"ingested", "duplicate"}:
                continue
            if "://" in path and not path.startswith("file://"):
                roots.add(path.rsplit("/", 1)[0] + "/")
                continue
            roots.add(Path(path.removeprefix("file://")).parent)
    return roots


class MediaRoots:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Path]] | None = None

    def _configured(self) -> list[str]:
        # Entries are separated by ";", or by the OS path separator too when none is a URI (a URI's own ":"
        # after the scheme and before a port would split it).
        raw = self.settings.media_roots
        parts = raw.split(";") if "://" in raw else raw.replace(";", os.pathsep).split(os.pathsep)
        return [p.strip() for p in parts if p.strip()]

    def remote_prefixes(self) -> list[str]:
        """URI prefixes (each ending in "/") whose objects may be streamed."""
        configured = [p for p in self._configured() if "://" in p and not p.startswith("file://")]
        if self._configured():
            return [p if p.endswith("/") else p + "/" for p in configured]
        return sorted(_recorded_prefixes(Path(self.settings.state_dir)))

    def allows_remote(self, source: object) -> bool:
        """True for a remote URI under a remote media root (no ".." segments, no query tricks)."""
        if not isinstance(source, str) or "://" not in source or source.startswith("file://"):
            return False
        if any(seg in {"..", "."} for seg in source.split("://", 1)[1].split("/")) or "?" in source:
            return False
        return any(source.startswith(prefix) for prefix in self.remote_prefixes())

    def roots(self) -> list[Path]:
        configured = [p for p in self._configured() if "://" not in p or p.startswith("file://")]
        if self._configured():
            return [Path(p.removeprefix("file://")).resolve() for p in configured]
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > REFRESH_SECONDS:
                found = sorted({p.resolve() for p in _recorded_roots(Path(self.settings.state_dir))})
                self._cached = (now, found)
            return self._cached[1]

    def resolve(self, source: object) -> Path | None:
        """The real path of a stored source when it is a regular file under a root, else None."""
        if not isinstance(source, str) or not source:
            return None
        if "://" in source and not source.startswith("file://"):
            return None
        try:
            real = Path(source.removeprefix("file://")).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            return None
        if not real.is_file():
            return None
        return real if any(real.is_relative_to(root) for root in self.roots()) else None
