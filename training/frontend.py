"""PaSST's log-mel front end, deterministic, in two equal forms.

It computes what hear21passt's `AugmentMelSTFT` computes in eval mode (pre-emphasis, centred STFT with
an 800-sample Hann window padded to n_fft, power spectrum, Kaldi mel banks, log, fixed scaling), but:
- the mel matrix is a buffer built once, so it travels into an exported graph as a constant;
- `dft_conv=True` replaces torch.stft by a strided convolution with the DFT basis, which exports to
  plain ONNX Conv and runs on every execution provider. Training uses the FFT path (faster).
Augmentation (SpecAugment-style masking) is applied by the caller in training only, as a forward hook on
`log` (the last step, shared by the waveform path and the cached-power path of `train.mel_cache`).
"""

from __future__ import annotations

import math

import torch
import torchaudio
from torch import nn

from .config import AudioConfig


def kaldi_mel_matrix(cfg: AudioConfig) -> torch.Tensor:
    """[n_mels, n_fft // 2 + 1] Kaldi mel banks (the last FFT bin gets zero weight, as in PaSST)."""
    banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
        cfg.n_mels, cfg.n_fft, float(cfg.sample_rate), cfg.fmin, cfg.fmax,
        vtln_low=100.0, vtln_high=-500.0, vtln_warp_factor=1.0,
    )
    return nn.functional.pad(banks, (0, 1)).float()


class LogMel(nn.Module):
    """Mel power -> PaSST's normalised log mel."""

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return (torch.log(mel + 1e-5) + 4.5) / 5.0


# The AudioConfig fields that decide what `MelFrontEnd.power` computes: models that agree on them share cached power.
MEL_FIELDS = ("sample_rate", "n_mels", "n_fft", "win_length", "hop_length", "fmin", "fmax")


class MelFrontEnd(nn.Module):
    def __init__(self, cfg: AudioConfig, dft_conv: bool = False) -> None:
        super().__init__()
        self.log = LogMel()
        self.n_fft = cfg.n_fft
        self.hop = cfg.hop_length
        self.win_length = cfg.win_length
        self.dft_conv = dft_conv
        window = torch.hann_window(cfg.win_length, periodic=False)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel", kaldi_mel_matrix(cfg), persistent=False)
        # Window zero-padded to n_fft and centred, exactly as torch.stft pads it.
        left = (cfg.n_fft - cfg.win_length) // 2
        padded = nn.functional.pad(window, (left, cfg.n_fft - cfg.win_length - left))
        bins = cfg.n_fft // 2 + 1
        n = torch.arange(cfg.n_fft, dtype=torch.float64)
        k = torch.arange(bins, dtype=torch.float64)[:, None]
        angle = 2 * math.pi * k * n / cfg.n_fft
        basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * padded.double()
        self.register_buffer("dft", basis.float()[:, None, :], persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, T] waveform at the configured rate -> [B, n_mels, frames] normalised log mel."""
        return self.log(self.power(wave))

    def clip_power(self, wave: torch.Tensor) -> torch.Tensor:
        """`power` of a whole clip or a padded batch [B, T] of any length. The centred STFT reflects half a frame
        at each end, so a signal shorter than that (a click of a few ms) is zero-padded to it first."""
        short = self.n_fft // 2 + 2 - wave.shape[-1]
        if short > 0:
            wave = nn.functional.pad(wave, (0, short))
        return self.power(wave)

    def power(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, T] waveform -> [B, n_mels, frames] mel power (before the log): linear in the signal's power, so
        a gain g scales it by g^2 and frame f covers samples around f * hop_length."""
        x = wave[:, 1:] - 0.97 * wave[:, :-1]
        if self.dft_conv:
            pad = self.n_fft // 2
            x = nn.functional.pad(x[:, None, :], (pad, pad), mode="reflect")
            spec = nn.functional.conv1d(x, self.dft, stride=self.hop)
            bins = spec.shape[1] // 2
            power = spec[:, :bins] ** 2 + spec[:, bins:] ** 2
        else:
            spec = torch.stft(x, self.n_fft, hop_length=self.hop, win_length=self.win_length,
                              window=self.window, center=True, normalized=False, return_complex=True)
            power = spec.real**2 + spec.imag**2
        with torch.autocast(device_type=power.device.type, enabled=False):
            return torch.matmul(self.mel, power.float())
