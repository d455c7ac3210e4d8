"""The small-data recipe's parts (augmentation, mixing, caption dropout) and distillation's pull."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hark.training.config import ConfigError, load_config  # noqa: E402
from hark.training.data.dataset import (  # noqa: E402
    ORDER_WORDS,
    AudioCaptionDataset,
    Augment,
    drop_words,
    mix_batch,
)
from hark.training.data.formats import Example  # noqa: E402
from hark.training.loop import SpecMasker  # noqa: E402


def test_word_dropout_keeps_order_words_and_at_least_one_word():
    rng = np.random.default_rng(0)
    caption = "A dog barks, then a siren wails before rain falls."
    for _ in range(50):
        out = drop_words(caption, 0.5, rng)
        words = [w.strip(",.").lower() for w in out.split()]
        assert [w for w in words if w in ORDER_WORDS] == ["then", "before"]
    assert drop_words("rain falls", 0.999, rng) in {"rain", "falls"}
    dropped = [len(drop_words("one two three four five six seven eight", 0.3, rng).split()) for _ in range(200)]
    assert 5.0 < np.mean(dropped) < 6.2  # about 70 % of 8 words stay


def test_mix_batch_joins_audio_captions_and_identities():
    wave = torch.stack([torch.full((100,), float(i + 1)) for i in range(4)])
    batch = {"waveform": wave, "lengths": torch.tensor([100, 60, 100, 100]),
             "captions": [f"Event {i}." for i in range(4)], "audio_ids": [f"c{i}" for i in range(4)],
             "sources": ["s"] * 4, "caption_audio_index": torch.arange(4)}
    out = mix_batch(batch, 0.5, torch.Generator().manual_seed(3))
    again = mix_batch(batch, 0.5, torch.Generator().manual_seed(3))
    assert out["captions"] == again["captions"]
    mixed = [i for i in range(4) if out["audio_ids"][i] != batch["audio_ids"][i]]
    assert len(mixed) == 2
    for i in mixed:
        j = int(out["audio_ids"][i].split("+c")[1])
        assert j != i and out["audio_ids"][i] == f"c{i}+c{j}"
        assert out["captions"][i] == f"Event {i} and event {j}."
        # The partner's audio is added at 0.5-1 of its level.
        extra = float(out["waveform"][i, 0]) - (i + 1)
        assert 0.5 * (j + 1) <= extra <= (j + 1) + 1e-6
        assert out["lengths"][i] == max(batch["lengths"][i], batch["lengths"][j])
    for i in set(range(4)) - set(mixed):
        assert torch.equal(out["waveform"][i], wave[i]) and out["captions"][i] == batch["captions"][i]
    assert len(set(out["audio_ids"])) == 4
    assert mix_batch(batch, 0.0, torch.Generator()) is batch


def test_spec_masker_masks_only_in_training():
    masker = SpecMasker(freq_masks=2, freq_width=8, time_masks=2, time_width=20)
    frontend = torch.nn.Identity()
    frontend.register_forward_hook(masker)
    mel = torch.ones(16, 128, 300)
    frontend.train()
    masked = frontend(mel)
    zero = masked == 0
    assert zero.any() and (zero.float().mean() < 0.35)
    # Frequency masks span whole rows, time masks whole columns.
    rows = zero.all(-1)
    cols = zero.all(-2)
    assert bool((zero == (rows[:, :, None] | cols[:, None, :])).all())
    assert (rows.sum(-1) <= 16).all() and (cols.sum(-1) <= 40).all()
    frontend.eval()
    assert torch.equal(frontend(mel), mel)
    assert not SpecMasker(0, 8, 0, 20).active


def test_item_augmentation_keeps_crop_and_caption(tmp_path):
    import soundfile as sf

    path = tmp_path / "clip.wav"
    sf.write(path, (0.1 * np.sin(np.arange(32000 * 3) / 10)).astype(np.float32), 32000)
    example = Example(path, ("A dog barks, then rain falls.", "Rain falls."), "clip", "test")
    plain = AudioCaptionDataset([example], train=True, crop_seconds=2.0, seed=1)
    augmented = AudioCaptionDataset([example], train=True, crop_seconds=2.0, seed=1,
                                    augment=Augment(gain_db=6.0, shift_seconds=0.5, word_dropout=0.0))
    for epoch in range(4):
        plain.set_epoch(epoch)
        augmented.set_epoch(epoch)
        a, b = plain[0], augmented[0]
        assert a["captions"] == b["captions"]
        delay = len(b["waveform"]) - len(a["waveform"])
        assert 0 <= delay <= 16000
        assert torch.equal(b["waveform"][:delay], torch.zeros(delay))
        ratio = float(b["waveform"][delay:].abs().sum() / a["waveform"].abs().sum())
        assert 10 ** (-6 / 20) - 1e-4 <= ratio <= 10 ** (6 / 20) + 1e-4


def test_augmentation_settings_are_validated():
    with pytest.raises(ConfigError, match="mix_fraction"):
        load_config("tiny", ["train.mix_fraction=1.5"])
    with pytest.raises(ConfigError, match="spec_"):
        load_config("tiny", ["train.spec_time_masks=-1"])
    report = load_config("passt-roberta-base").train
    # The report-size configs keep the report's recipe: no augmentation.
    assert (report.spec_freq_masks, report.spec_time_masks, report.gain_db, report.shift_seconds,
            report.mix_fraction, report.word_dropout) == (0, 0, 0.0, 0.0, 0.0, 0.0)
    # `tiny` takes the light part chosen by measurement (gain, delay: order-safe); the full recipe stays opt-in.
    tiny = load_config("tiny").train
    assert (tiny.gain_db, tiny.shift_seconds, tiny.spec_freq_masks, tiny.mix_fraction) == (6.0, 1.0, 0, 0.0)
    recipe = load_config("tiny-augment").train
    assert recipe.spec_freq_masks and recipe.spec_time_masks and recipe.mix_fraction and recipe.word_dropout


def _kd_gap(student, teacher_scores: torch.Tensor, batch: dict, tau: float) -> float:
    """Row and column KL(teacher || student) of the softmaxed score matrices (what distillation lowers)."""
    from hark.training.objectives import _encode, prediction

    student.eval()
    with torch.no_grad():
        pred = prediction(student, _encode(student, batch)) / tau
    target = teacher_scores / tau
    kl = 0.0
    for s, t in ((pred, target), (pred.T, target.T)):
        p = torch.softmax(t, -1)
        kl += float((p * (torch.log_softmax(t, -1) - torch.log_softmax(s, -1))).sum(-1).mean())
    return kl / 2


def test_distillation_pulls_the_student_towards_the_teachers_ensemble():
    # Three differently seeded teachers and a student; a few steps on one batch with the distillation
    # objective must bring the student's score matrix much closer to the teachers' average than the same
    # number of steps with the hard contrastive loss does.
    from hark.demo.synth import captions_for
    from hark.training.model import RetrievalModel
    from hark.training.objectives import ContrastiveObjective, DistillationObjective
    from hark.training.towers import build_tokenizer

    # One 1 s segment per clip keeps the test cheap (the audio tower costs scale with segment length).
    cfg = load_config("tiny", ["audio.max_segments=1", "audio.segment_seconds=1.0", "audio.frames=98"])
    rng = np.random.default_rng(0)
    names = ["dog", "siren", "rain", "bell", "bird", "engine", "speech", "wind"]
    captions = [captions_for([n], rng, 1)[0] for n in names]
    tokenizer = build_tokenizer(cfg.text, captions * 4)

    def model(seed: int) -> RetrievalModel:
        torch.manual_seed(seed)
        return RetrievalModel(cfg, tokenizer)

    torch.manual_seed(9)
    n = len(captions)
    batch = {"waveform": 0.1 * torch.randn(n, 32000), "lengths": torch.full((n,), 32000),
             "captions": captions, "audio_ids": names, "sources": ["t"] * n}
    teachers = [model(s).eval() for s in (1, 2, 3)]
    gaps = {}
    for name in ("kd", "hard"):
        student = model(0)
        objective = (DistillationObjective(student, teachers, 0.05, 1.0) if name == "kd"
                     else ContrastiveObjective(student, 0.05))
        teacher = DistillationObjective(student, teachers, 0.05, 1.0).teacher_scores(batch)
        before = _kd_gap(student, teacher, batch, 0.05)
        optimiser = torch.optim.Adam(student.parameters(), lr=1e-3)
        for _ in range(15):
            student.train()
            loss, _ = objective(batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        gaps[name] = (before, _kd_gap(student, teacher, batch, 0.05))
    (kd_before, kd_after), (hard_before, hard_after) = gaps["kd"], gaps["hard"]
    assert kd_before == pytest.approx(hard_before, rel=1e-5)  # same student, same start
    assert kd_after < 0.5 * kd_before, gaps
    assert kd_after < 0.5 * hard_after, gaps


def test_resume_is_exact_with_every_augmentation_on(tmp_path):
    # Masks (global torch RNG, saved in last.pt), mixing (seeded by batch position) and the per-item draws
    # (seeded by epoch and index) must replay identically after an interruption.
    from hark.demo.synth import write_clotho_corpus
    from hark.training.run import train

    data = tmp_path / "data"
    write_clotho_corpus(data, n_clips={"development": 12, "validation": 4, "evaluation": 2}, durations=(2.0, 3.0),
                        seed=2)
    cfg = load_config("tiny-augment", ["train.epochs=1", "train.warmup_epochs=1", "train.batch_size=4",
                                       "train.pairs_per_epoch=audio", "audio.max_segments=1",
                                       "audio.segment_seconds=1.0", "audio.frames=98", "train.mix_fraction=0.5"])
    straight = train(cfg, [data], tmp_path / "straight", device="cpu", progress=False)
    train(cfg, [data], tmp_path / "resumed", device="cpu", progress=False, stop_after_steps=4)
    resumed = train(cfg, [data], tmp_path / "resumed", device="cpu", progress=False)
    assert resumed.epochs_run == straight.epochs_run == 2
    a = torch.load(tmp_path / "straight" / "last.pt", map_location="cpu", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", map_location="cpu", weights_only=True)["model"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
