"""Execution-provider choice: CPU fallback without CUDA, decided once and without error spam."""

from __future__ import annotations

import pytest

from hark import onnx as hark_onnx


def test_auto_falls_back_to_cpu_quietly(bundle_dir, capfd, caplog):
    hark_onnx._resolved.clear()
    caplog.set_level("INFO", logger="hark.onnx")
    first = hark_onnx.create_session(bundle_dir / "clip.onnx", "auto")
    second = hark_onnx.create_session(bundle_dir / "text.onnx", "auto")
    if not hark_onnx._driver_present():
        assert first.get_providers() == second.get_providers() == ["CPUExecutionProvider"]
    captured = capfd.readouterr()
    assert "CUDAExecutionProvider" not in captured.err + captured.out
    # The choice is logged once per process, not per session.
    assert sum("providers" in r.message for r in caplog.records) == 1


def test_explicit_devices(bundle_dir):
    assert hark_onnx.create_session(bundle_dir / "clip.onnx", "cpu").get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="device must be"):
        hark_onnx.create_session(bundle_dir / "clip.onnx", "tpu")
    if not hark_onnx._driver_present():
        hark_onnx._resolved.pop("cuda", None)
        with pytest.raises(RuntimeError, match="cannot use CUDA"):
            hark_onnx.create_session(bundle_dir / "clip.onnx", "cuda")
