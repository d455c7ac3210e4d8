"""The mel front end equals hear21passt's in eval mode, in both the FFT and the DFT-convolution form."""

import pytest

torch = pytest.importorskip("torch")

from hark.training.config import AudioConfig  # noqa: E402
from hark.training.frontend import MelFrontEnd  # noqa: E402


@pytest.fixture(scope="module")
def reference():
    from hear21passt.models.preprocess import AugmentMelSTFT

    # hear21passt's own settings (base.py); eval mode disables its augmentation and fixes fmax at 15 kHz.
    mel = AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=192,
                         htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10, fmax_aug_range=2000)
    return mel.eval()


@pytest.mark.parametrize("dft_conv", [False, True])
def test_matches_hear21passt(reference, dft_conv):
    torch.manual_seed(0)
    t = torch.arange(32000 * 3) / 32000
    wave = torch.stack([0.3 * torch.sin(2 * torch.pi * 440 * t), 0.1 * torch.randn_like(t)])
    ours = MelFrontEnd(AudioConfig(), dft_conv=dft_conv)(wave)
    with torch.no_grad():
        theirs = reference(wave)
    assert ours.shape == theirs.shape == (2, 128, 300)
    assert (ours - theirs).abs().max().item() < 2e-3


def test_ten_seconds_give_passt_sized_input():
    mel = MelFrontEnd(AudioConfig())(torch.zeros(1, 320000))
    assert mel.shape == (1, 128, 1000)
    assert torch.isfinite(mel).all()
