"""What every command module shares: the user-error type, JSON printing, common flags, settings."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from hark.errors import HarkError
from hark.settings import Settings

DEVICES = ["auto", "cpu", "cuda"]


class CLIError(HarkError):
    """A user-facing error: printed as one line, exit status 2."""


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, sort_keys=False, default=_json_default))


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print results as JSON (the last line is one object)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_json(p: argparse.ArgumentParser, what: str = "print as JSON") -> None:
    p.add_argument("--json", action="store_true", help=what)


def add_device(p: argparse.ArgumentParser, what: str = "ONNX Runtime device", default: str = "auto") -> None:
    p.add_argument("--device", default=default, choices=DEVICES, help=what)


def settings_from(args: argparse.Namespace) -> Settings:
    """The effective settings, with a command's --device taking precedence over HARK_DEVICE."""
    settings = Settings.load()
    if getattr(args, "device", None) and args.device != "auto":
        settings.device = args.device
    return settings


def parse_meta(pairs: list[str] | None) -> dict[str, Any]:
    """`--meta key=value` pairs; values that parse as JSON keep their type (numbers, lists)."""
    meta: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair or not pair.split("=", 1)[0]:
            raise CLIError(f"--meta '{pair}' is not key=value")
        key, raw = pair.split("=", 1)
        try:
            # NaN and Infinity are not JSON a store accepts: they stay the text the user wrote.
            meta[key] = json.loads(raw, parse_constant=_not_a_number)
        except ValueError:  # not JSON (JSONDecodeError), or NaN/Infinity
            meta[key] = raw
        except RecursionError:
            raise CLIError(f"--meta '{key}': the value is nested too deeply") from None
    return meta


def _not_a_number(name: str) -> float:
    raise ValueError(name)


def print_metrics_table(rows: dict[str, dict[str, float]]) -> None:
    """One row per system; R@k columns in k order, then the mAP columns."""

    def order(key: str) -> tuple:
        if key.startswith("R@") and key[2:].isdigit():
            return (0, int(key[2:]), key)
        return (1, 0, key)

    keys = sorted({k for r in rows.values() for k in r}, key=order)
    width = max(len(n) for n in rows) + 2
    print("".ljust(width) + "".join(k.rjust(12) for k in keys))
    for name, values in rows.items():
        print(name.ljust(width) + "".join(f"{values.get(k, float('nan')):12.2f}" for k in keys))


def out_folder(path: str, flag: str = "--out") -> Path:
    """A folder argument that will be created or filled: an existing file there is a one-line error, not a
    FileExistsError traceback after the work is done."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CLIError(f"{flag} {path}: is a file, not a folder")
    return folder
