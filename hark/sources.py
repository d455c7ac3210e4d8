"""Where audio comes from: local paths and URIs, read the same way by `hark ingest`, the workers and `/audio`.

Local paths and `file://` URIs are read directly; `http(s)://`, `s3://`, `gs://` and `az://` (also `abfs://`)
go through fsspec, with credentials from each back end's standard environment (AWS_* variables or profiles,
GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*). The cloud back ends are optional extras (s3fs, gcsfs,
adlfs; aiohttp for http): a URI whose back end is missing fails as that one file, with the package to install.

Decoders need a seekable local file, and a content hash needs every byte once, so a remote source is copied
to a temporary file in fixed-size chunks while it is hashed (`local_copy`): memory stays bounded whatever the
length of the recording, and the network is read once. The disk a spooled copy takes is bounded too (`max_bytes`,
HARK_MAX_SPOOL_MB), and copies left behind by a process that died mid-file (SIGKILL, OOM kill) are removed by
the next spool on the same host (`sweep_spool`): their names carry the host and the process id.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

from hark.errors import SourcedError

# Schemes handed to fsspec; anything else with "://" is rejected by name instead of being taken as a path.
REMOTE_SCHEMES = {"http", "https", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}
# The package each back end needs (reported when it is missing).
BACKEND_PACKAGES = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs",
                    "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}
CHUNK_BYTES = 1 << 20
SPOOL_PREFIX = "hark-spool-"
_swept: set[str] = set()  # spool folders this process has swept


class SourceError(SourcedError, OSError):
    """A source that cannot be listed or read; `reason` says why in plain words."""


def scheme_of(source: str | os.PathLike) -> str:
    """The URI scheme in lower case, "" for a plain path (a Windows drive letter is a path too)."""
    text = os.fspath(source)
    if "://" not in text:
        return ""
    scheme = text.split("://", 1)[0].lower()
    return "" if len(scheme) == 1 else scheme


def is_remote(source: str | os.PathLike) -> bool:
    return scheme_of(source) in REMOTE_SCHEMES


def local_path(source: str | os.PathLike) -> Path | None:
    """The filesystem path of a local source (plain path or file:// URI); None for a remote one."""
    scheme = scheme_of(source)
    if scheme == "":
        return Path(os.fspath(source))
    if scheme == "file":
        parsed = urlparse(os.fspath(source))
        return Path(unquote(parsed.path))
    return None


def _check_scheme(source: str) -> None:
    scheme = scheme_of(source)
    if scheme and scheme != "file" and scheme not in REMOTE_SCHEMES:
        raise SourceError(source, f"unsupported URI scheme '{scheme}://' (supported: local paths, file://, "
                          + ", ".join(f"{s}://" for s in sorted(REMOTE_SCHEMES)) + ")")


def _filesystem(source: str):
    """The fsspec filesystem and the path inside it for a remote URI."""
    scheme = scheme_of(source)
    try:
        import fsspec
        from fsspec.core import url_to_fs
    except ImportError as exc:  # pragma: no cover - fsspec is a core dependency
        raise SourceError(source, "reading URIs needs fsspec (pip install fsspec)") from exc
    try:
        return url_to_fs(source)
    except ImportError as exc:
        package = BACKEND_PACKAGES.get(scheme, "the fsspec back end")
        raise SourceError(source, f"{scheme}:// needs the package {package} (pip install {package})") from exc
    except (ValueError, fsspec.exceptions.FSTimeoutError) as exc:
        raise SourceError(source, _reason(exc)) from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, PermissionError):
        return f"permission denied ({exc.strerror or exc})" if exc.strerror else "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an audio file"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def special_kind(mode: int) -> str | None:
    """What a file of this `st_mode` is when it is not a regular file or a folder ("a named pipe", "a device",
    ...); None for those two. Reading a pipe blocks forever, a device (/dev/zero) never ends: neither is audio."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"


def _local_missing_reason(path: Path) -> str:
    if path.is_symlink():
        return f"broken symbolic link (points to {os.readlink(path)}, which does not exist)"
    return "file not found"


def _with_scheme(fs, path: str, scheme: str) -> str:
    """fsspec lists paths without the protocol; put back the one the user wrote."""
    if scheme in {"http", "https"}:
        return path
    return f"{scheme}://{path.lstrip('/')}"


def expand(paths: Iterable[str | os.PathLike], recursive: bool = False,
           suffixes: set[str] | None = None) -> list[str]:
    """Sources named directly (any suffix) plus files with `suffixes` inside named folders or prefixes.

    Nothing is dropped for being missing or unreadable: such a name is kept as it is, so ingestion reports
    it as a failed file with its reason while the other files go on. Local names come back absolute.
    """
    found: list[str] = []
    for raw in paths:
        text = os.fspath(raw)
        local = local_path(text)
        if local is not None:
            if local.is_dir():
                pattern = "**/*" if recursive else "*"
                # Broken links are listed too (not resolved): each is reported as a failed file.
                found.extend(sorted(str(p.resolve()) if p.exists() else str(p.absolute())
                                    for p in local.glob(pattern)
                                    if (p.is_file() or (p.is_symlink() and not p.exists()))
                                    and (suffixes is None or p.suffix.lower() in suffixes)))
            elif local.exists():
                found.append(str(local.resolve()))
            else:
                found.append(str(local.absolute()))
            continue
        found.extend(_expand_remote(text, recursive, suffixes))
    return list(dict.fromkeys(found))


def _expand_remote(uri: str, recursive: bool, suffixes: set[str] | None) -> list[str]:
    scheme = scheme_of(uri)
    if scheme not in REMOTE_SCHEMES or scheme in {"http", "https"}:
        return [uri]  # http has no listing; an unknown scheme fails when it is read, with its reason
    try:
        fs, path = _filesystem(uri)
        if not fs.isdir(path):
            return [uri]
        listed = fs.find(path) if recursive else [p for p in fs.ls(path, detail=False)]
        files = [p for p in listed if suffixes is None or Path(p).suffix.lower() in suffixes]
        if not recursive:
            files = [p for p in files if not fs.isdir(p)]
        return sorted(_with_scheme(fs, p, scheme) for p in files)
    except (SourceError, OSError, ValueError):
        return [uri]  # listing failed (no credentials, no bucket): reading it reports the reason per file


@contextlib.contextmanager
def open_source(source: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A readable binary stream for a local path or URI (what `/audio` streams); raises `SourceError`."""
    text = os.fspath(source)
    _check_scheme(text)
    local = local_path(text)
    if local is not None:
        if local.is_dir():
            raise SourceError(text, "is a directory, not an audio file")
        if not local.exists():
            raise SourceError(text, _local_missing_reason(local))
        try:
            kind = special_kind(local.stat().st_mode)
        except OSError:
            kind = None  # opening it reports the reason
        if kind:
            raise SourceError(text, f"is {kind}, not a regular file")
        try:
            handle = local.open("rb")
        except OSError as exc:
            raise SourceError(text, f"cannot read the file: {exc.strerror or exc}") from exc
    else:
        fs, path = _filesystem(text)
        try:
            handle = fs.open(path, "rb", block_size=CHUNK_BYTES)
        except Exception as exc:  # back ends raise their own types; every one is this file's failure
            raise SourceError(text, _reason(exc)) from exc
    with handle:
        yield handle


def source_size(source: str | os.PathLike) -> int | None:
    """Size in bytes when the source says (None when it does not, e.g. a chunked http response)."""
    text = os.fspath(source)
    local = local_path(text)
    try:
        if local is not None:
            return local.stat().st_size
        fs, path = _filesystem(text)
        size = fs.size(path)
        return int(size) if size is not None else None
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(text, _reason(exc)) from exc


@dataclass
class LocalCopy:
    """A source as a seekable local file plus the sha256 of its bytes (the content identity of point ids)."""

    path: Path
    sha256: str
    size: int
    # (size, mtime in ns, inode) of a local file when it was hashed; None for a spooled copy (hark's own file).
    stamp: tuple[int, int, int] | None = None

    def changed(self) -> bool:
        """Whether a local file is no longer the one that was hashed (rewritten, replaced or still growing)."""
        if self.stamp is None:
            return False
        try:
            return _stamp(os.stat(self.path)) != self.stamp
        except OSError:
            return True


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


@contextlib.contextmanager
def local_copy(source: str | os.PathLike, tmp_dir: str | None = None,
               max_bytes: int | None = None) -> Iterator[LocalCopy]:
    """Hash a source chunk by chunk; a remote one is spooled to a temporary file that is removed afterwards.

    Memory use is one chunk whatever the size of the file. A remote source longer than `max_bytes` (None: no
    limit) fails as that file once the limit is passed, before it fills the disk.
    """
    text = os.fspath(source)
    digest = hashlib.sha256()
    local = local_path(text) if scheme_of(text) in {"", "file"} else None
    if local is not None:
        size = 0
        with open_source(text) as handle:
            stamp = _stamp(os.fstat(handle.fileno()))
            try:
                while chunk := handle.read(CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
            except OSError as exc:
                raise SourceError(text, f"cannot read the file: {exc.strerror or exc}") from exc
        yield LocalCopy(local.resolve(), digest.hexdigest(), size, stamp)
        return
    folder = tmp_dir or tempfile.gettempdir()
    if folder not in _swept:
        _swept.add(folder)
        sweep_spool(folder)
    suffix = re.sub(r"[^A-Za-z0-9.]", "", Path(urlparse(text).path).suffix)[:16]
    fd, name = tempfile.mkstemp(prefix=_spool_prefix(), suffix=suffix, dir=folder)
    try:
        size = 0
        with os.fdopen(fd, "wb") as out, open_source(text) as handle:
            try:
                while chunk := handle.read(CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise SourceError(text, f"larger than the spool limit of {max_bytes / 2**20:g} MiB "
                                                "(HARK_MAX_SPOOL_MB)")
                    out.write(chunk)
            except SourceError:
                raise
            except Exception as exc:
                raise SourceError(text, f"reading stopped: {_reason(exc)}") from exc
        yield LocalCopy(Path(name), digest.hexdigest(), size)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def _spool_prefix() -> str:
    return f"{SPOOL_PREFIX}{_host()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except (OverflowError, ValueError):  # no such process id can exist
        return False
    return True


def sweep_spool(tmp_dir: str | None = None) -> list[Path]:
    """Remove the spooled copies in `tmp_dir` of this host's processes that no longer run; returns them.

    Only this host's names are considered: a spool folder shared between machines or containers holds other hosts'
    live copies, whose process ids mean nothing here."""
    folder = Path(tmp_dir or tempfile.gettempdir())
    mine = f"{SPOOL_PREFIX}{_host()}-"
    removed = []
    try:
        entries = list(folder.glob(f"{mine}*"))
    except OSError:
        return removed
    for path in entries:
        pid = path.name[len(mine):].split("-", 1)[0]
        if not (pid.isascii() and pid.isdigit()) or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def display_name(source: str | os.PathLike) -> str:
    """The last path component of a path or URI (the payload's `file_name`)."""
    text = os.fspath(source)
    local = local_path(text)
    if local is not None:
        return local.name
    return Path(unquote(urlparse(text).path)).name or text
