"""`train.mel_cache`: training from each clip's mel power, computed once, instead of the waveform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hark.demo.synth import make_scene, write_clotho_corpus
from hark.training.config import ConfigError, load_config
from hark.training.data.dataset import AudioCaptionDataset, Augment, collate
from hark.training.data.formats import load_split
from hark.training.loop import ClipPower
from hark.training.model import RetrievalModel
from hark.training.towers import build_tokenizer

HOP = 320


@pytest.fixture(scope="module")
def model() -> RetrievalModel:
    cfg = load_config("tiny", [])
    torch.manual_seed(0)
    return RetrievalModel(cfg, build_tokenizer(cfg.text, ["a dog barks", "a siren wails"] * 10)).eval()


def test_power_path_embeds_a_crop_as_the_waveform_path_does(model):
    rng = np.random.default_rng(3)
    wave = make_scene(rng, 25.0, 32000, events=["dog", "siren", "bell"], arrangement="sequence").audio
    power = ClipPower(model.audio.frontend)(wave.astype(np.float32))
    crop, start = 20 * 32000, 137  # a crop that starts mid-clip, in whole hops
    piece = torch.from_numpy(wave[start * HOP: start * HOP + crop].astype(np.float32))[None]
    with torch.no_grad():
        by_wave, wave_mask = model.audio(piece, torch.tensor([crop]))
        by_power, power_mask = model.audio.forward_power(power[:, start:start + crop // HOP][None],
                                                         torch.tensor([crop // HOP]))
        # Frame by frame: the two segments' log mels agree exactly but for the first two frames of each,
        # where the waveform path pads by reflection and the whole clip has real samples.
        mel_wave = model.audio.frontend(piece.reshape(2, crop // 2))[:, :, :998]
        cut = power[:, start:start + crop // HOP].reshape(128, 2, 1000).transpose(0, 1)
        mel_power = model.audio.frontend.log(cut)[:, :, :998]
    assert torch.equal(wave_mask, power_mask) and wave_mask.all()
    diff = (mel_wave - mel_power).abs()
    assert float(diff[:, :, 2:].max()) < 1e-4 and float(diff[:, :, :2].max()) > 0.01  # the edges do differ
    cosine = torch.nn.functional.cosine_similarity(by_wave[0], by_power[0], dim=-1)
    assert (cosine > 0.999).all(), cosine


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("melcorpus")
    write_clotho_corpus(root, n_clips={"development": 6, "validation": 2, "evaluation": 2}, durations=(3.0, 5.0),
                        seed=4)
    return load_split([root], "development")


def _dataset(examples, model, augment=None, mel=True):
    return AudioCaptionDataset(examples, train=True, crop_seconds=2.0, seed=1, augment=augment,
                               mel=ClipPower(model.audio.frontend) if mel else None, hop=HOP)


def test_mel_items_cut_crops_gain_and_delay_from_one_power_per_clip(model, corpus):
    calls = []
    plain = _dataset(corpus, model)
    plain.mel = lambda wave, f=plain.mel: (calls.append(1), f(wave))[1]
    augmented = _dataset(corpus, model, Augment(gain_db=6.0, shift_seconds=0.5))
    for epoch in range(3):
        plain.set_epoch(epoch)
        augmented.set_epoch(epoch)
        for i in range(len(corpus)):
            a, b = plain[i], augmented[i]
            assert a["mel_power"].shape[1] == 2 * 32000 // HOP  # clips are longer than the crop
            assert a["captions"] == b["captions"]  # augmentation draws after the crop and caption
            delay = b["mel_power"].shape[1] - a["mel_power"].shape[1]
            assert 0 <= delay <= 0.5 * 32000 // HOP and not b["mel_power"][:, :delay].any()
            ratio = b["mel_power"][:, delay:] / a["mel_power"].clamp_min(1e-12)
            big = a["mel_power"] > 1e-6
            gain = float(ratio[big].median())
            assert 10 ** (-12 / 20) - 1e-3 <= gain <= 10 ** (12 / 20) + 1e-3  # g^2, g within +-6 dB
            assert torch.allclose(ratio[big], torch.full_like(ratio[big], gain), rtol=1e-4)
    assert len(calls) == len(corpus)  # each clip's front end ran once, for three epochs
    batch = collate([plain[0], augmented[1]])
    assert batch["mel_power"].shape[0] == 2 and batch["frames"].tolist() == [
        plain[0]["mel_power"].shape[1], augmented[1]["mel_power"].shape[1]]
    assert batch["caption_audio_index"].tolist() == [0, 1]


def test_evaluation_items_keep_the_waveform(model, corpus):
    item = AudioCaptionDataset(corpus, train=False, mel=ClipPower(model.audio.frontend))[0]
    assert "waveform" in item and "mel_power" not in item


def test_mel_cache_refuses_waveform_mixing():
    with pytest.raises(ConfigError, match="mel_cache"):
        load_config("tiny", ["train.mel_cache=true", "train.mix_fraction=0.25"])


@pytest.mark.slow
def test_training_with_mel_cache_runs_and_resumes_exactly(tmp_path):
    from hark.training.run import train

    data = tmp_path / "data"
    write_clotho_corpus(data, n_clips={"development": 12, "validation": 4, "evaluation": 2}, durations=(2.0, 3.0),
                        seed=2)
    cfg = load_config("tiny", ["train.epochs=1", "train.warmup_epochs=1", "train.batch_size=4", "train.mel_cache=true",
                               "train.pairs_per_epoch=audio", "audio.max_segments=1", "audio.segment_seconds=1.0",
                               "audio.frames=98", "train.crop_seconds=1.0"])
    straight = train(cfg, [data], tmp_path / "straight", device="cpu", progress=False)
    train(cfg, [data], tmp_path / "resumed", device="cpu", progress=False, stop_after_steps=4)
    resumed = train(cfg, [data], tmp_path / "resumed", device="cpu", progress=False)
    assert resumed.epochs_run == straight.epochs_run == 2
    assert all(np.isfinite(h["loss"]) for h in straight.history)
    a = torch.load(tmp_path / "straight" / "last.pt", map_location="cpu", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", map_location="cpu", weights_only=True)["model"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_distillation_with_mel_cache_refuses_teachers_with_another_front_end(tmp_path):
    """The teachers read the student's cached power, so a teacher with other mel settings is named, before any
    training, rather than fed the wrong spectrogram."""
    from hark.training.run import distill

    cfg = load_config("tiny", ["audio.n_mels=64"])
    torch.manual_seed(0)
    teacher = RetrievalModel(cfg, build_tokenizer(cfg.text, ["a dog barks"] * 10))
    torch.save(teacher.checkpoint_payload(), tmp_path / "teacher.pt")
    student = load_config("tiny", ["train.mel_cache=true"])
    with pytest.raises(ValueError, match=r"teacher .*teacher\.pt has another mel front end"):
        distill(None, [tmp_path / "teacher.pt"], [tmp_path / "no-data"], tmp_path / "out", device="cpu",
                progress=False, config=student)


@pytest.mark.parametrize("samples", [1, 100, 513])
def test_a_clip_shorter_than_one_fft_frame_is_cached_like_any_other(model, tmp_path, samples):
    """A 3 ms click is valid audio. Its whole-clip power used to raise in the STFT's reflection padding (the clip
    is shorter than half an FFT frame), which stopped mel-cache training in the DataLoader."""
    import soundfile as sf

    from hark.training.data.formats import Example

    path = tmp_path / "click.wav"
    sf.write(path, np.full(samples, 0.5, dtype=np.float32), 32000)
    item = _dataset([Example(path, ("a click",), "click", "clotho")], model)[0]
    assert item["mel_power"].shape[0] == 128 and item["mel_power"].shape[1] >= 1
    assert torch.isfinite(item["mel_power"]).all() and float(item["mel_power"].sum()) > 0
    batch = collate([item])
    with torch.no_grad():
        segments, mask = model.audio.forward_power(batch["mel_power"], batch["frames"])
    assert mask.any() and torch.isfinite(segments).all()
