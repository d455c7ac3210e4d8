"""Where bundles are found: an explicit folder, or a version registered in HARK_MODELS_DIR.

The registry also keeps pins (`pins.json` beside the bundles, so every machine that reads the registry sees
them): a rollback pins a collection to the version it rolled back to, and the beat does not re-index a
pinned collection until a bundle newer than the pin is registered or the pin is lifted (`hark models unpin`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hark.bundle import MANIFEST, BundleError
from hark.settings import Settings


def registered(settings: Settings) -> list[tuple[str, Path, str]]:
    """(version, folder, created_at) of every bundle in the registry, oldest first."""
    root = Path(settings.models_dir)
    found = []
    if root.is_dir():
        for folder in root.iterdir():
            manifest = folder / MANIFEST
            if manifest.is_file():
                try:
                    data = json.loads(manifest.read_text())
                    # The manifest's time has whole seconds: two bundles exported within one second are told
                    # apart by the manifest file's time (the registry's copy keeps it), not by their version hash.
                    found.append((data["model"]["version"], folder, data.get("created_at", ""),
                                  manifest.stat().st_mtime_ns))
                except (json.JSONDecodeError, KeyError, OSError):
                    continue
    return [item[:3] for item in sorted(found, key=lambda item: (item[2], item[3], item[0]))]


def resolve_bundle(settings: Settings, ref: str | None = None) -> Path:
    """A bundle folder from a path or a registered version; default HARK_BUNDLE, else the newest registered."""
    ref = ref or settings.bundle
    if ref:
        path = Path(ref)
        if (path / MANIFEST).is_file():
            return path
        for version, folder, _ in registered(settings):
            if ref in {version, folder.name}:
                return folder
        raise BundleError(f"no bundle at '{ref}' and no version '{ref}' registered in {settings.models_dir}")
    versions = registered(settings)
    if not versions:
        raise BundleError(f"no bundle given and none registered in {settings.models_dir}; pass --bundle, set "
                          "HARK_BUNDLE, or run `hark demo` / `hark export` first")
    return versions[-1][1]


def register(settings: Settings, bundle_dir: str | Path) -> Path:
    """Copy a verified bundle into the registry as `<name>-<version>`; registering twice is a no-op."""
    import shutil

    from hark.bundle import Bundle

    bundle = Bundle.load(bundle_dir, verify_hashes=True)
    target = Path(settings.models_dir) / f"{bundle.name}-{bundle.version}"
    if (target / MANIFEST).is_file():
        Bundle.load(target, verify_hashes=True)  # an existing copy must still verify
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(bundle.root, tmp)
    tmp.rename(target)
    return target


def registered_folder(settings: Settings, version: str) -> Path | None:
    """The registry folder of a model version; None when that version is not registered."""
    return next((folder for registered_version, folder, _ in registered(settings) if registered_version == version),
                None)


def bundle_for_collection(settings: Settings, collection: str, ref: str | None = None, client=None) -> Path:
    """The bundle to encode with for `collection`: `ref` or HARK_BUNDLE when given, else the version the
    collection's alias serves now (so queries and writes follow a rollback), else the newest registered.

    Without a client the store is opened just for the lookup; a store that is busy (another process owns
    the embedded folder) or unreachable falls back to the newest registered bundle.
    """
    from hark.store import StoreUnavailableError, connect, live_version

    if ref or settings.bundle:
        return resolve_bundle(settings, ref)
    version = None
    try:
        if client is not None:
            version = live_version(client, collection)
        else:
            own = connect(settings)
            try:
                version = live_version(own, collection)
            finally:
                own.close()
    except StoreUnavailableError:
        # The store is busy (a worker holds the embedded folder): a pin still names the live version.
        version = active_pin(settings, collection)
    if version is not None:
        folder = registered_folder(settings, version)
        if folder is not None:
            return folder
        raise BundleError(f"collection '{collection}' serves model version {version}, which is not registered "
                          f"in {settings.models_dir}; register its bundle (`hark models register`) or pass --bundle")
    return resolve_bundle(settings, None)


def registry_rows(settings: Settings) -> list[dict]:
    """Every registered bundle with the aliases it serves (empty when the store cannot be opened)."""
    from hark.store import StoreUnavailableError, connect, version_of

    live: dict[str, list[str]] = {}
    try:
        client = connect(settings)
        try:
            for alias in client.get_aliases().aliases:
                live.setdefault(version_of(alias.collection_name) or "", []).append(alias.alias_name)
        finally:
            client.close()
    except StoreUnavailableError:
        pass  # the embedded folder is busy: list without the live column
    pinned: dict[str, list[str]] = {}
    for collection in pins(settings):
        version = active_pin(settings, collection)
        if version is not None:
            pinned.setdefault(version, []).append(collection)
    return [{"version": v, "path": str(p), "created_at": c, "live_for": live.get(v, []),
             "pinned_for": pinned.get(v, [])} for v, p, c in registered(settings)]


def _pins_file(settings: Settings) -> Path:
    return Path(settings.models_dir) / "pins.json"


def pins(settings: Settings) -> dict[str, dict]:
    """Every recorded pin: collection -> {"version", "at", "newest"} (the newest registered when pinned)."""
    try:
        return json.loads(_pins_file(settings).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_pins(settings: Settings, data: dict[str, dict]) -> None:
    path = _pins_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".pins.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)  # atomic: a reader sees the old pins or the new ones


def pin(settings: Settings, collection: str, version: str) -> dict:
    """Pin `collection` to `version` until a newer bundle is registered or `unpin` lifts it."""
    versions = registered(settings)
    entry = {"version": version, "at": time.time(), "newest": versions[-1][0] if versions else version}
    data = pins(settings)
    data[collection] = entry
    _write_pins(settings, data)
    return entry


def unpin(settings: Settings, collection: str) -> bool:
    """Lift a pin; False when there was none."""
    data = pins(settings)
    if data.pop(collection, None) is None:
        return False
    _write_pins(settings, data)
    return True


def active_pin(settings: Settings, collection: str) -> str | None:
    """The pinned version of `collection` while the pin holds: no bundle registered after it was set."""
    entry = pins(settings).get(collection)
    if not entry:
        return None
    versions = registered(settings)
    if versions and versions[-1][0] != entry.get("newest"):
        return None  # a newer bundle was registered since: the pin has lapsed
    return entry["version"]
