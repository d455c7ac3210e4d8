"""Settings shared by every part: environment variables, the same names in an optional hark.toml, defaults
that work on one machine. `hark config` prints the effective values and where each came from."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(f"{path}: invalid TOML ({exc})") from exc
            from_file = {k.upper(): v for k, v in data.get("hark", data).items()}
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
            values[f.name] = _coerce(f.name, raw, f.default)
            sources[f.name] = origin
        settings = cls(**values)
        settings.sources = sources
        settings.config_path = str(path)
        settings.sources["config_path"] = config_source + ("" if path.is_file() else ", file absent")
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.device not in {"auto", "cpu", "cuda"}:
            raise SettingsError(f"HARK_DEVICE must be auto, cpu or cuda, not {self.device!r}")
        for name in ("batch_files", "max_body_bytes", "max_json_depth"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{env_name(name)} must be at least 1")
        if self.query_batch_wait_ms < 0 or self.query_batch_max < 0 or self.ort_threads < 0 or self.row_cache_mb < 0 \
                or self.max_spool_mb < 0:
            raise SettingsError("HARK_QUERY_BATCH_WAIT_MS, HARK_QUERY_BATCH_MAX, HARK_ORT_THREADS, "
                                "HARK_ROW_CACHE_MB and HARK_MAX_SPOOL_MB cannot be negative")

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


def _coerce(name: str, raw: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            return raw if isinstance(raw, bool) else str(raw).lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{env_name(name)}: {raw!r} is not a valid {type(default).__name__}") from exc
    return str(raw)


SETTING_NAMES = ("HARK_CONFIG", *(env_name(f.name) for f in fields(Settings) if f.name not in INTERNAL))
