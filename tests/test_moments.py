"""Moments: sub-window layout, one-byte storage, span selection, and spans of a trained model over planted events."""

from __future__ import annotations

import numpy as np
import pytest

from hark.moments import MomentSpec, best_span, dequantize, event_times, order_agreement, quantize, span_iou

SPEC = MomentSpec(2.0, 2.0)


def test_sub_windows_cover_the_audio_and_never_start_past_it():
    assert SPEC.starts(10.0) == [0, 2, 4, 6, 8]
    assert SPEC.starts(11.0) == [0, 2, 4, 6, 8, 10]  # the last runs past the end, zero-padded
    assert SPEC.starts(0.5) == [0]
    assert SPEC.starts(30.0)[-1] == 28 and len(SPEC.starts(30.0)) == 15
    overlapping = MomentSpec(2.0, 1.0).starts(5.0)
    assert overlapping == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        MomentSpec(0.0, 1.0)


def test_one_byte_storage_keeps_each_rows_direction():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((15, 256)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    stored = quantize(rows)
    assert stored.min() >= 1 and stored.max() <= 255 and np.array_equal(stored, np.rint(stored))
    back = dequantize(stored)
    assert np.allclose(np.linalg.norm(back, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(back * rows, axis=1)) > 0.999
    # A silent sub-window (all zeros) survives as zeros, not NaN.
    zero = dequantize(quantize(np.zeros((1, 8), np.float32)))
    assert np.array_equal(zero, np.zeros((1, 8), np.float32))


def test_best_span_widens_over_a_plateau_and_stays_short_for_a_peak():
    plateau = np.array([0.1, 0.1, 0.8, 0.85, 0.8, 0.1, 0.1, 0.1])
    assert best_span(plateau, SPEC, 16.0) == (4.0, 10.0)
    peak = np.array([0.1, 0.2, 0.1, 0.9, 0.3, 0.1])
    assert best_span(peak, SPEC, 12.0) == (6.0, 8.0)
    # keep=0 takes every contiguous sub-window at or above the median; keep=1 the best one alone.
    assert best_span(plateau, SPEC, 16.0, keep=1.0) == (6.0, 8.0)
    # The end never passes the audio, and NaN scores never win.
    assert best_span(np.array([0.1, 0.2, 0.9]), SPEC, 5.0) == (4.0, 5.0)
    assert best_span(np.array([np.nan, 0.2, 0.1]), SPEC, 6.0) == (2.0, 4.0)
    with pytest.raises(ValueError):
        best_span(np.array([]), SPEC, 1.0)
    with pytest.raises(ValueError):
        best_span(plateau, SPEC, 16.0, keep=1.5)


def test_span_iou():
    assert span_iou((0, 4), (2, 6)) == pytest.approx(2 / 6)
    assert span_iou((0, 2), (3, 5)) == 0.0
    assert span_iou((1, 3), (1, 3)) == 1.0


@pytest.mark.slow
def test_spans_of_the_trained_model_find_planted_events(bundle_dir):
    """Through the exported bundle (moments graph as stored, text graph's sentence vector): each event of a
    held-out sequence clip, queried by its clause, gets a span overlapping it (IoU >= 0.5) far more often than
    the whole window does."""
    from hark.bundle import Bundle
    from hark.demo.spans import planted_clips, span_quality

    result = span_quality(Bundle.load(bundle_dir), planted_clips("a", 24, seed=5))
    assert result["queries"] >= 48
    assert result["iou50_share"] >= result["whole_window"]["iou50_share"] + 0.25, result


def test_event_times_and_order_agreement():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((16, 16)))[0][:3]  # three orthonormal event vectors
    rows = np.zeros((6, 16))
    rows[1], rows[4] = basis[0], basis[1]  # event 0 at 2-4 s, event 1 at 8-10 s
    rows[[0, 2, 3, 5]] = basis[2]
    times = event_times(rows, basis[:2], SPEC)
    assert times[0] == pytest.approx(3.0, abs=0.05) and times[1] == pytest.approx(9.0, abs=0.05)
    assert order_agreement(times, SPEC) == pytest.approx(1.0)
    assert order_agreement(times[::-1], SPEC) == pytest.approx(-1.0)
    assert order_agreement(np.array([3.0, 3.5]), SPEC) == pytest.approx(0.25)
    assert order_agreement(np.array([3.0]), SPEC) == 0.0


@pytest.mark.slow
def test_order_through_moments_tells_a_then_b_from_b_then_a(bundle_dir):
    """Through the bundle, as `hark search` scores: on generated clips where A precedes B, "A <then> B" (every
    sequence template of the generator) outscores "B <then> A" well above chance once the order term is added."""
    from hark.bundle import Bundle
    from hark.demo.spans import ProductScorer, order_accuracy, swapped_pairs

    bundle = Bundle.load(bundle_dir)
    weight = bundle.fusion["order"]
    assert weight > 0
    result = order_accuracy(ProductScorer(bundle), swapped_pairs("a", 24, seed=11), [0.0, weight])
    with_order, without = result[f"fused+{weight:g}*order"], result["fused+0*order"]
    assert with_order >= 0.75 and with_order >= without + 0.1, result


def test_encoding_without_moments_leaves_them_out_and_the_other_vectors_alone(bundle_dir):
    """Re-index verification only recomputes `global`: it asks for no moments, and gets the same vectors."""
    from hark.bundle import Bundle
    from hark.plugin.encoders import AudioEncoder

    encoder = AudioEncoder(Bundle.load(bundle_dir), "cpu")
    wave = (0.1 * np.random.default_rng(2).standard_normal(7 * 32000)).astype(np.float32)
    full = encoder.encode_windows([wave])[0]
    plain = encoder.encode_windows([wave], with_moments=False)[0]
    assert full.moments is not None and len(full.moments) == 4 and plain.moments is None
    np.testing.assert_array_equal(plain.global_, full.global_)
    np.testing.assert_array_equal(plain.rows, full.rows)


def test_moment_and_order_settings_are_checked():
    pytest.importorskip("torch")
    from hark.training.config import ConfigError, load_config

    assert load_config("tiny", []).audio.moment_seconds == 2.0
    assert load_config("tiny", ["audio.moment_seconds=0"]).audio.moment_seconds == 0
    with pytest.raises(ConfigError, match="moment_seconds"):
        load_config("tiny", ["audio.moment_seconds=-1"])
    with pytest.raises(ConfigError, match="fusion_order"):
        load_config("tiny", ["heads.fusion_order=-0.2"])
