"""Shared fixtures: a generated Clotho-layout corpus and one tiny model trained on it (session-wide)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Small, fixed thread pools keep timings stable on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")

TINY_OVERRIDES = ["train.epochs=4", "train.warmup_epochs=1"]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from hark.demo.synth import write_clotho_corpus

    root = tmp_path_factory.mktemp("corpus")
    write_clotho_corpus(root, n_clips={"development": 128, "validation": 32, "evaluation": 32},
                        durations=(10.0, 22.0), seed=1, formats=("wav", "flac", "ogg"),
                        sample_rates=(32000, 44100, 22050), channels=(1, 2), broken=2)
    return root


@pytest.fixture(scope="session")
def trained_run(corpus, tmp_path_factory):
    """(run folder, RunResult) of the tiny joint config trained on `corpus`."""
    pytest.importorskip("torch")
    from hark.training.config import load_config
    from hark.training.run import train

    out = tmp_path_factory.mktemp("run")
    cfg = load_config("tiny", TINY_OVERRIDES)
    result = train(cfg, [corpus], out, device="cpu", resume=False, progress=False)
    return out, result


@pytest.fixture(scope="session")
def bundle_dir(trained_run, tmp_path_factory) -> Path:
    """The trained tiny model exported with int8 encoder variants."""
    from hark.exporters.onnx_export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-int8"
    export_bundle(trained_run[0] / "best.pt", out, precision="int8")
    return out
