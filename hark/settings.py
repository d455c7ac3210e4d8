"""Settings shared by every part: environment variables, the same names in an optional hark.toml, defaults
that work on one machine. `hark config` prints the effective values and where each came from."""

from __future__ import annotations

import math
import os
import shlex
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hark.errors import HarkError


class SettingsError(HarkError):
    pass


@dataclass
class Settings:
    # Qdrant server URL; unset means the embedded (local-mode) folder below.
    qdrant_url: str = ""
    # Embedded Qdrant folder (one process owns it at a time).
    qdrant_path: str = "./.hark/qdrant"
    # API key for a Qdrant server.
    qdrant_api_key: str = ""
    # Celery broker (Redis) URL; unset means an in-process worker.
    broker_url: str = ""
    # Folder of registered model bundles (one sub-folder per version).
    models_dir: str = "./.hark/models"
    # A bundle path or a registered version; empty means the newest registered bundle.
    bundle: str = ""
    # ONNX Runtime device: auto, cpu or cuda.
    device: str = "auto"
    # Collection (alias) that ingestion writes to and queries read from by default.
    collection: str = "audio"
    # Length of the windows long recordings are cut into, in seconds; 0 means the bundle's (segments x max).
    window_seconds: float = 0.0
    # Files per ingestion task.
    batch_files: int = 8
    # Largest remote source (http, s3, gs, az) a worker copies to its temporary folder to decode, in MiB; 0: no
    # limit. A longer one fails as that file instead of filling the disk.
    max_spool_mb: float = 4096.0
    # Seconds an unacknowledged task stays invisible before Redis redelivers it (must exceed the longest task).
    visibility_timeout: int = 3600
    # Retries of a task that met a transient error (Qdrant unreachable), with exponential backoff from this base.
    max_retries: int = 8
    retry_backoff: float = 2.0
    # A message delivered this many times without finishing is dead-lettered as poison.
    max_deliveries: int = 3
    # Shards and replicas of each new collection on a Qdrant cluster; 0 leaves the server's default.
    shards: int = 0
    replication: int = 0
    # Previous collection versions kept after a re-index (for rollback); older ones are dropped.
    keep_collections: int = 1
    # Seconds between the beat's registry checks that start re-indexes; 0 disables the schedule.
    reindex_interval: int = 600
    # Full-access API key for every route of `hark serve` but the health probes; empty means open.
    api_key: str = ""
    # Read-only API key: searches and reads, no writes through the pass-through.
    read_only_api_key: str = ""
    # Largest request body `hark serve` reads, in bytes, and the deepest JSON nesting it accepts.
    max_body_bytes: int = 1_048_576
    max_json_depth: int = 32
    # Folders (and remote URI prefixes such as s3://bucket/audio/) that `/audio/{id}` may serve sources from,
    # separated by ";" (or the OS path separator when no entry is a URI); empty means where audio was ingested from.
    media_roots: str = ""
    # Concurrent queries wait this many milliseconds to share one text-encoder call, up to this many per call
    # (0: by device, 32 on CUDA and 8 on the CPU; see hark.plugin.encoders.TEXT_BATCH). Measured int8
    # RoBERTa-large on 2 CPU cores: 75 ms per query alone, 24 ms at 4 per call, 20 ms at 8, 18 ms at 16; on an
    # H200 (fp16) 7.8 ms a call at 1 query and 9.4 ms at 32. A lone query never waits.
    query_batch_wait_ms: float = 2.0
    query_batch_max: int = 0
    # ONNX Runtime threads per session; 0 lets ONNX Runtime use every core of the machine.
    ort_threads: int = 0
    # MiB of decoded rerank rows the embedded store keeps for repeated candidates (0 turns the cache off): without
    # it, reading 200 candidates' rows from the engine held the GIL ~14 ms per query (benchmarks/README.md, serve).
    row_cache_mb: float = 256.0
    # Address `hark serve` listens on.
    host: str = "127.0.0.1"
    port: int = 8000
    # Where the embedded mode keeps job status and the dead-letter list, `hark serve` its thumbnails, and query
    # processes the stamps of bundle files already hashed (verified/).
    state_dir: str = "./.hark/state"
    # Days a finished job's status stays in Redis before it expires.
    job_ttl_days: float = 30.0
    # Seconds between a worker's heartbeats; a worker silent for 3 of them is gone, and its unfinished batch
    # is put back on the queue by any live worker (or the next one to start), instead of waiting for the
    # visibility timeout.
    worker_heartbeat: int = 10
    sources: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    # The hark.toml these settings were read from (HARK_CONFIG), whether or not it exists.
    config_path: str = field(default="hark.toml", repr=False, compare=False)

    @classmethod
    def load(cls, toml_path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        path = Path(toml_path or env.get("HARK_CONFIG", "hark.toml"))
        config_source = "argument" if toml_path else ("environment" if "HARK_CONFIG" in env else "default")
        from_file: dict[str, Any] = {}
        if path.is_file():
            from_file = _read_toml(path)
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for f in fields(cls):
            if f.name in INTERNAL:
                continue
            name = env_name(f.name)
            if name in env:
                raw, origin = env[name], "environment"
            elif name in from_file or f.name.upper() in from_file:
                raw, origin = from_file.get(name, from_file.get(f.name.upper())), str(path)
            else:
                sources[f.name] = "default"
                continue
            values[f.name] = _parse(f.name, raw, f.default, origin)
            sources[f.name] = origin
        settings = cls(**values)
        settings.sources = sources
        settings.config_path = str(path)
        settings.sources["config_path"] = config_source + ("" if path.is_file() else ", file absent")
        settings.validate()
        return settings

    def validate(self) -> None:
        """Every setting within its range (RULES); the first one outside it raises a SettingsError naming it,
        where it came from and what it may be."""
        for f in fields(self):
            rule = RULES.get(f.name)
            value = getattr(self, f.name)
            if rule is not None and not _holds(rule, value):
                raise _setting_error(f.name, value, self.sources.get(f.name, ""), rule.allowed)

    @property
    def embedded_qdrant(self) -> bool:
        return not self.qdrant_url

    @property
    def max_spool_bytes(self) -> int | None:
        return int(self.max_spool_mb * 2**20) if self.max_spool_mb else None

    def describe(self) -> list[dict[str, str]]:
        """Every setting's effective value (secrets masked, zero values with what they mean) and source."""
        rows = [{"name": "HARK_CONFIG", "value": self.config_path,
                 "source": self.sources.get("config_path", "default")}]
        for f in fields(self):
            if f.name in INTERNAL:
                continue
            value = getattr(self, f.name)
            if "key" in f.name:
                shown = "***" if value else "(none)"
            elif f.name in ZERO_MEANS and not value:
                shown = f"{value} ({ZERO_MEANS[f.name]})" if value != "" else f"({ZERO_MEANS[f.name]})"
            else:
                shown = str(value) if value != "" else "(none)"
            rows.append({"name": env_name(f.name), "value": shown, "source": self.sources.get(f.name, "default")})
        return rows


INTERNAL = {"sources", "config_path"}
# What a zero (or empty) value of these settings stands for, as `hark config` shows it.
ZERO_MEANS = {"qdrant_url": "embedded Qdrant at HARK_QDRANT_PATH", "broker_url": "in-process worker",
              "bundle": "the version live for the collection, else the newest registered",
              "window_seconds": "the bundle's window, segments x max segments", "shards": "server default",
              "replication": "server default", "reindex_interval": "schedule off",
              "media_roots": "the folders audio was ingested from", "ort_threads": "the cores this process may use",
              "max_spool_mb": "no limit"}


def env_name(field_name: str) -> str:
    return "HARK_" + field_name.upper()


@dataclass(frozen=True)
class Rule:
    """What one setting may be: `allowed` says it in words (it ends every error about the setting), `check`
    tests a value already of the setting's type."""
    allowed: str
    check: Callable[[Any], bool] = lambda value: True


def _number(low: float, high: float = math.inf, *, above: bool = False, zero: bool = False) -> Callable[[Any], bool]:
    """A finite number from `low` (excluded when `above`) to `high`; `zero` also allows 0 (off, auto)."""
    def check(value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return (zero and value == 0) or ((value > low if above else value >= low) and value <= high)
    return check


def _url(schemes: tuple[str, ...], host: bool) -> Callable[[str], bool]:
    """Empty (unset), or a URL with one of `schemes` (and a host when `host`), and a valid port if it has one."""
    def check(value: str) -> bool:
        if not value:
            return True
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number from 0 to 65535
        except ValueError:
            return False
        return parts.scheme.lower() in schemes and (bool(parts.hostname) or not host)
    return check


def _text(value: str) -> bool:
    return bool(value.strip())


PORTS = (1, 65535)
PORT_ALLOWED = f"a whole number from {PORTS[0]} to {PORTS[1]}"
DAY_S = 86_400
# Intervals past these would overflow the timers and Redis expiries they feed; no use needs more.
MAX_INTERVAL_S = 30 * DAY_S
MAX_MIB = 2**30  # a PiB
RULES: dict[str, Rule] = {
    "qdrant_url": Rule("an http:// or https:// URL of a Qdrant server, or empty for the embedded folder",
                       _url(("http", "https"), host=True)),
    "qdrant_path": Rule("a folder path (not empty)", _text),
    "broker_url": Rule("a redis:// or rediss:// URL, or empty for an in-process worker",
                       _url(("redis", "rediss"), host=False)),
    "models_dir": Rule("a folder path (not empty)", _text),
    "device": Rule("auto, cpu or cuda", lambda value: value in {"auto", "cpu", "cuda"}),
    "collection": Rule("a collection name (not empty)", _text),
    # Windows shorter than a second are shorter than the shortest tail ingestion keeps (MIN_TAIL_SECONDS).
    "window_seconds": Rule("0 (the bundle's window) or a number of seconds from 1 to 86400",
                           _number(1, DAY_S, zero=True)),
    "batch_files": Rule("a whole number, at least 1", _number(1)),
    "max_spool_mb": Rule(f"a number of MiB from 0 (no limit) to {MAX_MIB}", _number(0, MAX_MIB)),
    "visibility_timeout": Rule(f"a whole number of seconds from 1 to {MAX_INTERVAL_S}", _number(1, MAX_INTERVAL_S)),
    # The backoff doubles with each retry (retry_backoff x 2**attempt): these bounds keep it a finite countdown.
    "max_retries": Rule("a whole number from 0 to 50", _number(0, 50)),
    "retry_backoff": Rule("a number of seconds from 0 to 3600", _number(0, 3600)),
    "max_deliveries": Rule("a whole number, at least 1", _number(1)),
    "shards": Rule("a whole number, at least 0 (0: the server's default)", _number(0)),
    "replication": Rule("a whole number, at least 0 (0: the server's default)", _number(0)),
    "keep_collections": Rule("a whole number, at least 0", _number(0)),
    "reindex_interval": Rule(f"a whole number of seconds from 0 (schedule off) to {MAX_INTERVAL_S}",
                             _number(0, MAX_INTERVAL_S)),
    "max_body_bytes": Rule("a whole number, at least 1", _number(1)),
    "max_json_depth": Rule("a whole number, at least 1", _number(1)),
    "query_batch_wait_ms": Rule("a number of milliseconds from 0 to 10000", _number(0, 10_000)),
    "query_batch_max": Rule("a whole number, at least 0 (0: by device)", _number(0)),
    "ort_threads": Rule("a whole number, at least 0 (0: the cores this process may use)", _number(0)),
    "row_cache_mb": Rule(f"a number of MiB from 0 (off) to {MAX_MIB}", _number(0, MAX_MIB)),
    "host": Rule("a host name or address (not empty)", _text),
    "port": Rule(PORT_ALLOWED, _number(*PORTS)),
    "state_dir": Rule("a folder path (not empty)", _text),
    "job_ttl_days": Rule("a number of days, more than 0 and at most 36500", _number(0, 36_500, above=True)),
    "worker_heartbeat": Rule(f"a whole number of seconds from 1 to {MAX_INTERVAL_S}", _number(1, MAX_INTERVAL_S)),
}


def _holds(rule: Rule, value: Any) -> bool:
    try:
        return bool(rule.check(value))
    except (TypeError, ValueError):  # a value of the wrong type (set in code) is out of range too
        return False


def _read_toml(path: Path) -> dict[str, Any]:
    """The settings in a hark.toml (its [hark] table, else its top level), upper-cased names to raw values."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark some editors write is no error
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 TOML") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: invalid TOML ({exc})") from exc
    table = data.get("hark", data)
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: 'hark' must be a table of settings ([hark]), not {_toml_type(table)}")
    return {str(k).upper(): v for k, v in table.items()}


def _toml_type(value: Any) -> str:
    """A TOML value's type in TOML's words."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date or time"


def _shown(name: str, value: Any, origin: str) -> str:
    """A setting's value as its source wrote it (environment: as a shell would; hark.toml: as TOML), shortened;
    keys are never shown."""
    if "key" in name:
        return "***"
    if origin == "environment":
        text = shlex.quote(str(value))
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _setting_error(name: str, value: Any, origin: str, allowed: str) -> SettingsError:
    """`HARK_PORT=99999 (from the environment) must be a whole number from 1 to 65535`; a TOML table, array or
    date is named by its type: `HARK_QDRANT_PATH (a table, from hark.toml) must be a folder path (not empty)`."""
    where = {"environment": "from the environment", "default": "default", "": ""}.get(origin, f"from {origin}")
    if isinstance(value, bool | int | float | str):
        shown = f"{env_name(name)}={_shown(name, value, origin)}" + (f" ({where})" if where else "")
    else:
        shown = f"{env_name(name)} ({_toml_type(value)}" + (f", {where})" if where else ")")
    return SettingsError(f"{shown} must be {allowed}")


def _parse(name: str, raw: Any, default: Any, origin: str) -> Any:
    """`raw` as the setting's type and within its range, or a SettingsError that shows `raw` as it was written."""
    value = _coerce(name, raw, default, origin)
    rule = RULES.get(name)
    if rule is not None and not _holds(rule, value):
        raise _setting_error(name, raw, origin, rule.allowed)
    return value


def _coerce(name: str, raw: Any, default: Any, origin: str = "environment") -> Any:
    """`raw` (an environment string, or a TOML value) as the setting's type: whole numbers refuse booleans and
    fractions rather than truncate them, text refuses TOML tables and numbers; ranges are `validate`'s."""
    rule = RULES.get(name, Rule("text"))
    bad = _setting_error(name, raw, origin, rule.allowed)
    if isinstance(default, bool):
        return raw if isinstance(raw, bool) else str(raw).lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int | float):
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise bad
        if isinstance(default, int) and isinstance(raw, float):
            raise bad  # 1.9 is no port: never truncated to 1
        try:
            return int(raw) if isinstance(default, int) else float(raw)
        except (ValueError, OverflowError):
            raise bad from None
    if not isinstance(raw, str):
        raise bad
    return raw


SETTING_NAMES = ("HARK_CONFIG", *(env_name(f.name) for f in fields(Settings) if f.name not in INTERNAL))
