"""Where bundles are found: an explicit folder, or a version registered in HARK_MODELS_DIR.

The registry also keeps pins (`pins.json` beside the bundles, so every machine that reads the registry sees
them): a rollback pins a collection to the version it rolled back to, and the beat does not re-index a
pinned collection until a bundle newer than the pin is registered or the pin is lifted (`hark models unpin`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from hark.bundle import MANIFEST, BundleError
from hark.manifest import VERSION_PATTERN
from hark.settings import Settings


def registered(settings: Settings) -> list[tuple[str, Path, str]]:
    """(version, folder, created_at) of every bundle in the registry, oldest first."""
    root = Path(settings.models_dir)
    found = []
    if root.is_dir():
        for folder in root.iterdir():
            if _is_partial(folder):
                continue  # a copy in progress (or an interrupted one): not registered
            manifest = folder / MANIFEST
            if manifest.is_file():
                try:
                    data = json.loads(manifest.read_text())
                    version = data["model"]["version"]
                    # The manifest's time has whole seconds: two bundles exported within one second are told
                    # apart by the manifest file's time (the registry's copy keeps it), not by their version hash.
                    created = str(data.get("created_at", ""))
                    mtime = manifest.stat().st_mtime_ns
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, OSError):
                    continue
                if isinstance(version, str) and VERSION_PATTERN.fullmatch(version):  # never list a path
                    found.append((version, folder, created, mtime))
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
    """Copy a verified bundle into the registry as `<name>-<version>`; registering twice is a no-op.

    The copy is made in a hidden temporary folder beside the registry's bundles and renamed into place, so the
    registry never lists a partial copy; the temporary folder is removed whatever happens. A folder already at
    the target is kept when it is this bundle's verified copy and replaced only when it is empty; anything
    else there is refused with a message, never overwritten.
    """
    from hark.bundle import Bundle

    bundle = Bundle.load(bundle_dir, verify_hashes=True)
    models = Path(settings.models_dir)
    # The manifest allows only slugs as name and version (hark.manifest): the target is a child of `models`.
    target = models / f"{bundle.name}-{bundle.version}"
    if target.parent != models or _is_partial(target):
        raise BundleError(f"{bundle.root}: model name {bundle.name!r} and version {bundle.version!r} do not make "
                          "a registry folder name")
    if _already_registered(target, bundle):
        return target
    models.mkdir(parents=True, exist_ok=True)
    _remove_legacy_partial(target)
    tmp = models / f".{target.name}.{os.getpid()}.{time.time_ns()}.tmp"
    try:
        _copy_listed(bundle, tmp)
        try:
            os.rename(tmp, target)  # atomic; replaces nothing but an empty folder
        except OSError as exc:
            if _already_registered(target, bundle):  # another process registered it meanwhile
                return target
            raise BundleError(f"cannot register {bundle.root} as {target}: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists() or tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_partial(folder: Path) -> bool:
    """A registration's temporary copy: hidden `.<name>.<pid>.<ns>.tmp`, or `<name>.tmp` of older versions."""
    return folder.name.startswith(".") or folder.name.endswith(".tmp")


def _already_registered(target: Path, bundle) -> bool:
    """True when `target` holds this bundle's verified copy; False when nothing (or an empty folder, which is
    removed) is there. Anything else at `target` is a BundleError that says what to do."""
    from hark.bundle import Bundle

    if not (target.exists() or target.is_symlink()):
        return False
    if (target / MANIFEST).is_file():
        try:
            existing = Bundle.load(target, verify_hashes=True)
        except BundleError as exc:
            raise BundleError(f"{target} is registered but no longer verifies ({exc}); remove it and register "
                              "again") from exc
        if (existing.name, existing.version) != (bundle.name, bundle.version):
            raise BundleError(f"{target} holds model {existing.name} version {existing.version}, not "
                              f"{bundle.name} version {bundle.version}; move it away and register again")
        return True
    if target.is_dir() and not target.is_symlink():
        try:
            target.rmdir()  # an empty folder (mkdir, or a copy that never started): nothing is lost
            return False
        except OSError:
            pass
    raise BundleError(f"{target} already exists and is not a registered bundle (no {MANIFEST}); it is left "
                      "as it is: move it away or remove it, then register again")


def _remove_legacy_partial(target: Path) -> None:
    """Older versions copied to `<target>.tmp` and left it behind when the copy failed."""
    legacy = target.with_name(target.name + ".tmp")
    if legacy.is_dir() and not legacy.is_symlink():
        shutil.rmtree(legacy, ignore_errors=True)


def _copy_listed(bundle, tmp: Path) -> None:
    """The manifest and the files it lists (verified, all inside the bundle folder), nothing else."""
    tmp.mkdir()
    for name in [MANIFEST, *bundle.manifest.files]:
        dest = tmp / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle.root / name, dest)


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
