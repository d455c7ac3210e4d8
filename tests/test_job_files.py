"""The embedded job state (hark.workers.jobs.FileJobStore): a broken job record or dead-letter list is reported
clearly, never as a traceback; one broken job record leaves the others listed; the dead-letter list is never
rewritten while it is unreadable (that would lose the record of the failed files)."""

from __future__ import annotations

import json
import re

import pytest

from hark.errors import HarkError
from hark.workers.jobs import FileJobStore, dead_letter_entry

BROKEN = [b"{bad", b"[]", b"null", b'"text"', b"\xff\xfe\x00binary", b'{"meta": {}, "files": {}}',
          b'{"meta": [], "files": {}}', b'{"meta": {"id": "x", "collection": "c", "total": 1}, "files": []}',
          b'{"meta": {"id": "x", "collection": "c", "total": "many"}, "files": {}}',
          b'{"meta": {"id": "x", "collection": "c", "total": 1, "created": "yesterday"}, "files": {}}',
          b'{"meta": {"id": "x", "collection": "c", "total": 1}, "files": {"/a.wav": {"status": "lost"}}}',
          b'{"meta": {"id": "x", "collection": "c", "total": 1}, "files": {"/a.wav": "ingested"}}']

BROKEN_LISTS = [b"{bad", b"[]", b"null", b"\xff\xfe\x00binary", b'{"a": 1}', b'{"a": {"id": "a"}}',
                b'{"a": {"id": "a", "job": "j", "path": "/x.wav", "reason": "r", "collection": "c", "bundle": "b", '
                b'"at": 5}}']


def _two_jobs(root) -> FileJobStore:
    store = FileJobStore(root)
    store.create("good", "songs", 2, "/bundles/v1")
    store.record("good", "/a.wav", "ingested")
    store.record("good", "/b.wav", "failed", "not audio")
    store.create("bad", "songs", 1, "/bundles/v1")
    return store


@pytest.mark.parametrize("content", [*BROKEN, None])
def test_a_broken_job_record_is_listed_as_unreadable_and_the_others_still_show(tmp_path, content, caplog):
    store = _two_jobs(tmp_path)
    record = tmp_path / "jobs" / "bad.json"
    if content is None:
        record.unlink()
        record.mkdir()  # a folder where the file belongs
    else:
        record.write_bytes(content)
    jobs = {job["id"]: job for job in store.jobs()}
    assert jobs["good"]["state"] == "done" and jobs["good"]["ingested"] == 1 and jobs["good"]["failed"] == 1
    bad = jobs["bad"]
    assert bad["state"] == "unreadable" and str(record) in bad["error"]
    assert {k: bad[k] for k in ("total", "ingested", "duplicate", "failed", "pending")} == dict.fromkeys(
        ("total", "ingested", "duplicate", "failed", "pending"), 0)
    assert str(record) in caplog.text
    for call in (lambda: store.status("bad"), lambda: store.record("bad", "/c.wav", "ingested")):
        with pytest.raises(HarkError, match="^" + re.escape(f"{record}: ")):
            call()
    # Nothing rewrote what the operator has to look at.
    assert record.is_dir() if content is None else record.read_bytes() == content


def test_a_job_id_that_names_another_file_is_no_job(tmp_path):
    store = _two_jobs(tmp_path)
    # A file outside jobs/ that happens to look like a job record is still not one.
    (tmp_path / "deadletter.json").write_text(json.dumps({"meta": {"id": "x", "collection": "c", "total": 0},
                                                          "files": {}}))
    for job_id in ("../deadletter", "", ".hidden", "a/b"):
        with pytest.raises(KeyError):
            store.status(job_id)


@pytest.mark.parametrize("content", [*BROKEN_LISTS, None])
def test_a_broken_dead_letter_list_is_an_error_naming_the_file_and_is_never_rewritten(tmp_path, content):
    store = FileJobStore(tmp_path)
    listing = tmp_path / "deadletter.json"
    if content is None:
        listing.mkdir()
    else:
        listing.write_bytes(content)
    entry = dead_letter_entry("j", "/x.wav", "not audio", "songs", "/bundles/v1")
    for call in (store.dead_letters, lambda: store.dead_letter(entry), lambda: store.clear_dead_letters({"a"})):
        with pytest.raises(HarkError, match="^" + re.escape(f"{listing}: ")):
            call()
    assert listing.is_dir() if content is None else listing.read_bytes() == content


def test_a_good_dead_letter_list_still_round_trips(tmp_path):
    store = FileJobStore(tmp_path)
    first = dead_letter_entry("j", "/x.wav", "not audio", "songs", "/bundles/v1", {"k": "v"})
    second = dead_letter_entry("j", "/y.wav", "empty", "songs", "/bundles/v1")
    store.dead_letter(first)
    store.dead_letter(second)
    assert [e["path"] for e in store.dead_letters()] == ["/x.wav", "/y.wav"]
    store.clear_dead_letters({first["id"]})
    assert store.dead_letters() == [second]
    assert json.loads((tmp_path / "deadletter.json").read_text()) == {second["id"]: second}


@pytest.fixture
def cli_state(tmp_path, monkeypatch):
    for name in ("HARK_BROKER_URL", "HARK_QDRANT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HARK_CONFIG", str(tmp_path / "hark.toml"))
    monkeypatch.setenv("HARK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HARK_QDRANT_PATH", str(tmp_path / "qdrant"))
    return tmp_path / "state"


def test_jobs_and_failed_commands_with_broken_state_files(cli_state, capsys):
    from hark.cli import main

    store = _two_jobs(cli_state)
    store.dead_letter(dead_letter_entry("good", "/b.wav", "not audio", "songs", "/bundles/v1"))
    (cli_state / "jobs" / "bad.json").write_text("{bad")
    assert main(["jobs", "--json"]) == 1  # listed, but a script must learn that a record is broken
    captured = capsys.readouterr()
    listed = {job["id"]: job["state"] for job in json.loads(captured.out)}
    assert listed == {"good": "done", "bad": "unreadable"}
    assert captured.err.strip().startswith("hark: job bad: ") and "bad.json" in captured.err
    assert main(["jobs"]) == 1
    out = capsys.readouterr().out
    assert "good" in out and "unreadable" in out
    (cli_state / "jobs" / "bad.json").unlink()
    assert main(["jobs"]) == 0
    capsys.readouterr()
    (cli_state / "jobs" / "bad.json").write_text("{bad")
    assert main(["jobs", "bad"]) == 2
    assert main(["jobs", "good"]) == 0
    capsys.readouterr()
    listing = cli_state / "deadletter.json"
    for content in ("{bad", '{"a": 1}', "[]"):
        listing.write_text(content)
        for argv in (["failed"], ["failed", "--retry"]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"hark: error: {listing}: ") and "\n" not in err, err
        assert listing.read_text() == content
