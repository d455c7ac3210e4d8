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
    # API key for hark's own HTTP routes (/search, the page); empty means open.
    api_key: str = ""
    # Address `hark serve` listens on.
    host: str = "127.0.0.1"
    port: int = 8000
    # Where the embedded mode keeps job status and the dead-letter list.
    state_dir: str = "./.hark/state"
    sources: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, toml_path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        path = Path(toml_path or env.get("HARK_CONFIG", "hark.toml"))
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
            if f.name == "sources":
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
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.device not in {"auto", "cpu", "cuda"}:
            raise SettingsError(f"HARK_DEVICE must be auto, cpu or cuda, not {self.device!r}")
        if self.batch_files < 1:
            raise SettingsError("HARK_BATCH_FILES must be at least 1")

    @property
    def embedded_qdrant(self) -> bool:
        return not self.qdrant_url

    def describe(self) -> list[dict[str, str]]:
        rows = []
        for f in fields(self):
            if f.name == "sources":
                continue
            value = getattr(self, f.name)
            shown = "***" if "key" in f.name and value else str(value)
            rows.append({"name": env_name(f.name), "value": shown, "source": self.sources.get(f.name, "default")})
        return rows


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


SETTING_NAMES = tuple(env_name(f.name) for f in fields(Settings) if f.name != "sources")
