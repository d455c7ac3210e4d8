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
    ({"HARK_QUERY_BATCH_MAX": "-1"}, "at least 0"),
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


# -- every setting checked where it is read: one line naming it, its source and what it may be ---------------------
@pytest.mark.parametrize("value", ["-10", "0.001", "0.5", "nan", "inf", "-inf", "1e400"])
def test_window_seconds_out_of_range_is_refused(tmp_path, value):
    """A negative window never advanced (ingestion hung), a tiny one cut an hour into millions of windows."""
    with pytest.raises(SettingsError, match=r"HARK_WINDOW_SECONDS=\S+ \(from the environment\) must be 0 \(the "
                       r"bundle's window\) or a number of seconds from 1 to 86400"):
        Settings.load(tmp_path / "none.toml", env={"HARK_WINDOW_SECONDS": value})


@pytest.mark.parametrize("env, message", [
    ({"HARK_ROW_CACHE_MB": "nan"}, "HARK_ROW_CACHE_MB=nan .* from 0 .off. to"),
    ({"HARK_ROW_CACHE_MB": "inf"}, "HARK_ROW_CACHE_MB=inf"),
    ({"HARK_QUERY_BATCH_WAIT_MS": "nan"}, "HARK_QUERY_BATCH_WAIT_MS=nan .* from 0 to 10000"),
    ({"HARK_MAX_SPOOL_MB": "nan"}, "HARK_MAX_SPOOL_MB=nan .* from 0 .no limit."),
    ({"HARK_MAX_SPOOL_MB": "-1"}, "HARK_MAX_SPOOL_MB=-1"),
    ({"HARK_RETRY_BACKOFF": "nan"}, "HARK_RETRY_BACKOFF=nan"),
    ({"HARK_JOB_TTL_DAYS": "-1"}, "HARK_JOB_TTL_DAYS=-1 .* more than 0"),
    ({"HARK_JOB_TTL_DAYS": "0"}, "HARK_JOB_TTL_DAYS=0 "),
    ({"HARK_PORT": "-5"}, r"HARK_PORT=-5 \(from the environment\) must be a whole number from 1 to 65535"),
    ({"HARK_PORT": "99999"}, "HARK_PORT=99999 .* from 1 to 65535"),
    ({"HARK_PORT": "0"}, "HARK_PORT=0 .* from 1 to 65535"),
    ({"HARK_KEEP_COLLECTIONS": "-1"}, "HARK_KEEP_COLLECTIONS=-1 .* at least 0"),
    ({"HARK_MAX_DELIVERIES": "0"}, "HARK_MAX_DELIVERIES=0 .* at least 1"),
    ({"HARK_WORKER_HEARTBEAT": "0"}, "HARK_WORKER_HEARTBEAT=0 .* from 1 to"),
    ({"HARK_VISIBILITY_TIMEOUT": "0"}, "HARK_VISIBILITY_TIMEOUT=0 .* from 1 to"),
    ({"HARK_REINDEX_INTERVAL": "-1"}, r"HARK_REINDEX_INTERVAL=-1 .* from 0 \(schedule off\)"),
    ({"HARK_MAX_RETRIES": "-1"}, "HARK_MAX_RETRIES=-1 .* from 0 to 50"),
    ({"HARK_MAX_RETRIES": "5000"}, "HARK_MAX_RETRIES=5000"),  # backoff x 2**5000 overflows
    ({"HARK_SHARDS": "-1"}, "HARK_SHARDS=-1"),
    ({"HARK_ORT_THREADS": "-2"}, "HARK_ORT_THREADS=-2"),
    ({"HARK_BATCH_FILES": "1.5"}, "HARK_BATCH_FILES=1.5 .* whole number"),
    ({"HARK_COLLECTION": ""}, r"HARK_COLLECTION='' .* \(not empty\)"),
    ({"HARK_QDRANT_URL": "notaurl"}, "HARK_QDRANT_URL=notaurl .* http:// or https://"),
    ({"HARK_QDRANT_URL": "redis://localhost:6379"}, "HARK_QDRANT_URL="),
    ({"HARK_QDRANT_URL": "http://"}, "HARK_QDRANT_URL="),  # no host
    ({"HARK_QDRANT_URL": "http://qdrant:99999"}, "HARK_QDRANT_URL="),  # no such port
    ({"HARK_BROKER_URL": "notaurl"}, "HARK_BROKER_URL=notaurl .* redis:// or rediss://"),
    ({"HARK_BROKER_URL": "http://redis:6379"}, "HARK_BROKER_URL="),  # Redis refused it only when first used
    ({"HARK_BROKER_URL": "memory://"}, "HARK_BROKER_URL="),  # the job store needs Redis too
])
def test_out_of_range_settings_are_named_with_their_source_and_range(tmp_path, env, message):
    with pytest.raises(SettingsError, match=message) as caught:
        Settings.load(tmp_path / "none.toml", env=env)
    assert "from the environment" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("env", [
    {"HARK_WINDOW_SECONDS": "0"}, {"HARK_WINDOW_SECONDS": "1"}, {"HARK_WINDOW_SECONDS": "12.5"},
    {"HARK_KEEP_COLLECTIONS": "0"}, {"HARK_REINDEX_INTERVAL": "0"}, {"HARK_SHARDS": "0", "HARK_REPLICATION": "0"},
    {"HARK_MAX_SPOOL_MB": "0"}, {"HARK_ROW_CACHE_MB": "0"}, {"HARK_ORT_THREADS": "0"}, {"HARK_QUERY_BATCH_MAX": "0"},
    {"HARK_QUERY_BATCH_WAIT_MS": "0"}, {"HARK_MAX_RETRIES": "0"}, {"HARK_RETRY_BACKOFF": "0.3"},
    {"HARK_JOB_TTL_DAYS": "0.5"}, {"HARK_PORT": "1"}, {"HARK_PORT": "65535"},
    {"HARK_QDRANT_URL": ""}, {"HARK_QDRANT_URL": "https://qdrant.example:6333/"},
    {"HARK_BROKER_URL": ""}, {"HARK_BROKER_URL": "redis://redis:6379/0"}, {"HARK_BROKER_URL": "rediss://:pw@r/1"},
    {"HARK_API_KEY": "", "HARK_MEDIA_ROOTS": "", "HARK_BUNDLE": ""},
])
def test_documented_zeros_and_edges_stay_allowed(tmp_path, env):
    """0 means off, auto or the default where the settings table says so; those and the range ends load."""
    Settings.load(tmp_path / "none.toml", env=env)


def test_a_nan_row_cache_is_one_line_from_the_cli(capsys, monkeypatch, tmp_path):
    """`HARK_ROW_CACHE_MB=nan hark search dog` ended in `ValueError: cannot convert float NaN to integer`."""
    from hark.cli import main

    monkeypatch.setenv("HARK_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("HARK_QDRANT_PATH", str(tmp_path / "qdrant"))
    monkeypatch.setenv("HARK_ROW_CACHE_MB", "nan")
    assert main(["search", "dog"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hark: error: HARK_ROW_CACHE_MB=nan (from the environment) must be") and "\n" not in err


@pytest.mark.parametrize("line, message", [
    ("port = 1.9", "HARK_PORT=1.9 .* whole number from 1 to 65535"),  # was truncated to port 1
    ("port = 99999", "HARK_PORT=99999"),
    ("port = true", "HARK_PORT=true"),
    ("batch_files = true", "HARK_BATCH_FILES=true .* whole number"),  # was batch_files 1
    ("batch_files = 2.0", "HARK_BATCH_FILES=2.0"),
    ("qdrant_path = {a=1}", r"HARK_QDRANT_PATH \(a table, from .*hark.toml\) must be a folder path"),  # was "{'a': 1}"
    ("qdrant_path = 5", "HARK_QDRANT_PATH=5"),
    ("collection = [1, 2]", r"HARK_COLLECTION \(an array, from"),
    ("bundle = 1979-05-27", r"HARK_BUNDLE \(a date or time, from"),
    ("window_seconds = nan", "HARK_WINDOW_SECONDS=nan"),
    ("row_cache_mb = inf", "HARK_ROW_CACHE_MB=inf"),
    ("row_cache_mb = false", "HARK_ROW_CACHE_MB=false"),
    ('qdrant_url = "notaurl"', 'HARK_QDRANT_URL="notaurl"'),
    ("api_key = 12345", r"HARK_API_KEY=\*\*\* .* must be text"),  # a key is never printed
])
def test_toml_values_of_the_wrong_type_are_named_with_the_file(tmp_path, line, message):
    toml = tmp_path / "hark.toml"
    toml.write_text(f"[hark]\n{line}\n")
    with pytest.raises(SettingsError, match=message) as caught:
        Settings.load(toml, env={})
    assert f"from {toml})" in str(caught.value) and "12345" not in str(caught.value)


def test_toml_numbers_and_numeric_strings_still_load(tmp_path):
    toml = tmp_path / "hark.toml"
    toml.write_text('[hark]\nport = "8001"\nwindow_seconds = 10\nrow_cache_mb = 64\nHARK_JOB_TTL_DAYS = 7.5\n')
    settings = Settings.load(toml, env={})
    assert (settings.port, settings.window_seconds, settings.row_cache_mb, settings.job_ttl_days) == (8001, 10.0,
                                                                                                      64.0, 7.5)
    assert isinstance(settings.window_seconds, float) and isinstance(settings.port, int)


@pytest.mark.parametrize("text, kind", [('hark = 5\n', "an integer"), ('hark = "x"\n', "a string"),
                                        ("[[hark]]\nport = 1\n", "an array")])
def test_a_hark_entry_that_is_not_a_table_is_named(tmp_path, text, kind):
    """`hark = 5` ended in `AttributeError: 'int' object has no attribute 'items'`."""
    toml = tmp_path / "hark.toml"
    toml.write_text(text)
    with pytest.raises(SettingsError, match=f"{toml}: 'hark' must be a table of settings .*not {kind}"):
        Settings.load(toml, env={})


def test_undecodable_toml_is_named_and_a_utf8_bom_is_read(tmp_path):
    """A UTF-16 file (bytes FF FE) ended in a UnicodeDecodeError traceback."""
    toml = tmp_path / "hark.toml"
    toml.write_bytes(b"\xff\xfe[hark]\n")
    with pytest.raises(SettingsError, match=f"{toml}: not UTF-8 text"):
        Settings.load(toml, env={})
    toml.write_bytes("[hark]\nport = 9000\n".encode("utf-8-sig"))
    assert Settings.load(toml, env={}).port == 9000


def test_validate_checks_settings_changed_in_code():
    with pytest.raises(SettingsError, match=r"^HARK_PORT=0 must be a whole number from 1 to 65535$"):
        Settings(port=0).validate()
    with pytest.raises(SettingsError, match="HARK_ROW_CACHE_MB=nan"):
        Settings(row_cache_mb=float("nan")).validate()
    Settings().validate()


@pytest.mark.parametrize("port", ["-1", "99999", "0", "abc", "1.5"])
def test_serve_port_out_of_range_is_refused(capsys, port):
    """`hark serve --port -1` ended in an OverflowError traceback, `--port 0` silently listened on 8000."""
    from hark.cli import main

    with pytest.raises(SystemExit) as caught:
        main(["serve", "--port", port])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"hark serve: error: argument --port: '{port}' is not a port: "
                   "it must be a whole number from 1 to 65535")


def test_serve_port_in_range_is_parsed():
    from hark.cli import build_parser

    assert build_parser().parse_args(["serve", "--port", "65535"]).port == 65535
    assert build_parser().parse_args(["serve"]).port is None  # then HARK_PORT
