"""Settings (environment, hark.toml, defaults) and bundle resolution through the registry."""

from __future__ import annotations

import json

import pytest

from hark.bundle import BundleError
from hark.registry import register, registered, resolve_bundle
from hark.settings import SETTING_NAMES, Settings, SettingsError


def test_environment_beats_toml_beats_defaults(tmp_path):
    toml = tmp_path / "hark.toml"
    toml.write_text('[hark]\nHARK_COLLECTION = "field"\nbatch_files = 4\nHARK_DEVICE = "cpu"\n')
    settings = Settings.load(toml, env={"HARK_DEVICE": "cuda", "HARK_MAX_RETRIES": "2"})
    assert (settings.collection, settings.batch_files, settings.device, settings.max_retries) == ("field", 4, "cuda", 2)
    sources = {row["name"]: row["source"] for row in settings.describe()}
    assert sources["HARK_DEVICE"] == "environment" and sources["HARK_COLLECTION"] == str(toml)
    assert sources["HARK_QDRANT_PATH"] == "default"
    assert set(sources) == set(SETTING_NAMES)


@pytest.mark.parametrize("env, message", [
    ({"HARK_DEVICE": "tpu"}, "HARK_DEVICE"),
    ({"HARK_BATCH_FILES": "many"}, "HARK_BATCH_FILES"),
    ({"HARK_BATCH_FILES": "0"}, "at least 1"),
    ({"HARK_QUERY_BATCH_MAX": "-1"}, "cannot be negative"),
])
def test_bad_settings_are_named(tmp_path, env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.load(tmp_path / "none.toml", env=env)


def test_bad_toml_is_named(tmp_path):
    toml = tmp_path / "hark.toml"
    toml.write_text("[hark\n")
    with pytest.raises(SettingsError, match="invalid TOML"):
        Settings.load(toml, env={})


def test_api_keys_are_not_printed(tmp_path):
    settings = Settings.load(tmp_path / "none.toml", env={"HARK_QDRANT_API_KEY": "secret", "HARK_API_KEY": "x"})
    shown = {row["name"]: row["value"] for row in settings.describe()}
    assert shown["HARK_QDRANT_API_KEY"] == "***" and shown["HARK_API_KEY"] == "***"


def test_config_command(capsys, monkeypatch):
    from hark.cli import main

    monkeypatch.setenv("HARK_COLLECTION", "birds")
    assert main(["config", "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["HARK_COLLECTION"] == {"value": "birds", "source": "environment"}


def test_registry_resolution(bundle_dir, tmp_path):
    settings = Settings.load(tmp_path / "none.toml", env={"HARK_MODELS_DIR": str(tmp_path / "models")})
    with pytest.raises(BundleError, match="none registered"):
        resolve_bundle(settings)
    target = register(settings, bundle_dir)
    assert register(settings, bundle_dir) == target  # idempotent
    version = registered(settings)[0][0]
    assert resolve_bundle(settings) == target
    assert resolve_bundle(settings, version) == target
    assert resolve_bundle(settings, str(bundle_dir)) == bundle_dir
    with pytest.raises(BundleError, match="no version 'nope'"):
        resolve_bundle(settings, "nope")


def test_bundles_exported_within_one_second_keep_their_export_order(tmp_path):
    """Manifests carry whole seconds; two bundles exported in the same second were ordered by their version
    hash, so "newest" (what the beat re-indexes to) could be the older one."""
    import os

    settings = Settings.load(tmp_path / "none.toml", env={"HARK_MODELS_DIR": str(tmp_path / "models")})
    for i, version in enumerate(["f00d", "0bad"]):  # exported in this order, within the same second
        folder = tmp_path / "models" / f"tiny-{version}"
        folder.mkdir(parents=True)
        manifest = folder / "manifest.json"
        manifest.write_text(json.dumps({"model": {"version": version}, "created_at": "2026-11-27T10:00:00+00:00"}))
        os.utime(manifest, ns=(1_700_000_000_000_000_000 + i * 1000, 1_700_000_000_000_000_000 + i * 1000))
    assert [version for version, _, _ in registered(settings)] == ["f00d", "0bad"]
