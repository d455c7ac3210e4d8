"""Hash stamps under the state dir: a query process skips rehashing a bundle file only while the file is provably
the one that hashed right (same real path, size, mtime, ctime, inode, device, expected sha256)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import replace

import pytest
from test_manifest import sample

import hark.bundle as bundle_mod
from hark.bundle import STAMPS, Bundle, BundleError

CONTENT = b"not really onnx, but hashed like it " * 64
TOKENIZER = b"{}"  # listed (every file a manifest names is), never loaded here


@pytest.fixture
def hashes(monkeypatch):
    """Counts real hashing, and stands in for ONNX Runtime (the files are not graphs)."""
    calls: list[str] = []
    real = bundle_mod.sha256_file

    def counting(path):
        calls.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(bundle_mod, "sha256_file", counting)
    monkeypatch.setattr("hark.onnx.create_session", lambda path, device: ("session", path))
    return calls


def _manifest(sha: str) -> dict:
    return replace(sample(), files={"text.onnx": sha,
                                    "tokenizer.json": hashlib.sha256(TOKENIZER).hexdigest()}).to_dict()


def _bundle(folder, content: bytes = CONTENT):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text.onnx").write_bytes(content)
    (folder / "tokenizer.json").write_bytes(TOKENIZER)
    (folder / "manifest.json").write_text(json.dumps(_manifest(hashlib.sha256(content).hexdigest())))
    return folder


def _age(folder, monkeypatch) -> None:
    """Make the files old enough to stamp without sleeping through the real margin."""
    monkeypatch.setattr(bundle_mod, "RACY_NS", 20_000_000)
    time.sleep(0.05)


def _use(folder, state) -> None:
    Bundle.load(folder, state_dir=state).session("text")


def test_a_stamped_file_is_not_hashed_again(tmp_path, hashes, monkeypatch):
    folder = _bundle(tmp_path / "b")
    _age(folder, monkeypatch)
    _use(folder, tmp_path / "state")
    assert hashes == ["text.onnx"]
    assert len(list((tmp_path / "state" / STAMPS).iterdir())) == 1
    _use(folder, tmp_path / "state")
    _use(folder, tmp_path / "state")
    assert hashes == ["text.onnx"]
    # Without a state dir every process hashes, as before.
    _use(folder, None)
    assert hashes == ["text.onnx", "text.onnx"]


def test_a_file_modified_in_place_with_its_size_and_mtime_kept_is_caught(tmp_path, hashes, monkeypatch):
    folder = _bundle(tmp_path / "b")
    _age(folder, monkeypatch)
    _use(folder, tmp_path / "state")
    path = folder / "text.onnx"
    before = os.stat(path)
    time.sleep(0.05)  # a later coarse clock tick, so the rewrite gets a new ctime
    with open(path, "r+b") as fh:
        fh.seek(10)
        fh.write(b"X")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    with pytest.raises(BundleError, match="sha256 mismatch"):
        _use(folder, tmp_path / "state")


def test_a_replaced_file_is_rehashed(tmp_path, hashes, monkeypatch):
    folder = _bundle(tmp_path / "b")
    _age(folder, monkeypatch)
    _use(folder, tmp_path / "state")
    (folder / "text.onnx").write_bytes(CONTENT.replace(b"onnx", b"ONNX"))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        _use(folder, tmp_path / "state")
    assert hashes == ["text.onnx", "text.onnx"]


def test_a_stamp_for_another_sha_or_another_folder_is_not_trusted(tmp_path, hashes, monkeypatch):
    folder = _bundle(tmp_path / "b")
    other = tmp_path / "copy"
    shutil.copytree(_bundle(tmp_path / "c"), other)
    _age(folder, monkeypatch)
    _use(folder, tmp_path / "state")
    # The same file under a manifest that expects other content (another bundle version at this path).
    data = json.loads((folder / "manifest.json").read_text())
    data["files"]["text.onnx"] = "cd" * 32
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        _use(folder, tmp_path / "state")
    # A copy of a stamped bundle elsewhere, with the stamp file copied to the copy's key: other path and inode.
    _use(tmp_path / "c", tmp_path / "state")
    stamps = tmp_path / "state" / STAMPS
    stamp_c = Bundle.load(tmp_path / "c", state_dir=tmp_path / "state")._stamp_path(tmp_path / "c" / "text.onnx")
    stamp_copy = Bundle.load(other, state_dir=tmp_path / "state")._stamp_path(other / "text.onnx")
    assert stamp_c.parent == stamps and stamp_c.is_file()
    shutil.copy(stamp_c, stamp_copy)
    count = len(hashes)
    _use(other, tmp_path / "state")
    assert len(hashes) == count + 1


def test_a_young_file_is_hashed_but_not_stamped(tmp_path, hashes):
    folder = _bundle(tmp_path / "b")
    _use(folder, tmp_path / "state")
    _use(folder, tmp_path / "state")
    assert hashes == ["text.onnx", "text.onnx"]
    assert not (tmp_path / "state" / STAMPS).exists()


def test_an_unusable_state_dir_or_stamp_falls_back_to_hashing(tmp_path, hashes, monkeypatch):
    folder = _bundle(tmp_path / "b")
    _age(folder, monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the state dir should be")
    _use(folder, blocker)
    _use(folder, blocker)
    assert hashes == ["text.onnx", "text.onnx"]
    # A damaged stamp is ignored and rewritten.
    _use(folder, tmp_path / "state")
    (stamp,) = (tmp_path / "state" / STAMPS).iterdir()
    stamp.write_text("{not json")
    _use(folder, tmp_path / "state")
    assert hashes == ["text.onnx"] * 4
    _use(folder, tmp_path / "state")
    assert hashes == ["text.onnx"] * 4


def test_the_bundle_folder_is_left_exactly_as_exported(tmp_path, hashes, monkeypatch):
    folder = _bundle(tmp_path / "b")
    _age(folder, monkeypatch)
    _use(folder, tmp_path / "state")
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "text.onnx", "tokenizer.json"]
