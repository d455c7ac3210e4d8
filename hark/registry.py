"""Where bundles are found: an explicit folder, or a version registered in HARK_MODELS_DIR."""

from __future__ import annotations

import json
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
                    found.append((data["model"]["version"], folder, data.get("created_at", "")))
                except (json.JSONDecodeError, KeyError):
                    continue
    return sorted(found, key=lambda item: (item[2], item[0]))


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

    bundle = Bundle.load(bundle_dir)
    target = Path(settings.models_dir) / f"{bundle.name}-{bundle.version}"
    if (target / MANIFEST).is_file():
        Bundle.load(target)  # an existing copy must still verify
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(bundle.root, tmp)
    tmp.rename(target)
    return target
