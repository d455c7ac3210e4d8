"""Fitted fusion: never below the better head on the split it was fitted on; recorded in the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hark.training.calibrate import GRID, fit_fusion
from hark.training.metrics import retrieval_metrics


def _problem(seed: int, n: int = 60):
    rng = np.random.default_rng(seed)
    targets = np.arange(n)
    truth = np.eye(n)
    # Two noisy heads with different, partly independent errors: a mix beats both.
    cos = truth + rng.normal(0, 0.6, (n, n))
    att = truth + rng.normal(0, 0.6, (n, n))
    return cos, att, targets


@pytest.mark.parametrize("seed", range(5))
def test_fusion_is_never_worse_than_the_better_head(seed):
    cos, att, targets = _problem(seed)
    found = fit_fusion(cos, att, targets)
    best_single = max(retrieval_metrics(cos, targets)["mAP@10"], retrieval_metrics(att, targets)["mAP@10"])
    assert found.validation["fused"] >= best_single - 1e-9
    assert found.validation["fused"] == pytest.approx(
        retrieval_metrics((1 - found.attention_weight) * cos + found.attention_weight * att, targets)["mAP@10"])
    assert sum(found.fusion.values()) == pytest.approx(1.0)


def test_a_useless_attention_head_turns_the_rerank_off():
    cos, _, targets = _problem(7)
    noise = np.random.default_rng(8).normal(size=cos.shape)
    found = fit_fusion(cos, noise, targets)
    assert found.attention_weight == 0.0 and found.rerank is False
    assert found.validation["fused"] == found.validation["cosine"]


def test_the_grid_must_hold_both_heads_alone():
    cos, att, targets = _problem(1)
    with pytest.raises(ValueError, match="both ends"):
        fit_fusion(cos, att, targets, grid=(0.25, 0.5))
    assert GRID[0] == 0.0 and GRID[-1] == 1.0


@pytest.mark.slow
def test_export_records_the_calibration(trained_run, corpus, tmp_path):
    from hark.bundle import Bundle
    from hark.exporters.onnx_export import export_bundle
    from hark.training.calibrate import calibrate_checkpoint

    calibration = calibrate_checkpoint(trained_run[0] / "best.pt", [corpus], "validation")
    assert calibration is not None
    val = calibration["validation"]
    assert val["fused"] >= max(val["cosine"], val["attention"]) - 1e-9
    out = export_bundle(trained_run[0] / "best.pt", tmp_path / "calibrated", calibration=calibration)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["validation"] == val
    # The heads' weights are the fitted ones; the order term's weight (moments) is the config's.
    assert manifest["heads"]["fusion"] == {**calibration["fusion"], "order": 0.2}
    bundle = Bundle.load(out)
    assert bundle.fusion == {**calibration["fusion"], "order": 0.2}
    assert bundle.rerank_by_default == calibration["rerank"]
