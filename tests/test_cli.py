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
])
def test_bad_input_gives_one_error_line(capsys, tmp_path, argv, message):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
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
