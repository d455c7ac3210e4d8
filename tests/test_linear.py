"""The linear model (training/linear.py, `hark linear`): it retrieves, its features ignore what should not matter,
its file round-trips and is checked, and distillation takes it as a teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hark.training.config import load_config  # noqa: E402
from hark.training.data.formats import load_split  # noqa: E402
from hark.training.linear import LinearModel, fit_linear, power_features  # noqa: E402
from hark.training.metrics import retrieval_metrics  # noqa: E402


@pytest.fixture(scope="module")
def linear(corpus, tmp_path_factory):
    """(model, file) fitted on the shared corpus' development split (two of its files are broken)."""
    model = fit_linear(load_split([corpus], "development"), load_config("tiny").audio)
    return model, model.save(tmp_path_factory.mktemp("linear") / "linear.npz")


def test_it_retrieves_held_out_clips_and_its_file_round_trips(linear, corpus):
    model, path = linear
    scores, targets, kept = model.split_scores(load_split([corpus], "validation"))
    found = retrieval_metrics(scores, targets)["mAP@10"]
    chance = 100 * np.mean([sum(1 / r for r in range(1, 11)) / len(kept)])
    assert found > 3 * chance, (found, chance)
    assert model.scale > 0
    again = LinearModel.load(path)
    assert np.allclose(again.split_scores(load_split([corpus], "validation"))[0], scores)


def test_features_ignore_gain_and_silent_padding():
    rng = np.random.default_rng(0)
    power = torch.from_numpy(rng.gamma(4.0, 1.0, size=(1, 16, 50))).float()
    base = power_features(power, torch.tensor([50]))[0]
    louder = power_features(power * 4.0, torch.tensor([50]))[0]
    # Everything but the level (the last feature) is unchanged by a gain (up to the log's 1e-5 floor); the level
    # moves by log(4).
    assert np.allclose(base[:-1], louder[:-1], atol=1e-3)
    assert not np.allclose(base[:-1], power_features(power ** 2, torch.tensor([50]))[0][:-1], atol=1e-3)
    assert louder[-1] - base[-1] == pytest.approx(np.log(4.0), abs=1e-3)
    # A leading delay (zero frames) and zero padding beyond the row's frames change nothing.
    delayed = torch.nn.functional.pad(power, (7, 0))
    padded = torch.nn.functional.pad(power, (0, 9))
    assert np.allclose(power_features(delayed, torch.tensor([57]))[0], base, atol=1e-6)
    assert np.allclose(power_features(padded, torch.tensor([50]))[0], base, atol=1e-6)


def test_a_training_batch_scores_as_its_clips_do(linear, corpus):
    """Waveform batches (padded to the longest clip) and mel-power batches score as the clips alone do."""
    model, _ = linear
    examples = load_split([corpus], "validation")[:3]
    _, _, kept = model.split_scores(examples)
    from hark.audio import decode_audio

    clips = [decode_audio(ex.audio_path) for ex in kept]
    captions = [ex.captions[0] for ex in kept]
    alone = model.scores_from_features(captions, model.wave_features(clips))
    lengths = torch.tensor([len(c) for c in clips])
    wave = torch.zeros(len(clips), int(lengths.max()))
    for row, clip in enumerate(clips):
        wave[row, :len(clip)] = torch.from_numpy(clip)
    from_wave = model.batch_scores({"waveform": wave, "lengths": lengths, "captions": captions}).numpy()
    assert np.allclose(from_wave, alone, atol=2e-2), (from_wave, alone)
    powers = [model.front_end().power(torch.from_numpy(c)[None])[0] for c in clips]
    frames = torch.tensor([p.shape[1] for p in powers])
    mel = torch.zeros(len(clips), powers[0].shape[0], int(frames.max()))
    for row, p in enumerate(powers):
        mel[row, :, :p.shape[1]] = p
    from_mel = model.batch_scores({"mel_power": mel, "frames": frames, "captions": captions}).numpy()
    assert np.allclose(from_mel, alone, atol=1e-4)
    assert np.argmax(from_mel, axis=1).tolist() == np.argmax(alone, axis=1).tolist()


def test_training_pairs_are_scored_by_a_fit_that_did_not_see_them(linear, corpus):
    """Cross-fitting: a batch naming development clips gets each entry from the projection fitted without the
    folds of its caption's and its clip's clips; a batch without names (or of unknown clips) gets the full fit."""
    model, path = linear
    folds = model.config.folds
    assert len(model.folds) == folds * (folds + 1) // 2
    examples = [ex for ex in load_split([corpus], "development") if f"{ex.source}:{ex.audio_id}" in model.clip_folds]
    by_fold = {}
    for ex in examples:
        by_fold.setdefault(model.clip_folds[f"{ex.source}:{ex.audio_id}"], ex)
    picked = [by_fold[f] for f in sorted(by_fold)][:3]
    assert len(picked) == 3  # three clips of three different folds
    from hark.audio import decode_audio

    features = model.wave_features([decode_audio(ex.audio_path) for ex in picked])
    powers = [model.front_end().power(torch.from_numpy(decode_audio(ex.audio_path))[None])[0] for ex in picked]
    frames = torch.tensor([p.shape[1] for p in powers])
    mel = torch.zeros(3, powers[0].shape[0], int(frames.max()))
    for row, p in enumerate(powers):
        mel[row, :, :p.shape[1]] = p
    captions = [ex.captions[0] for ex in picked]
    named = {"mel_power": mel, "frames": frames, "captions": captions, "audio_ids": [ex.audio_id for ex in picked],
             "sources": [ex.source for ex in picked], "caption_audio_index": torch.arange(3)}
    scores = model.batch_scores(named).numpy()
    text = model.text_features(captions)
    fold = [model.clip_folds[f"{ex.source}:{ex.audio_id}"] for ex in picked]
    for i in range(3):
        for j in range(3):
            proj = model.folds[(min(fold[i], fold[j]), max(fold[i], fold[j]))]
            expected = model.scale * float((proj.text(text[i:i + 1]) @ proj.audio(features[j:j + 1]).T)[0, 0])
            assert scores[i, j] == pytest.approx(expected, abs=1e-3)
    unnamed = {k: v for k, v in named.items() if k not in ("audio_ids", "sources")}
    assert np.allclose(model.batch_scores(unnamed).numpy(), model.scores_from_features(captions, features),
                       atol=1e-3)
    assert not np.allclose(scores, model.scores_from_features(captions, features), atol=1e-3)
    assert np.allclose(LinearModel.load(path).batch_scores(named).numpy(), scores)


@pytest.mark.parametrize("content", [b"not a zip", None])
def test_a_file_that_is_not_a_linear_model_is_refused_by_name(tmp_path, content):
    path = tmp_path / "teacher.npz"
    if content is None:
        np.savez(path, meta=np.frombuffer(json.dumps({"format": "other"}).encode(), dtype=np.uint8))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="not a linear model file") as err:
        LinearModel.load(path)
    assert str(path) in str(err.value)


def test_fitting_needs_clips_with_captions(corpus):
    from hark.training.linear import LinearConfig

    examples = load_split([corpus], "development")
    broken = [ex for ex in examples if ex.audio_path.name.startswith("broken")]
    good = [ex for ex in examples if ex not in broken]
    assert broken
    with pytest.raises(ValueError, match="at least 8 decodable clips with captions; found 7"):
        fit_linear([*broken, *good[:7]], load_config("tiny").audio)
    with pytest.raises(ValueError, match="at least 2 decodable clips with captions; found 1"):
        fit_linear(good[:1], load_config("tiny").audio, LinearConfig(folds=0))
    for folds in (1, 2):  # with two folds the fit for a pair across them would have no data
        with pytest.raises(ValueError, match="out of range"):
            fit_linear(examples, load_config("tiny").audio, LinearConfig(folds=folds))
    small = fit_linear(good[:6], load_config("tiny").audio, LinearConfig(folds=3))
    assert len(small.folds) == 6 and all(np.isfinite(p.audio_proj).all() for p in small.folds.values())


def test_distillation_takes_a_linear_teacher(linear, trained_run, corpus, tmp_path):
    from hark.training.model import load_checkpoint
    from hark.training.objectives import DistillationObjective
    from hark.training.run import distill

    model, path = linear
    out, _ = trained_run
    student, _ = load_checkpoint(out / "best.pt")
    batch = {"waveform": 0.1 * torch.randn(2, 32000 * 11), "lengths": torch.full((2,), 32000 * 11),
             "captions": ["a dog barks", "rain falls"]}
    both = DistillationObjective(student, [student, model], 0.05, 1.0).teacher_scores(batch)
    alone = DistillationObjective(student, [student], 0.05, 1.0).teacher_scores(batch)
    assert torch.allclose(both, (alone + model.batch_scores(batch)) / 2, atol=1e-6)

    result = distill(out / "best.pt", [path, out / "best.pt"], [corpus], tmp_path / "kd",
                     overrides=["train.epochs=1", "train.warmup_epochs=0"], device="cpu", progress=False)
    record = json.loads((tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()[-1])
    assert result.epochs_run == 1 and np.isfinite(record["kd_cosine"])
    if load_checkpoint(out / "best.pt")[0].cfg.train.mel_cache:
        with pytest.raises(ValueError, match="another mel front end"):
            distill(out / "best.pt", [path], [corpus], tmp_path / "kd2", device="cpu", progress=False,
                    overrides=["train.epochs=1", "audio.n_mels=64"])


def test_the_command_fits_writes_and_refuses_to_overwrite(corpus, tmp_path, capsys):
    from hark.cli import main

    out = tmp_path / "lin.npz"
    assert main(["linear", "--data", str(corpus), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["out"] == str(out) and summary["val_mAP@10"] > 0 and out.is_file()
    assert main(["linear", "--data", str(corpus), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["linear", "--data", str(corpus), "--out", str(tmp_path / "lin.pt")]) == 2
    assert ".npz" in capsys.readouterr().err


def test_evaluate_scores_it_alone_and_in_an_ensemble(linear, trained_run, corpus, capsys):
    from hark.cli import main

    model, path = linear
    out, _ = trained_run
    split = ["--data", str(corpus), "--split", "validation", "--json"]
    assert main(["evaluate", "--checkpoint", str(path), *split]) == 0
    alone = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scores, targets, _ = model.split_scores(load_split([corpus], "validation"))
    assert alone["mAP@10"] == pytest.approx(retrieval_metrics(scores, targets)["mAP@10"], abs=0.01)
    assert main(["evaluate", "--checkpoint", str(path), "--checkpoint", str(out / "best.pt"), *split]) == 0
    both = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from hark.training.evaluate import score_split
    from hark.training.model import load_checkpoint

    neural = score_split(load_checkpoint(out / "best.pt")[0], load_split([corpus], "validation"), progress=False)
    expected = retrieval_metrics((scores + neural.scores["prediction"]) / 2, targets)["mAP@10"]
    assert both["mAP@10"] == pytest.approx(expected, abs=0.01)


def test_a_missing_or_foreign_teacher_file_is_one_line(trained_run, corpus, tmp_path, capsys):
    from hark.cli import main

    out, _ = trained_run
    (tmp_path / "foreign.npz").write_bytes(b"PK\x03\x04 not really")
    for teacher in (tmp_path / "missing.npz", tmp_path / "foreign.npz"):
        argv = ["distill", "--init", str(out / "best.pt"), "--teacher", str(teacher), "--data", str(corpus),
                "--out", str(tmp_path / "kd")]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"hark: error: {teacher}: not a linear model file") and "\n" not in err, err
        assert main(["evaluate", "--checkpoint", str(teacher), "--data", str(corpus)]) == 2
        assert "not a linear model file" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "clip_folds", "scale", "folds", "audio", "settings", "shape"])
def test_a_damaged_model_file_is_refused_by_name(linear, tmp_path, damage):
    from hark.training.linear import LinearModelError

    _, path = linear
    broken = tmp_path / "broken.npz"
    if damage == "truncated":
        broken.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    else:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(bytes(arrays["meta"]).decode())
        changes = {"clip_folds": ("clip_folds", []), "scale": ("scale", float("nan")), "folds": ("folds", [[0, 0]]),
                   "audio": ("audio", {"n_mels": 1}), "settings": ("config", {**meta["config"], "folds": "x"})}
        if damage == "shape":
            arrays["main.audio_proj"] = arrays["main.audio_proj"][:5]
        else:
            key, value = changes[damage]
            meta[key] = value
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        np.savez(broken, **arrays)
    with pytest.raises(LinearModelError) as err:
        LinearModel.load(broken)
    assert str(err.value).startswith(f"{broken}: ")
