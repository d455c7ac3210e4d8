"""Training curves: `hark report` renders metrics.jsonl; training writes TensorBoard event files too."""

from __future__ import annotations

import json

import pytest

from hark.cli import main
from hark.training.report import ReportError, render, series


def _write_run(run, records):
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_draws_every_series_and_marks_the_best_epoch(tmp_path):
    run = tmp_path / "run"
    _write_run(run, [{"epoch": 1, "step": 10, "loss": 4.0, "val_mAP@10": 10.0},
                     {"epoch": 2, "step": 20, "loss": 3.0, "val_mAP@10": 30.0},
                     {"epoch": 3, "step": 30, "loss": 2.5, "val_mAP@10": 25.0}])
    page = render(run).read_text()
    assert page.count("<svg") == 2
    assert "best val_mAP@10 30.00 at epoch 2" in page
    assert "best: epoch 2, 30" in page


def test_a_resumed_run_counts_each_epoch_once(tmp_path):
    history = [{"epoch": 1, "loss": 4.0}, {"epoch": 2, "loss": 9.0}, {"epoch": 2, "loss": 3.0}]
    assert series(history)["loss"] == [(1.0, 4.0), (2.0, 3.0)]


def test_report_command_and_its_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "metrics.jsonl: not found" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{not json\n")
    with pytest.raises(ReportError, match="line 1: not JSON"):
        render(run)
    _write_run(run, [{"epoch": 1, "loss": 1.0}])
    assert main(["report", str(run), "--out", str(tmp_path / "r.html"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["report"].endswith("r.html")


@pytest.mark.slow
def test_training_writes_tensorboard_events_and_a_report(trained_run):
    run, _ = trained_run
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    page = render(run).read_text()
    assert "val_mAP@10" in page and "<polyline" in page
