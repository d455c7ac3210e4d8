"""The `hark` command line: help, JSON output, one-line errors, and the train/evaluate/export commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hark.cli import build_parser, main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_explains_itself():
    parser = build_parser()
    help_text = parser.format_help()
    for command in ("configs", "train", "distill", "evaluate", "export", "bundle"):
        assert command in help_text
    sub = {a.dest: a for a in parser._actions if a.dest == "command"}["command"]
    train_help = sub.choices["train"].format_help()
    assert "--data" in train_help and "--out" in train_help and "section.field=value" in train_help
    evaluate_help = sub.choices["evaluate"].format_help()
    for flag in ("--checkpoint", "--scores", "--split", "--relevance", "--json"):
        assert flag in evaluate_help


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "hark.cli", "configs", "--json"], capture_output=True, text=True,
                          check=True)
    assert "tiny" in json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv, message", [
    (["train", "tiny", "--data", "/no/such/folder", "--out", "OUT"], "/no/such/folder"),
    (["train", "no-such-config", "--data", ".", "--out", "OUT"], "no config named"),
    (["train", "tiny", "--data", ".", "--out", "OUT", "train.nope=1"], "no field 'nope'"),
    (["evaluate", "--data", ".", "--split", "evaluation"], "either --checkpoint"),
    (["bundle", "verify", "/no/such/bundle"], "bundle folder not found"),
    (["distill", "--config", "no-such-config", "--teacher", "t.pt", "--data", ".", "--out", "OUT"], "no config named"),
    (["distill", "--config", "tiny", "--teacher", "/no/such/teacher.pt", "--data", ".", "--out", "OUT"],
     "/no/such/teacher.pt"),
    # Each of these was a traceback, or (epochs=-1) "trained 0 epochs" with exit status 0.
    (["train", "tiny", "--data", ".", "--out", "OUT", "train.epochs=abc"], "train.epochs must be an integer"),
    (["train", "tiny", "--data", ".", "--out", "OUT", "train.lr=-1"], "train.lr must be > 0"),
    (["train", "tiny", "--data", ".", "--out", "OUT", "train.epochs=-1"], "train.epochs must be > 0"),
    (["train", "tiny", "--data", ".", "--out", "OUT", "heads.cosine=2"], "heads.cosine must be true or false"),
    (["train", "BINARY", "--data", ".", "--out", "OUT"], "not a config"),
    (["train", "tiny", "--data", ".", "--out", "FILE"], "is a file, not a folder"),
    (["report", "BADRUN"], "'epoch' must be a number"),
    # A name the bundle's manifest refuses: the export after training failed its own verify.
    (["train", "tiny", "--data", ".", "--out", "OUT", "name=my model/1"], "name 'my model/1' must be"),
])
def test_bad_input_gives_one_error_line(capsys, tmp_path, argv, message):
    (tmp_path / "binary.pt").write_bytes(bytes(range(256)))
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "badrun").mkdir()
    (tmp_path / "badrun" / "metrics.jsonl").write_text('{"epoch": "x", "loss": 1.0}\n')
    names = {"OUT": "out", "BINARY": "binary.pt", "FILE": "a-file", "BADRUN": "badrun"}
    argv = [str(tmp_path / names[a]) if a in names else a for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hark: error:") and message in lines[0], err


def test_malformed_score_file_is_one_error_line(capsys, corpus, tmp_path):
    bad = tmp_path / "scores.csv"
    bad.write_text("query,a.wav\nsome caption,not-a-number\n")
    code, _, err = run(capsys, "evaluate", "--scores", str(bad), "--data", str(corpus), "--split", "evaluation")
    assert code == 2 and str(bad) in err and len(err.strip().splitlines()) == 1


def test_evaluate_checkpoint_and_score_file_agree(capsys, trained_run, corpus, tmp_path):
    pytest.importorskip("torch")
    out, _ = trained_run
    scores = tmp_path / "scores.csv"
    relevance = corpus / "relevance_evaluation.csv"
    code, stdout, _ = run(capsys, "evaluate", "--checkpoint", str(out), "--data", str(corpus), "--split",
                          "evaluation", "--relevance", str(relevance), "--write-scores", str(scores), "--json",
                          "--quiet")
    assert code == 0
    from_checkpoint = json.loads(stdout.strip().splitlines()[-1])
    assert {"R@1", "R@5", "R@10", "mAP@10", "mAP@16"} <= set(from_checkpoint)
    code, stdout, _ = run(capsys, "evaluate", "--scores", str(scores), "--data", str(corpus), "--split",
                          "evaluation", "--relevance", str(relevance), "--json")
    assert code == 0
    from_file = json.loads(stdout.strip().splitlines()[-1])
    for key in ("R@1", "R@5", "R@10", "mAP@10", "mAP@16"):
        assert from_file[key] == pytest.approx(from_checkpoint[key], abs=0.2), key
    # Two checkpoints are evaluated as an ensemble.
    code, stdout, _ = run(capsys, "evaluate", "--checkpoint", str(out / "best.pt"), "--checkpoint",
                          str(out / "last.pt"), "--data", str(corpus), "--json", "--quiet")
    assert code == 0 and "mAP@10" in json.loads(stdout.strip().splitlines()[-1])


def test_export_and_verify_commands(capsys, trained_run, tmp_path):
    pytest.importorskip("torch")
    bundle = tmp_path / "bundle"
    code, stdout, _ = run(capsys, "export", str(trained_run[0]), "--out", str(bundle), "--json")
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["ok"]
    code, stdout, _ = run(capsys, "bundle", "verify", str(bundle))
    assert code == 0 and stdout.startswith("OK")
    code, _, err = run(capsys, "export", str(trained_run[0]), "--out", str(bundle))
    assert code == 2 and "not empty" in err
    # --overwrite replaces an earlier bundle only: it emptied any folder, the run being exported included.
    victim = tmp_path / "notes"
    victim.mkdir()
    (victim / "data.txt").write_text("keep me")
    code, _, err = run(capsys, "export", str(trained_run[0]), "--out", str(victim), "--overwrite")
    assert code == 2 and "not a bundle folder" in err and (victim / "data.txt").read_text() == "keep me"
    code, _, err = run(capsys, "export", str(trained_run[0]), "--out", str(trained_run[0]), "--overwrite")
    assert code == 2 and "holds the checkpoint" in err and (trained_run[0] / "best.pt").is_file()


def test_ingest_arguments_are_checked_before_anything_is_queued(capsys, tmp_path):
    from hark.cli.common import parse_meta

    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF")
    code, _, err = run(capsys, "ingest", str(clip), "--collection", "a/b")  # failed file by file before
    assert code == 2 and "--collection: invalid collection name 'a/b'" in err
    code, _, err = run(capsys, "ingest", str(clip), "--meta", "x=" + "[" * 5000 + "]" * 5000)  # a RecursionError
    assert code == 2 and "nested too deeply" in err
    # NaN and Infinity are not values a store takes: they stay the text that was written.
    assert parse_meta(["a=NaN", "b=-Infinity", "c=1.5", "d=[1, 2]"]) == {"a": "NaN", "b": "-Infinity", "c": 1.5,
                                                                          "d": [1, 2]}


def test_a_server_that_is_down_is_one_error_line(capsys, monkeypatch, tmp_path):
    """Redis or Qdrant refusing the connection printed the client library's traceback."""
    from hark.cli.main import service_error

    monkeypatch.setenv("HARK_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("HARK_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    code, _, err = run(capsys, "jobs")
    assert code == 2 and err.count("\n") == 1 and err.startswith("hark: error: Redis (HARK_BROKER_URL):"), err
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise RuntimeError("request failed") from inner
    except RuntimeError as outer:
        assert service_error(outer).startswith("cannot reach a server")
    assert service_error(ValueError("a bug")) is None  # anything else keeps its traceback
