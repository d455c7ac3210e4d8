"""Synthetic corpus: deterministic, learnable (events separable by simple spectral features), captions that
name exactly the events present, and on-disk layouts the loaders and the DCASE tooling can read."""

from __future__ import annotations

import ast
import csv
import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hark.audio import AudioDecodeError, decode_audio
from hark.demo import synth

SR = 32000


def _band_features(audio: np.ndarray) -> np.ndarray:
    """Mean log band energies (spectral shape) and their spread over time (temporal pattern)."""
    n = 512
    frames = audio[: len(audio) // n * n].reshape(-1, n)
    power = np.abs(np.fft.rfft(frames * np.hanning(n), axis=1)) ** 2
    freqs = np.fft.rfftfreq(n, 1 / SR)
    edges = np.geomspace(50, 12000, 17)
    bands = np.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in itertools.pairwise(edges)], 1)
    log_bands = np.log(bands + 1e-10)
    shape = log_bands.mean(0)
    return np.concatenate([shape - shape.max(), log_bands.std(0)])


def _centroid_accuracy(variant: str) -> float:
    """Leave-one-out nearest-centroid accuracy over 5 renderings of each event, on the band features."""
    names = list(synth.EVENTS)
    features, labels = [], []
    for k, name in enumerate(names):
        for r in range(5):
            scene = synth.make_scene(np.random.default_rng([3, k, r]), 2.5, SR, events=[name], variant=variant)
            features.append(_band_features(scene.audio))
            labels.append(k)
    x, y = np.array(features), np.array(labels)
    correct = 0
    for i in range(len(x)):
        others = np.arange(len(x)) != i
        centroids = np.stack([x[others & (y == k)].mean(0) for k in range(len(names))])
        correct += int(np.argmin(((centroids - x[i]) ** 2).sum(1)) == y[i])
    return correct / len(x)


def test_events_are_separable_by_simple_features():
    # If a nearest-centroid classifier on 32 hand-made numbers separates the events, a small network will.
    assert _centroid_accuracy("a") >= 0.9


@pytest.mark.parametrize(
    ("event", "lo", "hi"),
    [
        ("engine", 40, 400),
        ("siren", 650, 1600),
        ("bell", 1900, 3200),
        ("bird", 2900, 6200),
        ("dog", 450, 1000),
    ],
)
def test_event_energy_sits_in_its_band(event, lo, hi):
    scene = synth.make_scene(np.random.default_rng(5), 3.0, SR, events=[event])
    power = np.abs(np.fft.rfft(scene.audio)) ** 2
    freqs = np.fft.rfftfreq(len(scene.audio), 1 / SR)
    peak = freqs[np.argmax(power)]
    assert lo <= peak <= hi


def test_make_clip_is_deterministic_and_varies_with_seed():
    a1, e1 = synth.make_clip(np.random.default_rng(11), 2.0, SR)
    a2, e2 = synth.make_clip(np.random.default_rng(11), 2.0, SR)
    a3, _ = synth.make_clip(np.random.default_rng(12), 2.0, SR)
    np.testing.assert_array_equal(a1, a2)
    assert e1 == e2
    assert a1.dtype == np.float32 and a1.shape == (2 * SR,)
    assert not np.array_equal(a1, a3)
    assert 1 <= len(e1) <= 3 and set(e1) <= set(synth.EVENTS)
    assert np.abs(a1).max() <= 0.95 + 1e-6


def test_low_sample_rates_are_band_limited_not_aliased():
    # Bird chirps live above 4 kHz, so an 8 kHz rendering keeps almost none of their energy.
    birds = synth.make_scene(np.random.default_rng(2), 2.0, 8000, events=["bird"])
    engine = synth.make_scene(np.random.default_rng(2), 2.0, 8000, events=["engine"])
    assert len(birds.audio) == 16000
    assert np.sqrt(np.mean(birds.audio**2)) < 0.2 * np.sqrt(np.mean(engine.audio**2))


def test_sequence_scenes_have_ordered_non_overlapping_events():
    scene = synth.make_scene(np.random.default_rng(4), 6.0, SR, events=["dog", "siren", "rain"], arrangement="sequence")
    assert scene.onsets == sorted(scene.onsets)
    for end, next_start in zip(scene.offsets, scene.onsets[1:], strict=False):
        assert end <= next_start
    assert scene.offsets[-1] == pytest.approx(6.0, abs=1e-3)


@pytest.mark.parametrize("arrangement", ["mixed", "sequence", None])
@pytest.mark.parametrize("events", [["dog"], ["siren", "rain"], ["bell", "bird", "wind"]])
def test_captions_name_exactly_the_events(events, arrangement):
    rng = np.random.default_rng(0)
    captions = synth.captions_for(events, rng, 5, arrangement)
    assert len(captions) == 5
    assert len(set(captions)) == 5
    for caption in captions:
        assert caption[0].isupper() and caption.endswith(".")
        assert synth.events_in_caption(caption) == frozenset(events)
        if arrangement == "sequence":
            # Every sequence template names the events in the order they happen.
            lowered = caption.lower()
            positions = [min(lowered.find(c) for c in synth.EVENTS[e] if c in lowered) for e in events]
            assert positions == sorted(positions), caption


def test_caption_templates_use_temporal_words():
    rng = np.random.default_rng(1)
    seq = " ".join(synth.captions_for(["dog", "siren"], rng, 5, "sequence")).lower()
    mixed = " ".join(synth.captions_for(["dog", "siren"], rng, 5, "mixed")).lower()
    unknown = " ".join(synth.captions_for(["dog", "siren"], rng, 3)).lower()
    order_words = ("then", "afterwards", "before", "after")
    overlap_words = ("while", " as ", "same time", "meanwhile")
    assert any(w in seq for w in order_words)
    assert any(w in mixed for w in overlap_words)
    assert not any(w in mixed for w in order_words)
    assert not any(w in unknown for w in order_words + overlap_words)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


SMALL = {"development": 6, "validation": 2, "evaluation": 8}


def test_clotho_corpus_is_deterministic(tmp_path):
    synth.write_clotho_corpus(tmp_path / "a", SMALL, durations=(1.0, 2.0), seed=3)
    synth.write_clotho_corpus(tmp_path / "b", SMALL, durations=(1.0, 2.0), seed=3)
    synth.write_clotho_corpus(tmp_path / "c", SMALL, durations=(1.0, 2.0), seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_clotho_corpus_layout_formats_and_broken_files(tmp_path):
    formats = ("wav", "flac", "ogg", "mp3")
    rates = (22050, 44100, 48000)
    summary = synth.write_clotho_corpus(
        tmp_path,
        {"development": 12, "validation": 2, "evaluation": 4},
        durations=(1.0, 1.5),
        formats=formats,
        sample_rates=rates,
        channels=(1, 2),
        broken=4,
    )
    for split in ("development", "validation", "evaluation"):
        with open(tmp_path / f"clotho_captions_{split}.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]
        assert all(len(row) == 6 and all(row) for row in rows[1:])
        assert all((tmp_path / split / row[0]).is_file() for row in rows[1:])
    dev_files = summary["splits"]["development"]["files"]
    assert any("," in name for name in dev_files)  # quoting is exercised
    assert len(summary["broken"]) == 4 and set(summary["broken"]) <= set(dev_files)

    seen = set()
    mp3_ok = "MP3" in sf.available_formats()
    for i, name in enumerate(n for n in dev_files if n not in summary["broken"]):
        info = sf.info(tmp_path / "development" / name)
        expected_ext = formats[i % 4] if (formats[i % 4] != "mp3" or mp3_ok) else "wav"
        assert name.endswith(f".{expected_ext}")
        assert info.samplerate == rates[(i // 4) % 3]
        assert info.channels == (1, 2)[(i // 12) % 2]
        seen.add((expected_ext, info.samplerate))
        assert len(decode_audio(tmp_path / "development" / name)) > 0
    assert len(seen) == 12

    for name in summary["broken"]:
        with pytest.raises(AudioDecodeError):
            decode_audio(tmp_path / "development" / name)

    metadata = (tmp_path / "clotho_metadata_development.csv").read_bytes()
    assert "Frédéric".encode("iso-8859-1") in metadata
    with pytest.raises(UnicodeDecodeError):
        metadata.decode("utf-8")


def test_relevance_file_matches_event_sets(tmp_path):
    summary = synth.write_clotho_corpus(tmp_path, {"evaluation": 16}, durations=(1.0, 1.2), seed=1)
    events = {name: frozenset(evs) for name, evs in summary["events"]["evaluation"].items()}
    with open(summary["relevance"], newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["query", "audio_filenames"]
        rows = list(reader)
    with open(tmp_path / "clotho_captions_evaluation.csv", newline="", encoding="utf-8") as handle:
        captions = {row["file_name"]: [row[f"caption_{k}"] for k in range(1, 6)] for row in csv.DictReader(handle)}
    assert {row["query"] for row in rows} == {c for caps in captions.values() for c in caps}
    for row in rows:
        files = ast.literal_eval(row["audio_filenames"])
        assert isinstance(files, list) and files
        wanted = synth.events_in_caption(row["query"])
        assert set(files) == {name for name, evs in events.items() if evs == wanted}
    # With 16 clips and single-event scenes being common, some queries have several relevant files.
    assert any(len(ast.literal_eval(row["audio_filenames"])) > 1 for row in rows)


def test_other_writers_produce_their_layouts(tmp_path):
    ac = synth.write_audiocaps(tmp_path / "ac", {"train": 2, "test": 1}, duration=1.0)
    with open(tmp_path / "ac" / "test.csv", newline="") as handle:
        test_rows = list(csv.DictReader(handle))
    assert len(test_rows) == 10  # 1 clip + 1 missing, five captions each
    assert (tmp_path / "ac" / "audio" / "train" / f"{ac['splits']['train']['youtube_ids'][0]}.wav").is_file()

    wc = synth.write_wavcaps(tmp_path / "wc", n_clips=4, excluded=1)
    assert (tmp_path / "wc" / "json_files" / "FreeSound" / "fsd_final.json").is_file()
    assert wc["excluded"] == wc["ids"]["FreeSound"][:1]

    tc = synth.write_tacos(tmp_path / "tc", n_clips=4, test_clips=1)
    with open(tmp_path / "tc" / "annotations_strong.csv", newline="") as handle:
        strong = list(csv.DictReader(handle))
    assert list(strong[0]) == ["filename", "text", "onset", "offset"]
    assert all(float(r["onset"]) < float(r["offset"]) for r in strong)
    assert len(tc["development"]) == 3 and len(tc["test"]) == 1


# -- variant "b": other renderings, wording and seeds (for measuring generalisation) -------------------


def test_default_variant_is_unchanged_by_the_variant_parameter(tmp_path):
    synth.write_clotho_corpus(tmp_path / "implicit", SMALL, durations=(1.0, 2.0), seed=3)
    synth.write_clotho_corpus(tmp_path / "explicit", SMALL, durations=(1.0, 2.0), seed=3, variant="a")
    assert _digest(tmp_path / "implicit") == _digest(tmp_path / "explicit")


def test_variant_b_differs_in_sound_wording_and_seeds(tmp_path):
    a = synth.make_scene(np.random.default_rng(5), 3.0, SR, events=["siren"])
    b = synth.make_scene(np.random.default_rng(5), 3.0, SR, events=["siren"], variant="b")
    assert a.audio.shape == b.audio.shape and not np.allclose(a.audio, b.audio)
    clauses_a = {c for cs in synth.EVENTS.values() for c in cs}
    for events, arrangement in ((["dog"], "mixed"), (["siren", "rain"], "sequence"), (["bell", "bird", "wind"], None)):
        captions = synth.captions_for(events, np.random.default_rng(0), 5, arrangement, variant="b")
        for caption in captions:
            assert synth.events_in_caption(caption, variant="b") == frozenset(events)
            assert synth.events_in_caption(caption) == frozenset(), caption  # no default clause appears
            assert not any(c in caption.lower() for c in clauses_a)
    synth.write_clotho_corpus(tmp_path / "a", SMALL, durations=(1.0, 2.0), seed=3)
    synth.write_clotho_corpus(tmp_path / "b", SMALL, durations=(1.0, 2.0), seed=3, variant="b")
    synth.write_clotho_corpus(tmp_path / "b2", SMALL, durations=(1.0, 2.0), seed=3, variant="b")
    assert _digest(tmp_path / "b") == _digest(tmp_path / "b2")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "b")
    with pytest.raises(ValueError, match="unknown synthetic variant"):
        synth.make_scene(np.random.default_rng(0), 1.0, SR, variant="c")


def test_variant_b_sequence_captions_keep_order_and_events_stay_separable():
    captions = synth.captions_for(["dog", "siren"], np.random.default_rng(2), 4, "sequence", variant="b")
    for caption in captions:
        lowered = caption.lower()
        dog = min(lowered.find(c) for c in synth.EVENTS_B["dog"] if c in lowered)
        siren = min(lowered.find(c) for c in synth.EVENTS_B["siren"] if c in lowered)
        assert dog < siren, caption
    # The same nearest-centroid check as for the default renderings.
    assert _centroid_accuracy("b") >= 0.9


def test_write_audio_takes_a_string_path(tmp_path):
    import soundfile as sf

    from hark.demo.synth import write_audio

    written = write_audio(str(tmp_path / "clip.wav"), np.zeros(3200, np.float32), 32000)
    assert written == tmp_path / "clip.wav" and sf.info(str(written)).frames == 3200
