"""Synthetic audio-caption corpora for tests and the quickstart demo (numpy only, no torch).

Ten sound events, each with its own spectral and temporal signature, are rendered with random pitch,
timing and level, mixed or played in sequence, and described by templated sentences. A small retrieval
model can learn the mapping, so the demo and the end-to-end tests show real (non-chance) retrieval
without downloading a dataset. The writers reproduce the on-disk layouts of Clotho v2 (plus the DCASE 2025
relevance file), AudioCaps, WavCaps and TACOS, so the loaders are exercised on the same shapes of files
they meet in practice, broken files included.

Everything is deterministic given the seed: clip i of a split depends only on (seed, split, i).
"""

from __future__ import annotations

import csv
import json
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

Arrangement = Literal["mixed", "sequence"]

# Event name -> caption clauses. Every clause is a full clause so that any two can be joined by the
# temporal templates below ("a dog barks while rain falls").
EVENTS: Mapping[str, tuple[str, ...]] = {
    "dog": ("a dog barks", "a dog is barking", "a dog barks repeatedly"),
    "siren": ("a siren wails", "a siren is wailing", "an emergency siren wails"),
    "rain": ("rain falls", "rain is falling", "rain pours down"),
    "bell": ("a bell rings", "a bell is ringing", "a bell chimes"),
    "bird": ("a bird chirps", "a bird is chirping", "a small bird chirps"),
    "engine": ("an engine hums", "an engine is humming", "a motor hums steadily"),
    "speech": ("a man speaks", "a man is talking", "a man speaks quietly"),
    "drip": ("water drips", "water is dripping", "drops of water fall"),
    "footsteps": ("footsteps approach", "someone walks closer", "a person is walking"),
    "wind": ("wind blows", "the wind is blowing", "a strong wind blows"),
}

_SINGLE = ("{a}", "{a} for a while", "you can hear that {a}", "{a} nearby")
_MIXED_2 = (
    "{a} while {b}",
    "{a} as {b}",
    "{a} and {b} at the same time",
    "{a}, and meanwhile {b}",
    "{a} in the background while {b}",
)
_SEQUENCE_2 = (
    "{a}, then {b}",
    "first {a} and afterwards {b}",
    "{a} before {b}",
    "after {a}, {b}",
    "{a} and then {b}",
)
# For callers that do not know how the events are arranged: claims neither overlap nor order.
_ANY_2 = ("{a} and {b}", "{a}, and also {b}", "you can hear that {a} and {b}")
_ANY_3 = ("{a}, {b} and {c}", "you can hear that {a}, {b} and {c}", "{a} and {b}, and also {c}")
_MIXED_3 = (
    "{a} while {b} and {c}",
    "{a}, {b} and {c} at the same time",
    "{a} as {b}, and meanwhile {c}",
)
_SEQUENCE_3 = (
    "{a}, then {b}, then {c}",
    "first {a}, then {b}, and finally {c}",
    "{a}, after that {b}, and at the end {c}",
)


@dataclass
class Scene:
    """One synthetic clip and what is in it."""

    audio: np.ndarray  # float32 mono
    sample_rate: int
    events: list[str]  # in order of onset
    arrangement: Arrangement
    onsets: list[float] = field(default_factory=list)  # seconds, one per event
    offsets: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Signal helpers


def _bandpass(x: np.ndarray, sr: int, lo: float, hi: float) -> np.ndarray:
    """Zero-phase band-pass by spectral masking with raised-cosine edges (no scipy in the runtime)."""
    # Padding to a power of two keeps the FFT fast for awkward (prime-factor) clip lengths.
    size = 1 << max(len(x) - 1, 1).bit_length()
    spectrum = np.fft.rfft(x, n=size)
    freqs = np.fft.rfftfreq(size, 1.0 / sr)
    width_lo = max(lo * 0.25, 20.0)
    width_hi = max(hi * 0.15, 50.0)
    rise = np.clip((freqs - (lo - width_lo)) / width_lo, 0.0, 1.0)
    fall = np.clip(((hi + width_hi) - freqs) / width_hi, 0.0, 1.0)
    mask = (0.5 - 0.5 * np.cos(np.pi * rise)) * (0.5 - 0.5 * np.cos(np.pi * fall))
    return np.fft.irfft(spectrum * mask, n=size)[: len(x)]


def _smooth_noise(rng: np.random.Generator, n: int, sr: int, rate_hz: float) -> np.ndarray:
    """Slowly varying random curve in [0, 1] (for gusts and level drifts)."""
    knots = max(int(n / sr * rate_hz) + 2, 2)
    values = rng.random(knots)
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), values)


def _place(out: np.ndarray, start: int, grain: np.ndarray) -> None:
    if start >= len(out):
        return
    end = min(len(out), start + len(grain))
    out[start:end] += grain[: end - start]


def _decay_env(n: int, sr: int, attack_s: float, decay_s: float) -> np.ndarray:
    t = np.arange(n) / sr
    attack = np.clip(t / max(attack_s, 1e-4), 0.0, 1.0)
    return attack * np.exp(-t / decay_s)


def _times(rng: np.random.Generator, total_s: float, gap: tuple[float, float], first: float = 0.3) -> list[float]:
    times, t = [], rng.uniform(0.0, first)
    while t < total_s:
        times.append(t)
        t += rng.uniform(*gap)
    return times


# ---------------------------------------------------------------------------------------------------
# Event renderers: (rng, n_samples, sample_rate) -> signal of length n (any scale; normalised later)


def _dog(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Short harmonic bursts with a falling pitch, 500-900 Hz fundamental.
    out = np.zeros(n)
    f0 = rng.uniform(500, 900)
    for start in _times(rng, n / sr, (0.35, 0.8)):
        dur = rng.uniform(0.08, 0.18)
        m = int(dur * sr)
        t = np.arange(m) / sr
        pitch = f0 * rng.uniform(0.95, 1.05) * (1.0 - 0.2 * t / dur)
        phase = 2 * np.pi * np.cumsum(pitch) / sr
        bark = sum(np.sin(k * phase) / k for k in range(1, 5) if k * f0 < 0.45 * sr)
        bark = bark + 0.15 * rng.standard_normal(m)
        _place(out, int(start * sr), bark * _decay_env(m, sr, 0.005, dur / 2.5))
    return out


def _siren(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Slow sweep between about 700 and 1500 Hz.
    t = np.arange(n) / sr
    centre, depth = rng.uniform(1000, 1200), rng.uniform(250, 350)
    period = rng.uniform(2.0, 4.0)
    freq = centre + depth * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return np.sin(phase) + 0.3 * np.sin(2 * phase)


def _rain(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Steady high band-passed noise plus dense small droplet clicks.
    lo, hi = rng.uniform(1500, 2500), min(rng.uniform(6000, 8000), 0.45 * sr)
    hiss = _bandpass(rng.standard_normal(n), sr, lo, hi)
    clicks = np.zeros(n)
    count = int(n / sr * rng.uniform(40, 80))
    clicks[rng.integers(0, n, count)] = rng.uniform(2.0, 6.0, count)
    return hiss / (np.std(hiss) + 1e-9) + _bandpass(clicks, sr, lo, hi) * 4.0


def _bell(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Struck bell: inharmonic partials around 2-3 kHz, higher partials decaying faster.
    out = np.zeros(n)
    f0 = rng.uniform(2000, 2600)
    ratios = (1.0, 1.22, 1.57, 2.31)
    decay = rng.uniform(0.8, 1.5)
    for start in _times(rng, n / sr, (1.0, 2.5)):
        m = min(int(decay * 3 * sr), n)
        t = np.arange(m) / sr
        strike = np.zeros(m)
        for i, ratio in enumerate(ratios):
            if f0 * ratio < 0.45 * sr:
                strike += np.sin(2 * np.pi * f0 * ratio * t) * np.exp(-t / (decay / (1 + i))) / (1 + i)
        _place(out, int(start * sr), strike * np.clip(t / 0.002, 0, 1))
    return out


def _bird(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Bursts of fast upward chirps from about 3 kHz to about 6 kHz.
    out = np.zeros(n)
    lo, hi = rng.uniform(3000, 4000), min(rng.uniform(5000, 6000), 0.45 * sr)
    for burst in _times(rng, n / sr, (0.6, 1.5)):
        t0 = burst
        for _ in range(int(rng.integers(2, 6))):
            dur = rng.uniform(0.05, 0.1)
            m = int(dur * sr)
            freq = np.linspace(lo, hi, m)
            chirp = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.hanning(m)
            _place(out, int(t0 * sr), chirp)
            t0 += dur + rng.uniform(0.05, 0.12)
    return out


def _engine(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Low harmonic drone, 60-120 Hz fundamental, slight wobble.
    t = np.arange(n) / sr
    f0 = rng.uniform(60, 120) * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    drone = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k**0.7 for k in range(1, 13))
    return drone * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(8, 15) * t))


_VOWELS = ((700, 1200), (300, 2300), (500, 900), (400, 2000), (600, 1700))


def _speech(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Voiced syllables: a 100-150 Hz harmonic source shaped by two formants, 3-5 syllables per second,
    # grouped into words separated by pauses.
    out = np.zeros(n)
    f0_base = rng.uniform(100, 150)
    t0 = rng.uniform(0.0, 0.3)
    while t0 < n / sr:
        for _ in range(int(rng.integers(2, 6))):
            dur = rng.uniform(0.15, 0.3)
            m = int(dur * sr)
            t = np.arange(m) / sr
            f1, f2 = _VOWELS[int(rng.integers(len(_VOWELS)))]
            pitch = f0_base * rng.uniform(0.9, 1.1) * (1 + 0.1 * np.sin(np.pi * t / dur))
            phase = 2 * np.pi * np.cumsum(pitch) / sr
            syllable = np.zeros(m)
            for k in range(1, int(min(4000, 0.45 * sr) / f0_base)):
                hk = k * f0_base
                gain = np.exp(-(((hk - f1) / 120) ** 2)) + 0.6 * np.exp(-(((hk - f2) / 180) ** 2)) + 0.02
                syllable += gain * np.sin(k * phase)
            _place(out, int(t0 * sr), syllable * np.hanning(m))
            t0 += dur + rng.uniform(0.02, 0.06)
        t0 += rng.uniform(0.25, 0.6)
    return out


def _drip(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Irregular "plinks": short sinusoids gliding upward, 0.8-1.6 kHz, quick decay.
    out = np.zeros(n)
    for start in _times(rng, n / sr, (0.3, 1.0)):
        m = int(0.12 * sr)
        t = np.arange(m) / sr
        f = rng.uniform(800, 1600) * (1 + 0.5 * np.clip(t / 0.02, 0, 1))
        plink = np.sin(2 * np.pi * np.cumsum(f) / sr) * _decay_env(m, sr, 0.001, rng.uniform(0.02, 0.045))
        _place(out, int(start * sr), plink)
    return out


def _footsteps(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Regular low thumps (about two per second) with a faint heel click, growing louder: approaching.
    out = np.zeros(n)
    interval = rng.uniform(0.45, 0.65)
    start = rng.uniform(0.0, 0.3)
    i = 0
    while start < n / sr:
        m = int(0.15 * sr)
        thump = _bandpass(rng.standard_normal(m), sr, 60, 500) * _decay_env(m, sr, 0.003, rng.uniform(0.03, 0.06))
        click = _bandpass(rng.standard_normal(m), sr, 2000, min(5000, 0.45 * sr)) * _decay_env(m, sr, 0.001, 0.008)
        level = (0.4 + 0.6 * start / (n / sr)) * (1.0 if i % 2 == 0 else 0.8)
        _place(out, int(start * sr), level * (thump * 3.0 + 0.3 * click))
        start += interval * rng.uniform(0.95, 1.05)
        i += 1
    return out


def _wind(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Low band-passed noise with slow gusts.
    lo, hi = rng.uniform(80, 150), rng.uniform(500, 800)
    noise = _bandpass(rng.standard_normal(n), sr, lo, hi)
    gusts = 0.25 + _smooth_noise(rng, n, sr, rng.uniform(0.3, 0.8))
    return noise * gusts


_RENDER: Mapping[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "dog": _dog,
    "siren": _siren,
    "rain": _rain,
    "bell": _bell,
    "bird": _bird,
    "engine": _engine,
    "speech": _speech,
    "drip": _drip,
    "footsteps": _footsteps,
    "wind": _wind,
}

# ---------------------------------------------------------------------------------------------------
# Variant "b": other renderings and wording for the same ten events, in its own seed space. It exists to
# measure generalisation (a recipe tuned on the default corpus is scored on this one); never tune on it.

EVENTS_B: Mapping[str, tuple[str, ...]] = {
    "dog": ("a hound yaps", "a puppy is yapping", "a dog growls and woofs"),
    "siren": ("an alarm blares", "a two-tone alarm is sounding", "an ambulance horn blares"),
    "rain": ("a downpour patters", "raindrops are pattering", "heavy showers patter"),
    "bell": ("a chime is struck", "a gong resonates", "a metal chime resonates"),
    "bird": ("a songbird trills", "a songbird is trilling", "a warbler sings a trill"),
    "engine": ("a truck idles", "a diesel engine is idling", "a large vehicle rumbles idly"),
    "speech": ("a woman talks", "a woman is chatting", "a female voice speaks softly"),
    "drip": ("a tap leaks", "a faucet is leaking drop by drop", "liquid plops into a basin"),
    "footsteps": ("boots crunch on gravel", "someone is treading on gravel", "steps crunch along a path"),
    "wind": ("a breeze whistles", "the gale is howling", "air whistles through a gap"),
}

_SINGLE_B = ("{a}", "there is a recording where {a}", "{a} in the distance", "clearly, {a}")
_MIXED_2_B = ("{a} whilst {b}", "{a} and simultaneously {b}", "{a}; at once {b}", "{a} during the time {b}")
_SEQUENCE_2_B = ("{a}, and next {b}", "to begin with {a}, later {b}", "{a}; subsequently {b}", "once {a}, {b}")
_ANY_2_B = ("{a} plus {b}", "{a}, along with {b}")
_ANY_3_B = ("{a}, {b} plus {c}", "{a}, along with {b} and {c}")
_MIXED_3_B = ("{a}, {b} and {c} together", "{a} whilst {b} and {c}")
_SEQUENCE_3_B = ("{a}, next {b}, and lastly {c}", "to begin with {a}, later {b}, finally {c}")


def _dog_b(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Noise-excited growls in pairs ("woof-woof"): band-passed noise with a 25-40 Hz roughness.
    out = np.zeros(n)
    lo = rng.uniform(250, 400)
    rough = rng.uniform(25, 40)
    for start in _times(rng, n / sr, (0.9, 1.6)):
        for k in range(2):
            m = int(rng.uniform(0.12, 0.22) * sr)
            t = np.arange(m) / sr
            burst = _bandpass(rng.standard_normal(m), sr, lo, lo * 3.5) * (0.6 + 0.4 * np.sin(2 * np.pi * rough * t))
            _place(out, int((start + k * rng.uniform(0.22, 0.3)) * sr), burst * np.hanning(m))
    return out


def _siren_b(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Two-tone (hi-lo) alarm: alternating square-ish tones with odd harmonics.
    t = np.arange(n) / sr
    lo = rng.uniform(550, 700)
    hi = lo * rng.uniform(1.3, 1.45)
    half = rng.uniform(0.4, 0.7)
    freq = np.where((t // half) % 2 == 0, lo, hi)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return sum(np.sin(k * phase) / k for k in (1, 3, 5, 7))


def _rain_b(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Patter: many decaying ticks over a mid band, plus a faint low rumble.
    ticks = np.zeros(n)
    count = int(n / sr * rng.uniform(150, 300))
    ticks[rng.integers(0, n, count)] = rng.uniform(0.5, 2.0, count)
    kernel = np.exp(-np.arange(int(0.004 * sr)) / (0.0008 * sr))
    patter = _bandpass(np.convolve(ticks, kernel)[:n], sr, 800, min(5000, 0.45 * sr))
    rumble = _bandpass(rng.standard_normal(n), sr, 40, 200)
    return patter / (np.std(patter) + 1e-9) + 0.3 * rumble / (np.std(rumble) + 1e-9)


def _bell_b(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # FM gong strikes: carrier 1.2-1.8 kHz, modulator at an inharmonic ratio, index decaying with the note.
    out = np.zeros(n)
    fc = rng.uniform(1200, 1800)
    ratio = rng.uniform(1.35, 1.5)
    decay = rng.uniform(1.0, 2.0)
    for start in _times(rng, n / sr, (1.5, 3.0)):
        m = min(int(decay * 3 * sr), n)
        t = np.arange(m) / sr
        env = np.exp(-t / decay)
        note = np.sin(2 * np.pi * fc * t + 3.0 * env * np.sin(2 * np.pi * fc * ratio * t))
        _place(out, int(start * sr), note * env * np.clip(t / 0.003, 0, 1))
    return out


def _bird_b(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Trills: a 2.5-4.5 kHz tone with fast, deep vibrato, in notes of 0.2-0.5 s.
    out = np.zeros(n)
    base = rng.uniform(2500, 4500)
    rate = rng.uniform(18, 30)
    for start in _times(rng, n / sr, (0.5, 1.2)):
        m = int(rng.uniform(0.2, 0.5) * sr)
        t = np.arange(m) / sr
        freq = base * rng.uniform(0.9, 1.1) + 400 * np.sin(2 * np.pi * rate * t)
        _place(out, int(start * sr), np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.hanning(m))
    return out


def _engine_b(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Idling diesel: a 25-45 Hz pulse train (sawtooth-like harmonics) with irregular firing jitter.
    t = np.arange(n) / sr
    f0 = rng.uniform(25, 45) * (1 + 0.05 * (_smooth_noise(rng, n, sr, 2.0) - 0.5))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 30))
    knock = _bandpass(rng.standard_normal(n), sr, 300, 1500) * (np.sin(phase) > 0.95)
    return harmonics + 0.5 * knock + 0.05 * np.sin(2 * np.pi * 3 * t)


def _speech_b(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # A higher voice (180-240 Hz) with gliding formants and breathy noise, faster syllables.
    out = np.zeros(n)
    f0_base = rng.uniform(180, 240)
    t0 = rng.uniform(0.0, 0.3)
    while t0 < n / sr:
        for _ in range(int(rng.integers(3, 7))):
            m = int(rng.uniform(0.1, 0.2) * sr)
            t = np.arange(m) / sr
            (a1, a2), (b1, b2) = (_VOWELS[int(i)] for i in rng.integers(len(_VOWELS), size=2))
            glide = t / t[-1]
            f1, f2 = a1 + (b1 - a1) * glide, a2 + (b2 - a2) * glide
            phase = 2 * np.pi * np.cumsum(f0_base * (1.05 - 0.1 * glide)) / sr
            syllable = np.zeros(m)
            for k in range(1, int(min(4500, 0.45 * sr) / f0_base)):
                hk = k * f0_base
                gain = np.exp(-(((hk - f1) / 150) ** 2)) + 0.5 * np.exp(-(((hk - f2) / 200) ** 2)) + 0.01
                syllable += gain * np.sin(k * phase)
            breath = 0.2 * _bandpass(rng.standard_normal(m), sr, 1500, min(4000, 0.45 * sr))
            _place(out, int(t0 * sr), (syllable + breath) * np.hanning(m))
            t0 += m / sr + rng.uniform(0.01, 0.04)
        t0 += rng.uniform(0.3, 0.8)
    return out


def _drip_b(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Metronomic "bloops": damped tones falling from 600-900 Hz, one every 0.4-0.7 s.
    out = np.zeros(n)
    period = rng.uniform(0.4, 0.7)
    start = rng.uniform(0.0, 0.2)
    while start < n / sr:
        m = int(0.15 * sr)
        t = np.arange(m) / sr
        f = rng.uniform(600, 900) * (1 - 0.4 * np.clip(t / 0.05, 0, 1))
        _place(out, int(start * sr), np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.03))
        start += period * rng.uniform(0.97, 1.03)
    return out


def _footsteps_b(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Gravel crunches: granular clusters of 1-4 kHz clicks, about one step every 0.7-0.9 s, level steady.
    out = np.zeros(n)
    interval = rng.uniform(0.7, 0.9)
    start = rng.uniform(0.0, 0.3)
    while start < n / sr:
        m = int(0.18 * sr)
        grains = np.zeros(m)
        grains[rng.integers(0, m, 60)] = rng.uniform(-1, 1, 60)
        crunch = _bandpass(grains, sr, 1000, min(4000, 0.45 * sr)) * np.exp(-np.arange(m) / (0.07 * sr))
        _place(out, int(start * sr), crunch)
        start += interval * rng.uniform(0.95, 1.05)
    return out


def _wind_b(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # Whistling: a narrow noise band whose centre wanders between 400 and 1200 Hz, over a soft hiss.
    noise = rng.standard_normal(n)
    centre = 400 + 800 * _smooth_noise(rng, n, sr, rng.uniform(0.2, 0.5))
    # Narrow band by heterodyning: low-passed noise shifted to the moving centre frequency.
    base = _bandpass(noise, sr, 1, 60)
    whistle = base * np.sin(2 * np.pi * np.cumsum(centre) / sr)
    hiss = _bandpass(rng.standard_normal(n), sr, 2000, min(6000, 0.45 * sr))
    return whistle / (np.std(whistle) + 1e-9) + 0.2 * hiss / (np.std(hiss) + 1e-9)


@dataclass(frozen=True)
class _Variant:
    events: Mapping[str, tuple[str, ...]]
    render: Mapping[str, Callable[[np.random.Generator, int, int], np.ndarray]]
    single: tuple[str, ...]
    two: Mapping[Arrangement | None, tuple[str, ...]]
    three: Mapping[Arrangement | None, tuple[str, ...]]
    counts_p: tuple[float, float, float]
    level_db: tuple[float, float]
    noise_db: float
    gap_s: float
    seed_salt: tuple[int, ...]  # appended to every clip's seed: its own seed space


VARIANTS: Mapping[str, _Variant] = {
    "a": _Variant(EVENTS, _RENDER, _SINGLE, {"mixed": _MIXED_2, "sequence": _SEQUENCE_2, None: _ANY_2},
                  {"mixed": _MIXED_3, "sequence": _SEQUENCE_3, None: _ANY_3}, (0.35, 0.4, 0.25), (-24.0, -18.0),
                  -55.0, 0.2, ()),
    "b": _Variant(
        EVENTS_B,
        {"dog": _dog_b, "siren": _siren_b, "rain": _rain_b, "bell": _bell_b, "bird": _bird_b, "engine": _engine_b,
         "speech": _speech_b, "drip": _drip_b, "footsteps": _footsteps_b, "wind": _wind_b},
        _SINGLE_B, {"mixed": _MIXED_2_B, "sequence": _SEQUENCE_2_B, None: _ANY_2_B},
        {"mixed": _MIXED_3_B, "sequence": _SEQUENCE_3_B, None: _ANY_3_B}, (0.3, 0.45, 0.25), (-27.0, -15.0),
        -50.0, 0.2, (0xB,)),
}


def _variant(name: str) -> _Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown synthetic variant {name!r}; known: {sorted(VARIANTS)}")
    return VARIANTS[name]


# Lowest rate we synthesise at: the bird and bell signatures sit above 4 kHz, so an 8 kHz target is
# produced by band-limited resampling rather than by aliasing.
_SYNTH_RATE = 32000


def _normalised(signal: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(signal**2))) if len(signal) else 0.0
    return signal / rms if rms > 0 else signal


def make_scene(
    rng: np.random.Generator,
    duration_s: float,
    sample_rate: int = _SYNTH_RATE,
    n_events: int | None = None,
    arrangement: Arrangement | None = None,
    events: Sequence[str] | None = None,
    variant: str = "a",
) -> Scene:
    """Render one clip with 1-3 events, either all overlapping ("mixed") or one after the other.

    `variant` picks the renderings ("a", the default, or "b"; see VARIANTS)."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    style = _variant(variant)
    names = list(EVENTS)
    if events is None:
        count = n_events or int(rng.choice([1, 2, 3], p=list(style.counts_p)))
        chosen = [names[i] for i in rng.choice(len(names), size=count, replace=False)]
    else:
        unknown = [e for e in events if e not in EVENTS]
        if unknown:
            raise ValueError(f"unknown events {unknown}; known: {names}")
        chosen = list(events)
    if arrangement is None:
        arrangement = "mixed" if len(chosen) == 1 else str(rng.choice(["mixed", "sequence"]))
    elif arrangement not in ("mixed", "sequence"):
        raise ValueError(f"arrangement must be 'mixed' or 'sequence', got {arrangement!r}")

    rate = max(sample_rate, _SYNTH_RATE)
    n = round(duration_s * rate)
    mix = np.zeros(n)
    onsets: list[float] = []
    offsets: list[float] = []
    if arrangement == "mixed":
        spans = [(0, n)] * len(chosen)
    else:
        # Slots of random length (each at least a fifth of the clip), separated by short gaps.
        weights = rng.uniform(1.0, 2.0, len(chosen))
        bounds = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()]) * n
        gap = int(style.gap_s * rate)
        spans = [(int(bounds[i]) + (gap if i else 0), int(bounds[i + 1])) for i in range(len(chosen))]
    for name, (start, end) in zip(chosen, spans, strict=True):
        part = _normalised(style.render[name](rng, end - start, rate))
        level = 10 ** (rng.uniform(*style.level_db) / 20)
        fade = min(int(0.02 * rate), (end - start) // 2)
        if fade:
            ramp = np.linspace(0.0, 1.0, fade)
            part[:fade] *= ramp
            part[-fade:] *= ramp[::-1]
        mix[start:end] += level * part
        onsets.append(round(start / rate, 3))
        offsets.append(round(end / rate, 3))
    mix += 10 ** (style.noise_db / 20) * rng.standard_normal(n)
    peak = float(np.max(np.abs(mix)))
    if peak > 0.95:
        mix *= 0.95 / peak
    if rate != sample_rate:
        mix = soxr.resample(mix, rate, sample_rate, quality="HQ")
    return Scene(mix.astype(np.float32), sample_rate, chosen, arrangement, onsets, offsets)


def make_clip(
    rng: np.random.Generator, duration_s: float, sample_rate: int, variant: str = "a"
) -> tuple[np.ndarray, list[str]]:
    """Render one clip; returns (float32 mono audio, event names in order of onset)."""
    scene = make_scene(rng, duration_s, sample_rate, variant=variant)
    return scene.audio, scene.events


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def captions_for(
    events: Sequence[str],
    rng: np.random.Generator,
    n: int,
    arrangement: Arrangement | None = None,
    variant: str = "a",
) -> list[str]:
    """`n` distinct paraphrased captions for a clip holding `events`.

    With `arrangement` "mixed" the captions say the events overlap, with "sequence" that they follow each
    other in the given order; None (arrangement unknown, as after `make_clip`) claims neither.
    """
    if not 1 <= len(events) <= 3:
        raise ValueError(f"captions need 1-3 events, got {len(events)}")
    if arrangement not in ("mixed", "sequence", None):
        raise ValueError(f"arrangement must be 'mixed', 'sequence' or None, got {arrangement!r}")
    style = _variant(variant)
    captions: list[str] = []
    for _attempt in range(n * 20):
        order = list(events)
        if arrangement != "sequence":
            # Simultaneous events can be named in any order.
            order = [order[i] for i in rng.permutation(len(order))]
        clauses = [style.events[e][int(rng.integers(len(style.events[e])))] for e in order]
        by_count = {1: {arrangement: style.single}, 2: style.two, 3: style.three}
        templates = by_count[len(clauses)][arrangement]
        template = templates[int(rng.integers(len(templates)))]
        caption = _sentence(template.format(**dict(zip("abc", clauses, strict=False))))
        if caption not in captions:
            captions.append(caption)
        if len(captions) == n:
            break
    while len(captions) < n:  # too few paraphrases exist; repeat rather than return short
        captions.append(captions[len(captions) % max(len(captions), 1)])
    return captions


def events_in_caption(caption: str, variant: str = "a") -> frozenset[str]:
    """The event set a generated caption describes (clauses are unique to their event)."""
    lowered = caption.lower()
    found = set()
    for name, clauses in _variant(variant).events.items():
        if any(clause in lowered for clause in clauses):
            found.add(name)
    return frozenset(found)


# ---------------------------------------------------------------------------------------------------
# Writers


def _available_formats() -> set[str]:
    return {name.upper() for name in sf.available_formats()}


_FORMAT_NAMES = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}
# MPEG-1/2 layer III only exists at these rates.
_MP3_RATES = {8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000}


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int, channels: int = 1) -> Path:
    """Write `audio` in the format its suffix names, falling back to WAV when libsndfile cannot.

    Returns the path actually written (its suffix changes on fallback).
    """
    path = Path(path)
    data = audio.astype(np.float32)
    if channels == 2:
        # Unequal channels so that a decoder which drops one instead of averaging is caught; the mean is
        # exactly the mono signal.
        data = np.stack([data * 1.2, data * 0.8], axis=1)
    elif channels != 1:
        data = np.repeat(data[:, None], channels, axis=1)
    fmt = _FORMAT_NAMES.get(path.suffix.lower().lstrip("."))
    usable = fmt is not None and fmt in _available_formats()
    if fmt == "MP3" and sample_rate not in _MP3_RATES:
        usable = False
    if usable:
        try:
            sf.write(path, np.clip(data, -1.0, 1.0), sample_rate, format=fmt)
            return path
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
            path.unlink(missing_ok=True)
    fallback = path.with_suffix(".wav")
    sf.write(fallback, np.clip(data, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return fallback


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]], encoding: str = "utf-8"):
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(header)
        writer.writerows(rows)


def _clip_rng(seed: int, tag: int, index: int, variant: str = "a") -> np.random.Generator:
    return np.random.default_rng([seed, tag, index, *_variant(variant).seed_salt])


def _write_broken(directory: Path, index: int, rng: np.random.Generator) -> str:
    kind = ("empty", "random", "text", "truncated")[index % 4]
    if kind == "empty":
        name = f"broken {index:02d} empty.wav"
        (directory / name).write_bytes(b"")
    elif kind == "random":
        name = f"broken {index:02d} noise.wav"
        (directory / name).write_bytes(rng.bytes(4096))
    elif kind == "text":
        name = f"broken {index:02d} note.wav"
        (directory / name).write_text("404 Not Found\nThe requested audio file could not be downloaded.\n")
    else:
        scene = make_scene(rng, 4.0, 32000)
        probe = directory / f"broken {index:02d} cut.mp3"
        written = write_audio(probe, scene.audio, 32000)
        data = written.read_bytes()
        written.write_bytes(data[: len(data) * 2 // 5])
        name = written.name
    return name


def write_clotho_corpus(
    root: str | Path,
    n_clips: Mapping[str, int] | None = None,
    durations: tuple[float, float] = (10.0, 24.0),
    seed: int = 0,
    formats: Sequence[str] = ("wav",),
    sample_rates: Sequence[int] = (32000,),
    channels: Sequence[int] = (1,),
    broken: int = 0,
    variant: str = "a",
) -> dict:
    """Write a Clotho v2 style corpus under `root` and return a summary.

    Layout: `clotho_captions_<split>.csv` (file_name, caption_1..caption_5) beside `<split>/` audio
    folders, an ISO-8859-1 `clotho_metadata_<split>.csv`, and the DCASE 2025 style
    `relevance_evaluation.csv` (query, audio_filenames as a Python list literal) in which a query is
    relevant to every evaluation clip with the same event set. Formats, sample rates and channel counts
    are cycled across clips; `broken` adds that many unreadable files (empty, random bytes, text named
    .wav, truncated MP3) to the development split, listed in its CSV like any other clip. `variant` picks
    the generator ("a", the default, or "b": other renderings, wording and seeds; see VARIANTS).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    counts = dict(n_clips or {"development": 60, "validation": 20, "evaluation": 20})
    summary: dict = {"root": str(root), "splits": {}, "broken": [], "fallbacks": [], "events": {}}
    eval_captions: dict[str, list[str]] = {}
    for tag, (split, count) in enumerate(counts.items()):
        audio_dir = root / split
        audio_dir.mkdir(exist_ok=True)
        rows, metadata, events = [], [], {}
        for i in range(count):
            rng = _clip_rng(seed, tag, i, variant)
            fmt = formats[i % len(formats)]
            rate = sample_rates[(i // len(formats)) % len(sample_rates)]
            n_channels = channels[(i // (len(formats) * len(sample_rates))) % len(channels)]
            scene = make_scene(rng, float(rng.uniform(*durations)), rate, variant=variant)
            # Real Clotho names carry spaces and punctuation; a comma forces CSV quoting.
            stem = f"{split[:3]}_{i:04d} take{', two' if i % 7 == 3 else ''}"
            path = write_audio(audio_dir / f"{stem}.{fmt}", scene.audio, rate, n_channels)
            if path.suffix != f".{fmt}":
                summary["fallbacks"].append(path.name)
            captions = captions_for(scene.events, rng, 5, scene.arrangement, variant)
            rows.append([path.name, *captions])
            if split == "evaluation":
                eval_captions[path.name] = captions
            metadata.append([path.name, "; ".join(scene.events), f"{100000 + i}", "Frédéric Müller"])
            events[path.name] = list(scene.events)
        if split == "development":
            for j in range(broken):
                rng = _clip_rng(seed, 1000 + tag, j, variant)
                name = _write_broken(audio_dir, j, rng)
                fake = make_scene(rng, 1.0, 8000, variant=variant)
                rows.append([name, *captions_for(fake.events, rng, 5, fake.arrangement, variant)])
                summary["broken"].append(name)
        csv_path = root / f"clotho_captions_{split}.csv"
        _write_csv(csv_path, ["file_name", *(f"caption_{k}" for k in range(1, 6))], rows)
        _write_csv(
            root / f"clotho_metadata_{split}.csv",
            ["file_name", "keywords", "sound_id", "manufacturer"],
            metadata,
            encoding="iso-8859-1",
        )
        summary["splits"][split] = {
            "csv": str(csv_path),
            "audio_dir": str(audio_dir),
            "files": [row[0] for row in rows],
        }
        summary["events"][split] = events

    if eval_captions:
        eval_events = {name: frozenset(evs) for name, evs in summary["events"]["evaluation"].items()}
        relevance: dict[str, list[str]] = {}
        for name, captions in eval_captions.items():
            relevant = sorted(f for f, evs in eval_events.items() if evs == eval_events[name])
            for caption in captions:
                relevance.setdefault(caption, relevant)
        rel_path = root / "relevance_evaluation.csv"
        _write_csv(rel_path, ["query", "audio_filenames"], [[q, repr(f)] for q, f in relevance.items()])
        summary["relevance"] = str(rel_path)
    return summary


def _youtube_id(rng: np.random.Generator) -> str:
    alphabet = string.ascii_letters + string.digits + "-_"
    return "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), 11))


def write_audiocaps(
    root: str | Path,
    n_clips: Mapping[str, int] | None = None,
    duration: float = 10.0,
    seed: int = 0,
    fmt: str = "wav",
    missing: int = 1,
) -> dict:
    """Write an AudioCaps style corpus: `<split>.csv` (audiocap_id, youtube_id, start_time, caption) and
    audio in `audio/<split>/<youtube_id>.<fmt>`. Train has one caption per clip, val and test five (as in
    the release). `missing` rows per split reference audio that was never downloaded."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    counts = dict(n_clips or {"train": 12, "val": 4, "test": 4})
    summary: dict = {"root": str(root), "splits": {}}
    next_id = 1
    for tag, (split, count) in enumerate(counts.items()):
        audio_dir = root / "audio" / split
        audio_dir.mkdir(parents=True, exist_ok=True)
        rows, ids, absent = [], [], []
        for i in range(count + missing):
            rng = _clip_rng(seed, 100 + tag, i)
            ytid = _youtube_id(rng)
            if i == 0:
                ytid = "-" + ytid[1:]  # real ids may start with a dash
            scene = make_scene(rng, duration, 32000)
            start = int(rng.integers(0, 30)) * 10
            if i < count:
                write_audio(audio_dir / f"{ytid}.{fmt}", scene.audio, 32000)
                ids.append(ytid)
            else:
                absent.append(ytid)
            per_clip = 1 if split == "train" else 5
            for caption in captions_for(scene.events, rng, per_clip, scene.arrangement):
                rows.append([next_id, ytid, start, caption])
                next_id += 1
        _write_csv(root / f"{split}.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], rows)
        summary["splits"][split] = {"csv": str(root / f"{split}.csv"), "youtube_ids": ids, "missing": absent}
    return summary


def write_wavcaps(root: str | Path, n_clips: int = 12, seed: int = 0, excluded: int = 2) -> dict:
    """Write a WavCaps style corpus: `json_files/FreeSound/fsd_final.json` and
    `json_files/SoundBible/sb_final.json` (`{"data": [{"id", "caption", "duration", ...}]}`), FLAC audio in
    `audio/<Source>/<id>.flac`, and the DCASE exclusion list of Clotho-overlapping Freesound ids
    (`dcase2025_task6_excluded_freesound_ids.csv`, column `sound_id`) naming the first `excluded` ids."""
    root = Path(root)
    summary: dict = {"root": str(root), "ids": {}, "excluded": []}
    sources = {"FreeSound": ("fsd_final", n_clips - n_clips // 4), "SoundBible": ("sb_final", n_clips // 4)}
    for tag, (source, (stem, count)) in enumerate(sources.items()):
        json_dir = root / "json_files" / source
        audio_dir = root / "audio" / source
        json_dir.mkdir(parents=True, exist_ok=True)
        audio_dir.mkdir(parents=True, exist_ok=True)
        entries = []
        for i in range(count):
            rng = _clip_rng(seed, 200 + tag, i)
            clip_id = str(int(rng.integers(1000, 999999)))
            duration = float(rng.uniform(3.0, 12.0))
            scene = make_scene(rng, duration, 32000)
            write_audio(audio_dir / f"{clip_id}.flac", scene.audio, 32000)
            entries.append(
                {
                    "id": clip_id,
                    "caption": captions_for(scene.events, rng, 1, scene.arrangement)[0],
                    "duration": round(duration, 3),
                    "audio": "wav_path",
                    "download_link": f"https://example.invalid/{clip_id}",
                }
            )
        (json_dir / f"{stem}.json").write_text(json.dumps({"num_captions_per_audio": 1, "data": entries}))
        summary["ids"][source] = [e["id"] for e in entries]
    summary["excluded"] = summary["ids"]["FreeSound"][:excluded]
    _write_csv(root / "dcase2025_task6_excluded_freesound_ids.csv", ["sound_id"], [[i] for i in summary["excluded"]])
    return summary


def write_tacos(root: str | Path, n_clips: int = 12, seed: int = 0, test_clips: int = 3, fmt: str = "mp3") -> dict:
    """Write a TACOS style corpus as released on Zenodo (record 15379789): `annotations_strong.csv`
    (filename, text, onset, offset), `annotations_weak.csv` (filename, text), `metadata.csv`,
    `development_split.csv` / `test_split.csv` (filename) and audio in `audio/<freesound id>.<fmt>`."""
    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    strong, weak, metadata, names = [], [], [], []
    for i in range(n_clips):
        rng = _clip_rng(seed, 300, i)
        sound_id = int(rng.integers(1000, 999999))
        duration = float(rng.uniform(6.0, 15.0))
        scene = make_scene(rng, duration, 32000)
        path = write_audio(root / "audio" / f"{sound_id}.{fmt}", scene.audio, 32000)
        names.append(path.name)
        for name, on, off in zip(scene.events, scene.onsets, scene.offsets, strict=True):
            clause = EVENTS[name][int(rng.integers(len(EVENTS[name])))]
            strong.append([path.name, _sentence(clause), on, off])
        weak.append([path.name, captions_for(scene.events, rng, 1, scene.arrangement)[0]])
        metadata.append([path.name, sound_id, round(duration, 3), 0.0, round(duration, 3), scene.events[0]])
    _write_csv(root / "annotations_strong.csv", ["filename", "text", "onset", "offset"], strong)
    _write_csv(root / "annotations_weak.csv", ["filename", "text"], weak)
    _write_csv(
        root / "metadata.csv",
        ["filename", "freesound_id", "duration", "start_time_s", "end_time_s", "subclass"],
        metadata,
    )
    _write_csv(root / "development_split.csv", ["filename"], [[n] for n in names[test_clips:]])
    _write_csv(root / "test_split.csv", ["filename"], [[n] for n in names[:test_clips]])
    return {"root": str(root), "development": names[test_clips:], "test": names[:test_clips]}
