"""`hark bundle verify`, loading and `hark models register` against tampered copies of the exported tiny bundle:
every file the manifest names is hashed, stays inside the bundle, names and versions are slugs, every field is
checked when the manifest loads, and each refusal is one line (`hark: error: ...`, exit status 2)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from hark.bundle import Bundle, BundleError, sha256_file
from hark.cli import main
from hark.plugin.verify import verify_bundle
from hark.registry import register, registered
from hark.settings import Settings


def _copy(bundle_dir, tmp_path, name: str = "b"):
    out = tmp_path / name
    shutil.copytree(bundle_dir, out)
    return out


def _edit(folder, edit):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))  # NaN stays NaN: Python's json writes and reads it
    return folder


def _restamp(folder, *names: str) -> None:
    """List `names` with their current sha256, as the exporter computes it (hark.bundle.sha256_file)."""
    _edit(folder, lambda d: d["files"].update({n: sha256_file(folder / n) for n in names}))


def _cli(capsys, *argv: str):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert err.startswith("hark: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err


def _settings(tmp_path) -> Settings:
    return Settings.load(tmp_path / "none.toml", env={"HARK_MODELS_DIR": str(tmp_path / "models")})


def _tree(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files)


# -- 1. every file the manifest names is listed with its hash -----------------------------------------------

@pytest.mark.parametrize("edit", [
    lambda d: d.update(files={}),
    lambda d: d["files"].pop("audio.onnx"),
    lambda d: d["files"].pop("tokenizer.json"),
    lambda d: d["files"].pop(d["graphs"]["text"]["files"]["int8"]),  # a variant that is not the default
], ids=["files-empty", "graph-unlisted", "tokenizer-unlisted", "variant-unlisted"])
def test_a_bundle_with_an_unlisted_file_is_refused(bundle_dir, tmp_path, capsys, edit):
    folder = _edit(_copy(bundle_dir, tmp_path), edit)
    with pytest.raises(BundleError, match=r"which is not listed .* in files"):
        verify_bundle(folder)
    with pytest.raises(BundleError, match="which is not listed"):
        Bundle.load(folder)  # a query process's lazy load refuses it too
    _one_line_error(*_cli(capsys, "bundle", "verify", str(folder))[::2], "which is not listed")


# -- 2. manifest paths stay inside the bundle ---------------------------------------------------------------

@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_a_graph_outside_the_bundle_is_refused(bundle_dir, tmp_path, capsys, where):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(bundle_dir / "audio.onnx", outside / "audio.onnx")
    path = str(outside / "audio.onnx") if where == "absolute" else "../outside/audio.onnx"

    def edit(d):
        d["graphs"]["audio"]["files"]["fp32"] = path
        d["files"][path] = sha256_file(outside / "audio.onnx")  # listed with the right hash: still refused

    folder = _edit(_copy(bundle_dir, tmp_path), edit)
    with pytest.raises(BundleError, match="not a relative path inside the bundle"):
        verify_bundle(folder)
    _one_line_error(*_cli(capsys, "bundle", "verify", str(folder))[::2], "not a relative path inside the bundle")


def test_a_symbolic_link_out_of_the_bundle_is_refused(bundle_dir, tmp_path):
    folder = _copy(bundle_dir, tmp_path)
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(folder / "audio.onnx", outside)
    (folder / "audio.onnx").unlink()
    (folder / "audio.onnx").symlink_to(outside)  # same content, same hash
    with pytest.raises(BundleError, match="resolves outside the bundle folder"):
        verify_bundle(folder)
    with pytest.raises(BundleError, match="resolves outside the bundle folder"):
        Bundle.load(folder)


# -- 3. names and versions are slugs; the registry never writes outside itself ------------------------------

@pytest.mark.parametrize(("key", "value"), [("name", "../evil"), ("version", "../../evil"), ("name", "/tmp/evil")])
def test_register_refuses_a_name_or_version_that_is_a_path(bundle_dir, tmp_path, capsys, monkeypatch, key, value):
    work = tmp_path / "work"
    work.mkdir()
    folder = _edit(_copy(bundle_dir, work), lambda d: d["model"].update({key: value}))
    with pytest.raises(BundleError, match=rf"model\.{key} .* is not a slug"):
        register(_settings(tmp_path), folder)
    monkeypatch.setenv("HARK_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HARK_CONFIG", str(tmp_path / "none.toml"))
    _one_line_error(*_cli(capsys, "models", "register", str(folder))[::2], "is not a slug")
    assert not (tmp_path / "models").exists()
    assert not [p for p in _tree(tmp_path) if "evil" in p]


def test_the_registry_never_lists_a_version_that_is_a_path(tmp_path):
    folder = tmp_path / "models" / "planted"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"model": {"version": "../../evil"}}))
    (tmp_path / "models" / "odd").mkdir()
    (tmp_path / "models" / "odd" / "manifest.json").write_text(json.dumps([1]))
    assert registered(_settings(tmp_path)) == []


# -- 4. registering into an occupied folder, and no temporary copies left behind ----------------------------

def _target(tmp_path, bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())["model"]
    return tmp_path / "models" / f"{manifest['name']}-{manifest['version']}"


def test_register_into_an_occupied_folder_says_so_and_keeps_it(bundle_dir, tmp_path, capsys, monkeypatch):
    target = _target(tmp_path, bundle_dir)
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="already exists and is not a registered bundle"):
        register(_settings(tmp_path), bundle_dir)
    monkeypatch.setenv("HARK_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HARK_CONFIG", str(tmp_path / "none.toml"))
    _one_line_error(*_cli(capsys, "models", "register", str(bundle_dir))[::2], "move it away or remove it")
    assert (target / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [target.name]  # no .tmp copy
    assert registered(_settings(tmp_path)) == []


def test_register_fills_an_empty_folder_and_is_a_no_op_the_second_time(bundle_dir, tmp_path):
    target = _target(tmp_path, bundle_dir)
    target.mkdir(parents=True)  # `mkdir -p` of the target: nothing to lose
    assert register(_settings(tmp_path), bundle_dir) == target
    assert register(_settings(tmp_path), bundle_dir) == target
    assert [folder for _, folder, _ in registered(_settings(tmp_path))] == [target]
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["manifest.json", *json.loads((bundle_dir / "manifest.json").read_text())["files"]])
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [target.name]


def test_register_refuses_another_bundle_or_a_damaged_copy_at_the_target(bundle_dir, tmp_path):
    target = _target(tmp_path, bundle_dir)
    target.parent.mkdir(parents=True)
    shutil.copytree(bundle_dir, target)
    _edit(target, lambda d: d["model"].update(version="0badc0ffee00"))
    with pytest.raises(BundleError, match="holds model tiny version 0badc0ffee00"):
        register(_settings(tmp_path), bundle_dir)
    shutil.rmtree(target)
    shutil.copytree(bundle_dir, target)
    with open(target / "clip.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="is registered but no longer verifies"):
        register(_settings(tmp_path), bundle_dir)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [target.name]


def test_a_failed_copy_leaves_no_temporary_folder(bundle_dir, tmp_path, monkeypatch):
    import hark.registry as registry

    real = shutil.copy2
    calls = []

    def failing(src, dst, **kwargs):
        calls.append(src)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(src, dst, **kwargs)

    monkeypatch.setattr(registry.shutil, "copy2", failing)
    with pytest.raises(OSError, match="No space left"):
        register(_settings(tmp_path), bundle_dir)
    assert list((tmp_path / "models").iterdir()) == []
    monkeypatch.setattr(registry.shutil, "copy2", real)
    # An older hark's leftover `<target>.tmp` is neither listed nor in the way.
    legacy = _target(tmp_path, bundle_dir).with_name(_target(tmp_path, bundle_dir).name + ".tmp")
    shutil.copytree(bundle_dir, legacy)
    assert registered(_settings(tmp_path)) == []
    target = register(_settings(tmp_path), bundle_dir)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [target.name]


# -- 5. every field checked when the manifest loads; every failure one line ---------------------------------

@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["audio"].update(sample_rate=0), "audio.sample_rate: must be positive"),
    (lambda d: d["audio"].update(sample_rate=-1), "audio.sample_rate: must be positive"),
    (lambda d: d["audio"].update(segment_seconds=0), "audio.segment_seconds: must be positive"),
    (lambda d: d["audio"].update(max_segments=-3), "audio.max_segments: must be positive"),
    (lambda d: d["vectors"]["global"].update(distance="Manhattan"), "'Manhattan' is not one of cosine, dot"),
    (lambda d: d["heads"]["fusion"].update(cosine=float("nan")), "heads.fusion.cosine: expected a finite number"),
    (lambda d: d["text"].update(max_tokens=0), "text.max_tokens: must be positive"),
    (lambda d: d.update(format_version=True), "bundle format True"),
], ids=["audio_sr_zero", "audio_sr_neg", "seg_zero", "maxseg_neg", "vec_dist_bad", "fusion_nan",
        "max_tokens_zero", "ver_bool"])
def test_bad_manifest_values_fail_verify_in_one_line(bundle_dir, tmp_path, capsys, edit, message):
    folder = _edit(_copy(bundle_dir, tmp_path), edit)
    _one_line_error(*_cli(capsys, "bundle", "verify", str(folder))[::2], message)
    with pytest.raises(BundleError, match=r"manifest\.json: "):
        Bundle.load(folder)


def test_a_tokenizer_that_hashes_right_but_does_not_load_is_a_bundle_error(bundle_dir, tmp_path, capsys):
    folder = _copy(bundle_dir, tmp_path)
    (folder / "tokenizer.json").write_text('{"x": 1}')
    _restamp(folder, "tokenizer.json")
    _one_line_error(*_cli(capsys, "bundle", "verify", str(folder))[::2],
                    "tokenizer.json: the tokenizer cannot be loaded")
    with pytest.raises(BundleError, match="the tokenizer cannot be loaded"):
        Bundle.load(folder).tokenizer  # noqa: B018 - the runtime's lazy load


def test_any_other_verification_failure_is_one_line(bundle_dir, tmp_path, capsys, monkeypatch):
    def broken(path, device="cpu"):
        raise KeyError("global")

    monkeypatch.setattr("hark.plugin.verify.verify_bundle", broken)
    _one_line_error(*_cli(capsys, "bundle", "verify", str(bundle_dir))[::2], "verification failed: KeyError: 'global'")


def test_the_exported_bundle_still_verifies(bundle_dir, capsys):
    code, out, err = _cli(capsys, "bundle", "verify", str(bundle_dir))
    assert code == 0 and out.startswith("OK") and not err
