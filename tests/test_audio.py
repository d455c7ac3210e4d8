"""Decoding: formats, rates and channel layouts come out as 32 kHz mono with the right content; every
kind of broken input raises AudioDecodeError with a reason that says what is wrong."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hark.audio import SAMPLE_RATE, AudioDecodeError, audio_duration, decode_audio

TONE_HZ = 1000.0
AMPLITUDE = 0.5


def _tone(rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def _write(path: Path, rate: int, channels: int, seconds: float = 1.0) -> np.ndarray:
    mono = _tone(rate, seconds)
    # Unequal channels: averaging gives back `mono`, keeping only one channel would not.
    data = np.stack([mono * 1.5, mono * 0.5], axis=1) if channels == 2 else mono
    fmt = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}[path.suffix[1:]]
    sf.write(path, data, rate, format=fmt)
    return mono


def _write_pyav(path: Path, container: str, codec: str, rate: int, channels: int, options=None) -> None:
    import av

    layout = "stereo" if channels == 2 else "mono"
    mono = _tone(rate)
    planes = np.stack([mono * 1.5, mono * 0.5]) if channels == 2 else mono[None, :]
    with av.open(str(path), "w", format=container, options=options or {}) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        for start in range(0, planes.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(planes[:, start : start + 1024]), format="fltp", layout=layout
            )
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _peak_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)[np.argmax(spectrum)])


def _rms(audio: np.ndarray) -> float:
    core = audio[len(audio) // 10 : -len(audio) // 10]  # skip codec onset/offset transients
    return float(np.sqrt(np.mean(core.astype(np.float64) ** 2)))


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_decodes_formats_rates_and_layouts(tmp_path, ext, rate, channels):
    if ext == "mp3" and "MP3" not in sf.available_formats():
        pytest.skip("libsndfile built without MP3")
    path = tmp_path / f"tone.{ext}"
    _write(path, rate, channels)

    audio = decode_audio(path)

    assert audio.dtype == np.float32 and audio.ndim == 1
    # Lossy codecs add or trim up to a couple of codec frames; lossless ones are exact to a sample.
    slack = 1 if ext in ("wav", "flac") else round(0.08 * SAMPLE_RATE)
    assert abs(len(audio) - SAMPLE_RATE) <= slack
    assert abs(_peak_hz(audio) - TONE_HZ) < 5
    # Averaging the channels restores the mono tone's level (0.5 / sqrt 2).
    assert _rms(audio) == pytest.approx(AMPLITUDE / np.sqrt(2), rel=0.08)


@pytest.mark.parametrize(
    ("name", "container", "codec"),
    [("tone.m4a", "mp4", "aac"), ("tone.webm", "webm", "libopus"), ("tone.opus", "ogg", "libopus")],
)
def test_formats_beyond_libsndfile(tmp_path, name, container, codec):
    path = tmp_path / name
    _write_pyav(path, container, codec, 48000, 2)
    if name != "tone.opus":  # libsndfile >= 1.0.29 reads Ogg Opus itself; the others need FFmpeg
        with pytest.raises(sf.LibsndfileError):
            sf.info(path)

    audio = decode_audio(path)

    assert abs(len(audio) - SAMPLE_RATE) <= round(0.05 * SAMPLE_RATE)
    assert abs(_peak_hz(audio) - TONE_HZ) < 5
    assert _rms(audio) == pytest.approx(AMPLITUDE / np.sqrt(2), rel=0.1)


def test_decodes_bytes_and_custom_rate(tmp_path):
    path = tmp_path / "tone.flac"
    _write(path, 44100, 1)
    audio = decode_audio(path.read_bytes(), sample_rate=16000)
    assert len(audio) == 16000
    assert abs(np.fft.rfftfreq(len(audio), 1 / 16000)[np.argmax(np.abs(np.fft.rfft(audio)))] - TONE_HZ) < 5


def test_native_rate_is_not_resampled(tmp_path):
    path = tmp_path / "tone.wav"
    mono = _write(path, SAMPLE_RATE, 1)
    sf.write(path, mono, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(decode_audio(path), mono)


def test_audio_duration_reads_header(tmp_path):
    path = tmp_path / "tone.ogg"
    _write(path, 22050, 2, seconds=2.5)
    assert audio_duration(path) == pytest.approx(2.5, abs=1e-3)


# ----------------------------------------------------------------------------------------------------
# Broken input


def _expect_error(source, *fragments: str) -> AudioDecodeError:
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(source)
    error = info.value
    assert isinstance(error, ValueError)
    assert str(error) == f"{error.source}: {error.reason}"
    for fragment in fragments:
        assert fragment in error.reason, error.reason
    return error


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    error = _expect_error(path, "empty file")
    assert error.source == str(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).bytes(8192))
    _expect_error(path, "unrecognised format or corrupt data")


def test_text_named_wav(tmp_path):
    path = tmp_path / "note.wav"
    path.write_text("this is a text file, not a recording\n" * 5)
    _expect_error(path, "not an audio file", "text")


def test_html_error_page_named_mp3(tmp_path):
    path = tmp_path / "download.mp3"
    path.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    _expect_error(path, "HTML")


def test_truncated_mp3_is_rejected(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("libsndfile built without MP3")
    path = tmp_path / "cut.mp3"
    _write(path, 44100, 1, seconds=3.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 5])
    _expect_error(path, "truncated", "3.00 s")


def test_truncated_wav_is_rejected_although_libsndfile_accepts_it(tmp_path):
    path = tmp_path / "cut.wav"
    _write(path, 22050, 2, seconds=2.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert sf.info(path).frames > 0  # libsndfile silently shortens the file
    _expect_error(path, "truncated", "2.00 s")


def test_truncated_flac_is_rejected(tmp_path):
    path = tmp_path / "cut.flac"
    _write(path, 44100, 1, seconds=3.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 5])
    _expect_error(path, "truncated")


def test_m4a_without_audio_data_decodes_zero_samples_and_is_rejected(tmp_path):
    # FFmpeg opens this (the header is intact) and returns no samples without raising.
    path = tmp_path / "header_only.m4a"
    _write_pyav(path, "mp4", "aac", 44100, 1, options={"movflags": "faststart"})
    data = path.read_bytes()
    path.write_bytes(data[: data.find(b"mdat") + 4])
    _expect_error(path, "no audio samples decoded", "truncated")


def test_zero_second_wav(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    _expect_error(path, "0-second")


def test_non_finite_samples(tmp_path):
    path = tmp_path / "nan.wav"
    audio = _tone(16000)
    audio[100] = np.nan
    audio[200] = np.inf
    sf.write(path, audio, 16000, subtype="FLOAT")
    _expect_error(path, "NaN or infinite")


@pytest.mark.parametrize("rate", [1, 100, 999])
def test_a_sample_rate_below_audio_is_a_broken_header(tmp_path, rate):
    """An 80 KB WAV declaring 1 Hz decoded to 5.5 hours at 32 kHz: hundreds of windows to embed from one file."""
    path = tmp_path / f"rate{rate}.wav"
    sf.write(path, _tone(20000), rate)
    _expect_error(path, f"sample rate {rate} Hz is below 1000 Hz")


def test_telephone_rate_still_decodes(tmp_path):
    path = tmp_path / "phone.wav"
    sf.write(path, _tone(8000), 8000)
    assert len(decode_audio(path)) == pytest.approx(len(_tone(8000)) / 8000 * SAMPLE_RATE, abs=2)


def test_missing_file_and_directory(tmp_path):
    _expect_error(tmp_path / "absent.wav", "not found")
    _expect_error(tmp_path, "directory")


def test_error_survives_pickling(tmp_path):
    # Worker processes and task queues ship exceptions by pickling them.
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    error = _expect_error(path, "empty")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.source, copy.reason, str(copy)) == (error.source, error.reason, str(error))


def test_bytes_source_label():
    error = _expect_error(b"", "empty")
    assert error.source == "<0 bytes in memory>"


def test_audio_module_does_not_import_torch():
    # The worker and query images carry no torch; importing it must fail loudly, not silently succeed.
    code = "import sys; sys.modules['torch'] = None; import hark.audio, hark.demo.synth; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
