"""Dataset loaders on generated corpora (broken and missing files included), format errors that name the
file, discovery of mixed folders, and the torch dataset/collate that skip undecodable audio."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hark.demo import synth
from hark.training.data.dataset import AudioCaptionDataset, collate
from hark.training.data.formats import (
    DatasetError,
    Example,
    discover,
    load_audiocaps,
    load_clotho,
    load_tacos,
    load_wavcaps,
)

SPLITS = {"development": 6, "validation": 2, "evaluation": 3}


@pytest.fixture(scope="module")
def clotho_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("clotho")
    summary = synth.write_clotho_corpus(
        root, SPLITS, durations=(1.0, 2.0), formats=("wav", "flac", "mp3"), broken=4, seed=7
    )
    return root, summary


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    synth.write_clotho_corpus(root / "clotho", {"development": 3, "validation": 2}, durations=(1.0, 1.0))
    synth.write_audiocaps(root / "audiocaps", {"train": 2, "val": 1, "test": 1}, duration=1.0, missing=0)
    wavcaps = synth.write_wavcaps(root / "wavcaps", n_clips=4, excluded=1)
    tacos = synth.write_tacos(root / "tacos", n_clips=4, test_clips=1)
    return root, wavcaps, tacos


# ----------------------------------------------------------------------------------------------------
# Clotho


def test_clotho_splits_and_aliases(clotho_root):
    root, summary = clotho_root
    for split, alias in (("development", "train"), ("validation", "val"), ("evaluation", "test")):
        examples = load_clotho(root, split)
        assert [e.audio_id for e in examples] == summary["splits"][split]["files"]
        assert load_clotho(root, alias) == examples
        assert all(len(e.captions) == 5 and e.source == "clotho" for e in examples)
        assert all(e.audio_path == root / split / e.audio_id for e in examples)
    dev = {e.audio_id: e for e in load_clotho(root, "development")}
    for name, events in summary["events"]["development"].items():
        assert all(synth.events_in_caption(c) == frozenset(events) for c in dev[name].captions)


def test_clotho_missing_audio_is_reported_and_skipped(clotho_root, tmp_path, caplog):
    root, summary = clotho_root
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    gone = summary["splits"]["validation"]["files"]
    for name in gone:
        (copy / "validation" / name).unlink()
    with caplog.at_level(logging.WARNING):
        assert load_clotho(copy, "validation") == []
    message = " ".join(r.getMessage() for r in caplog.records)
    assert f"{len(gone)} listed audio file(s) not found" in message
    assert all(name in message for name in gone)
    assert "clotho_captions_validation.csv" in message


def test_clotho_latin1_captions(tmp_path):
    (tmp_path / "validation").mkdir()
    synth.write_audio(tmp_path / "validation" / "café.wav", np.zeros(3200, np.float32), 32000)
    text = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\ncafé.wav,a café door creaks,b,c,d,e\n"
    (tmp_path / "clotho_captions_validation.csv").write_bytes(text.encode("iso-8859-1"))
    (example,) = load_clotho(tmp_path, "validation")
    assert example.captions[0] == "a café door creaks"
    assert example.audio_id == "café.wav"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("name,caption_1\nx.wav,hello\n", "lacks column(s) file_name"),
        ('file_name,caption_1\nx.wav,"unterminated\n', "line 2"),
        ("file_name,caption_1\nx.wav,a,b\n", "line 2: expected 2 fields, found 3"),
        ("", "empty file"),
    ],
)
def test_malformed_clotho_csv_names_the_file(tmp_path, content, fragment):
    (tmp_path / "development").mkdir()
    csv_path = tmp_path / "clotho_captions_development.csv"
    csv_path.write_text(content)
    with pytest.raises(DatasetError) as info:
        load_clotho(tmp_path, "development")
    assert str(csv_path) in str(info.value)
    assert fragment in str(info.value)


def test_missing_clotho_files_and_folders(tmp_path):
    with pytest.raises(DatasetError, match=r"clotho_captions_evaluation\.csv"):
        load_clotho(tmp_path, "evaluation")
    (tmp_path / "clotho_captions_evaluation.csv").write_text("file_name,caption_1\n")
    with pytest.raises(DatasetError, match="audio folder"):
        load_clotho(tmp_path, "evaluation")
    with pytest.raises(DatasetError, match="unknown split"):
        load_clotho(tmp_path, "holdout")


# ----------------------------------------------------------------------------------------------------
# AudioCaps


def test_audiocaps(tmp_path, caplog):
    summary = synth.write_audiocaps(tmp_path, {"train": 3, "val": 2, "test": 2}, duration=1.0, missing=1)
    with caplog.at_level(logging.WARNING):
        train = load_audiocaps(tmp_path, "development")
        test = load_audiocaps(tmp_path, "evaluation")
    assert [e.audio_id for e in train] == summary["splits"]["train"]["youtube_ids"]
    assert train[0].audio_id.startswith("-")
    assert all(len(e.captions) == 1 for e in train)
    assert all(len(e.captions) == 5 and e.source == "audiocaps" for e in test)
    message = " ".join(r.getMessage() for r in caplog.records)
    for split in ("train", "test"):
        (missing,) = summary["splits"][split]["missing"]
        assert f"{split}.csv: 1 listed audio file(s) not found, skipped: {missing}" in message

    # Other common namings: Y-prefixed, another extension, under <split>/ instead of audio/<split>/.
    val = load_audiocaps(tmp_path, "val")
    ytid = val[0].audio_id
    (tmp_path / "val").mkdir()
    shutil.move(tmp_path / "audio" / "val" / f"{ytid}.wav", tmp_path / "val" / f"Y{ytid}.flac")
    moved = load_audiocaps(tmp_path, "validation")
    assert [e.audio_id for e in moved] == [ytid]
    assert moved[0].audio_path.name == f"Y{ytid}.flac"


def test_audiocaps_bad_header(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "train.csv").write_text("youtube_id,caption\nabc,hello\n")
    with pytest.raises(DatasetError) as info:
        load_audiocaps(tmp_path, "train")
    assert "train.csv" in str(info.value) and "audiocap_id" in str(info.value)


# ----------------------------------------------------------------------------------------------------
# WavCaps


def test_wavcaps_with_exclusion_list(tmp_path):
    summary = synth.write_wavcaps(tmp_path, n_clips=8, excluded=2)
    examples = load_wavcaps(tmp_path)
    ids = {e.audio_id for e in examples}
    freesound = summary["ids"]["FreeSound"]
    assert ids == {f"FreeSound/{i}" for i in freesound[2:]} | {f"SoundBible/{i}" for i in summary["ids"]["SoundBible"]}
    assert all(e.audio_path.suffix == ".flac" and e.audio_path.is_file() for e in examples)

    # An explicit list overrides the file; an empty one keeps everything.
    assert len(load_wavcaps(tmp_path, exclude_ids=[])) == 8
    assert len(load_wavcaps(tmp_path, exclude_ids=[int(freesound[0])])) == 7
    id_file = tmp_path / "ids.json"
    id_file.write_text(json.dumps(freesound[:3]))
    assert len(load_wavcaps(tmp_path, exclude_ids=id_file)) == 5


def test_wavcaps_malformed_json_names_file_and_line(tmp_path):
    synth.write_wavcaps(tmp_path, n_clips=4)
    bad = tmp_path / "json_files" / "FreeSound" / "fsd_final.json"
    bad.write_text('{"data": [\n  {"id": "1", "caption": "x"},\n  {"id": 2 "caption": "y"}\n]}')
    with pytest.raises(DatasetError) as info:
        load_wavcaps(tmp_path)
    assert str(bad) in str(info.value) and "line 3" in str(info.value)

    bad.write_text(json.dumps({"data": [{"id": "1"}]}))
    with pytest.raises(DatasetError, match=r"data\[0\]: entry needs 'id' and 'caption'"):
        load_wavcaps(tmp_path)


# ----------------------------------------------------------------------------------------------------
# TACOS


def test_tacos_release_layout(tmp_path):
    summary = synth.write_tacos(tmp_path, n_clips=5, test_clips=2)
    train = load_tacos(tmp_path, "train")
    test = load_tacos(tmp_path, "evaluation")
    assert [e.audio_path.name for e in train] == summary["development"]
    assert [e.audio_path.name for e in test] == summary["test"]
    assert load_tacos(tmp_path, "val") == []
    assert all(len(e.captions) == 1 and e.source == "tacos" for e in train)
    strong = load_tacos(tmp_path, "train", captions="strong")
    assert [e.audio_id for e in strong] == [e.audio_id for e in train]
    for weak_example, strong_example in zip(train, strong, strict=True):
        assert synth.events_in_caption(weak_example.captions[0]) == frozenset().union(
            *(synth.events_in_caption(c) for c in strong_example.captions)
        )
    # Without split files every clip is development data.
    (tmp_path / "development_split.csv").unlink()
    (tmp_path / "test_split.csv").unlink()
    assert len(load_tacos(tmp_path, "train")) == 5
    assert load_tacos(tmp_path, "test") == []


def test_tacos_malformed(tmp_path):
    synth.write_tacos(tmp_path, n_clips=2, test_clips=1)
    (tmp_path / "annotations_weak.csv").write_text("file,text\na.mp3,hello\n")
    with pytest.raises(DatasetError, match=r"annotations_weak\.csv: line 1: header lacks column\(s\) filename"):
        load_tacos(tmp_path, "train")


# ----------------------------------------------------------------------------------------------------
# Discovery and relevance


def test_discover_mixed_folder(mixed_root):
    root, wavcaps, _tacos = mixed_root
    train = discover(root, "train")
    by_source: dict[str, list[Example]] = {}
    for e in train:
        by_source.setdefault(e.source, []).append(e)
    assert {k: len(v) for k, v in by_source.items()} == {
        "audiocaps": 2,
        "clotho": 3,
        "tacos": 3,
        "wavcaps": 4 - len(wavcaps["excluded"]),
    }
    val = discover(root, "validation")
    assert sorted({e.source for e in val}) == ["audiocaps", "clotho"]
    test = discover(root, "test")
    assert sorted({e.source for e in test}) == ["audiocaps", "tacos"]


@pytest.mark.parametrize(
    ("sub", "source"),
    [("clotho", "clotho"), ("audiocaps", "audiocaps"), ("wavcaps", "wavcaps"), ("tacos", "tacos")],
)
def test_discover_single_dataset_folder(mixed_root, sub, source):
    root = mixed_root[0]
    examples = discover(root / sub, "train")
    assert examples and {e.source for e in examples} == {source}


def test_discover_errors(tmp_path, mixed_root):
    with pytest.raises(DatasetError, match="data folder not found"):
        discover(tmp_path / "nope", "train")
    with pytest.raises(DatasetError, match="no known dataset layout"):
        discover(tmp_path, "train")
    with pytest.raises(DatasetError, match="no examples for split 'validation'"):
        discover(mixed_root[0] / "tacos", "validation")


def test_relevance_file(clotho_root, tmp_path):
    root, summary = clotho_root
    from hark.training.metrics import MetricsInputError, read_relevance

    relevance = read_relevance(root / "relevance_evaluation.csv")
    assert set().union(*relevance.values()) == set(summary["splits"]["evaluation"]["files"])
    bad = tmp_path / "rel.csv"
    bad.write_text("query,audio_filenames\nq1,\"['a.wav']\"\nq2,[a.wav\n")
    with pytest.raises(MetricsInputError, match=r"rel\.csv, line 3"):
        read_relevance(bad)


# ----------------------------------------------------------------------------------------------------
# Torch dataset and collate


def test_eval_dataset_skips_and_reports_broken_files_once(clotho_root, caplog):
    root, summary = clotho_root
    examples = load_clotho(root, "development")
    dataset = AudioCaptionDataset(examples, train=False)
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate)
    with caplog.at_level(logging.WARNING):
        seen = [audio_id for _ in range(2) for batch in loader for audio_id in batch["audio_ids"]]
    good = [n for n in summary["splits"]["development"]["files"] if n not in summary["broken"]]
    assert seen == good + good
    assert sorted(Path(p).name for p in dataset.failed) == sorted(summary["broken"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in summary["broken"]:
        assert sum(name in w for w in warnings) == 1


def test_collate_pads_and_maps_captions(clotho_root):
    root, _ = clotho_root
    examples = load_clotho(root, "evaluation")
    dataset = AudioCaptionDataset(examples, train=False)
    batch = collate([dataset[0], None, dataset[1]])
    lengths = [len(dataset[i]["waveform"]) for i in (0, 1)]
    assert batch["waveform"].dtype == torch.float32
    assert batch["waveform"].shape == (2, max(lengths))
    assert batch["lengths"].tolist() == lengths
    assert batch["lengths"].dtype == torch.long
    short = int(np.argmin(lengths))
    assert torch.all(batch["waveform"][short, lengths[short] :] == 0)
    assert batch["captions"] == list(examples[0].captions) + list(examples[1].captions)
    assert batch["caption_audio_index"].tolist() == [0] * 5 + [1] * 5
    assert batch["audio_ids"] == [examples[0].audio_id, examples[1].audio_id]
    empty = collate([None, None])
    assert empty["waveform"].shape == (0, 0) and empty["captions"] == []


def test_train_mode_crops_and_samples_one_caption(clotho_root):
    root, summary = clotho_root
    examples = [e for e in load_clotho(root, "development") if e.audio_id not in summary["broken"]]
    dataset = AudioCaptionDataset(examples, train=True, crop_seconds=0.5, seed=1)
    item = dataset[0]
    assert item["waveform"].shape == (16000,)
    assert len(item["captions"]) == 1 and item["captions"][0] in examples[0].captions
    again = dataset[0]
    assert torch.equal(item["waveform"], again["waveform"])  # same (seed, epoch, index): same crop
    crops, captions = set(), set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        item = dataset[0]
        crops.add(item["waveform"][:50].numpy().tobytes())
        captions.add(item["captions"][0])
    assert len(crops) > 1 and len(captions) > 1
    batch = collate([dataset[i] for i in range(3)])
    assert batch["waveform"].shape == (3, 16000)
    assert batch["caption_audio_index"].tolist() == [0, 1, 2]


def test_cache_returns_same_audio(clotho_root):
    root, _ = clotho_root
    examples = load_clotho(root, "evaluation")
    dataset = AudioCaptionDataset(examples, train=False, cache_size=1)
    first = dataset[0]["waveform"]
    examples[0].audio_path.rename(examples[0].audio_path.with_suffix(".moved"))
    try:
        assert torch.equal(dataset[0]["waveform"], first)  # served from the cache
        dataset[1]  # evicts item 0
        assert dataset[0] is None  # now it has to be decoded again, and the file is gone
    finally:
        examples[0].audio_path.with_suffix(".moved").rename(examples[0].audio_path)


def test_id_lists_normalise_ascii_numbers_and_keep_other_digits_as_text(tmp_path):
    """"²" and "٣" are digits to str.isdigit() but not numbers to int(): an exclusion list holding one raised."""
    from hark.training.data.formats import read_id_list

    path = tmp_path / "exclude.txt"
    path.write_text("00123\n²\n٣4\nabc.wav\n000\n" + "7" * 5000 + "\n", encoding="utf-8")
    assert read_id_list(path) == {"123", "²", "٣4", "abc", "0", "7" * 5000}  # 5000 digits: past int()'s limit


# ----------------------------------------------------------------------------------------------------
# Broken annotation files found by an adversarial probe (each failed before the fix in formats.py)


def _fsd(root: Path) -> tuple[Path, dict]:
    path = root / "json_files" / "FreeSound" / "fsd_final.json"
    return path, json.loads(path.read_text())


def test_wavcaps_audio_paths_cannot_leave_the_dataset_folder(tmp_path, caplog):
    """An entry's `audio` field named /etc/passwd (or ../../..) and training read it as that clip's audio."""
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"RIFF")
    root = tmp_path / "wavcaps"
    summary = synth.write_wavcaps(root, n_clips=4, excluded=0)
    path, data = _fsd(root)
    clip = summary["ids"]["FreeSound"][0]
    data["data"][0]["audio"] = str(secret)
    data["data"][1]["audio"] = "../secret.wav"
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        examples = load_wavcaps(root)
    assert all(e.audio_path.resolve().is_relative_to(root.resolve()) for e in examples)
    assert f"FreeSound/{clip}" in {e.audio_id for e in examples}  # found by its id instead
    assert "2 'audio' path(s) leading outside the dataset folder ignored" in caplog.text


def test_wavcaps_json_of_the_wrong_shape_or_captions_of_the_wrong_type_are_reported(tmp_path, caplog):
    root = tmp_path / "wavcaps"
    summary = synth.write_wavcaps(root, n_clips=8, excluded=0)
    path, data = _fsd(root)
    entries = data["data"]
    entries[0]["caption"] = 42
    entries[1]["caption"] = {"en": "a dog"}
    entries[2]["caption"] = ["a bell rings", ["nested"]]
    entries[3]["caption"] = "   "
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        examples = {e.audio_id: e for e in load_wavcaps(root)}
    fsd = summary["ids"]["FreeSound"]
    assert f"FreeSound/{fsd[0]}" not in examples and f"FreeSound/{fsd[1]}" not in examples  # was "42", "{'en': ...}"
    assert examples[f"FreeSound/{fsd[2]}"].captions == ("a bell rings",)
    assert "3 caption(s) that are not text" in caplog.text
    assert "3 clip(s) have only empty captions" in caplog.text
    caplog.clear()
    path.write_text(json.dumps({"Data": entries}))  # a misspelt key dropped the whole source without a word
    with caplog.at_level(logging.WARNING):
        load_wavcaps(root)
    assert f"{path}: not WavCaps data (no top-level 'data' list), skipped" in caplog.text


@pytest.mark.parametrize("where", ["wavcaps", "exclusion"])
def test_deeply_nested_json_is_a_dataset_error(tmp_path, where):
    root = tmp_path / "wavcaps"
    synth.write_wavcaps(root, n_clips=4, excluded=1)
    target = (_fsd(root)[0] if where == "wavcaps" else root / "excluded_ids.json")
    if where == "exclusion":
        (root / "dcase2025_task6_excluded_freesound_ids.csv").unlink()
    target.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetError, match="nested too deeply"):  # was a RecursionError
        load_wavcaps(root)


def test_exclusion_lists_in_other_shapes(tmp_path):
    root = tmp_path / "wavcaps"
    summary = synth.write_wavcaps(root, n_clips=8, excluded=0)
    fsd = summary["ids"]["FreeSound"]
    listed = root / "ids.json"
    listed.write_text(json.dumps({"ids": [int(fsd[0]), int(fsd[1])], "notes": ["from DCASE"]}))
    assert len(load_wavcaps(root, exclude_ids=listed)) == 6  # the dict's keys were excluded instead
    floats = root / "ids.csv"
    floats.write_text(f"sound_id\n{fsd[0]}.0\n")  # a spreadsheet's integers
    assert len(load_wavcaps(root, exclude_ids=floats)) == 7
    floats.write_text('sound_id\n"1\n' + "1\n" * 80_000)  # an unclosed quote: a csv.Error escaped
    with pytest.raises(DatasetError, match=r"ids\.csv: malformed CSV"):
        load_wavcaps(root, exclude_ids=floats)


def test_infinite_audiocaps_start_time_and_empty_captions(tmp_path, caplog):
    summary = synth.write_audiocaps(tmp_path, {"train": 3}, duration=1.0, missing=0)
    csv_path = tmp_path / "train.csv"
    lines = csv_path.read_text().splitlines()
    first = lines[1].split(",")
    first[2] = "inf"  # OverflowError in int(float("inf")) escaped
    last = lines[3].split(",")
    last[3] = " "
    csv_path.write_text("\n".join([lines[0], ",".join(first), lines[2], ",".join(last)]) + "\n")
    with caplog.at_level(logging.WARNING):
        examples = load_audiocaps(tmp_path, "train")
    ids = summary["splits"]["train"]["youtube_ids"]
    assert [e.audio_id for e in examples] == ids[:2]
    assert f"1 clip(s) have only empty captions, skipped: {ids[2]}" in caplog.text


def test_clotho_header_without_caption_columns(tmp_path):
    (tmp_path / "development").mkdir()
    (tmp_path / "clotho_captions_development.csv").write_text("file_name,text_1,text_2\na.wav,x,y\n")
    with pytest.raises(DatasetError, match="no caption columns"):  # 0 examples and a per-file warning before
        load_clotho(tmp_path, "development")


def test_tacos_split_names_that_match_no_annotation_are_reported(tmp_path, caplog):
    summary = synth.write_tacos(tmp_path, n_clips=3, test_clips=1)
    names = summary["development"]
    (tmp_path / "development_split.csv").write_text(
        "filename\n" + "".join(f"{n.rsplit('.', 1)[0]}\n" for n in names))  # ids without the extension
    with caplog.at_level(logging.WARNING):
        assert load_tacos(tmp_path, "train") == []
    assert f"{len(names)} name(s) of the train split match no annotated file" in caplog.text


def test_symlinked_subfolders_are_followed_once(tmp_path):
    """os.walk skipped linked folders: a WavCaps source whose JSON or audio folder is a link vanished in silence."""
    root = tmp_path / "wavcaps"
    summary = synth.write_wavcaps(root, n_clips=8, excluded=0)
    elsewhere = tmp_path / "disk2"
    elsewhere.mkdir()
    for sub in ("json_files/FreeSound", "audio/FreeSound"):
        moved = elsewhere / sub.replace("/", "_")
        shutil.move(root / sub, moved)
        (root / sub).symlink_to(moved, target_is_directory=True)
    (root / "audio" / "FreeSound" / "loop").symlink_to(root / "audio", target_is_directory=True)
    examples = load_wavcaps(root)
    assert {e.audio_id for e in examples} == {f"FreeSound/{i}" for i in summary["ids"]["FreeSound"]} | {
        f"SoundBible/{i}" for i in summary["ids"]["SoundBible"]}
