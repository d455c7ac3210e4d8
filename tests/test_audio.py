"""Decoding: formats, rates and channel layouts come out as 32 kHz mono with the right content; every
kind of broken input raises AudioDecodeError with a reason that says what is wrong."""

from __future__ import annotations

import os
import pickle
import re
import struct
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
    with pytest.raises(AudioDecodeError, match="below 1000 Hz"):  # the header's duration (hours) is no answer
        audio_duration(path)


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


# Broken and unusual files found by an adversarial probe (each failed before the fix next to it in hark/audio.py)


def _decode_in_thread(path, seconds: float = 20.0):
    """decode_audio in a daemon thread: a hang fails the test instead of blocking the suite."""
    import threading

    outcome: list = []

    def run():
        try:
            outcome.append(decode_audio(path))
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"decode_audio({path}) still running after {seconds} s"
    return outcome[0]


def test_named_pipes_and_devices_are_refused_at_once(tmp_path):
    fifo = tmp_path / "stream.wav"
    os.mkfifo(fifo)  # no writer: opening it for reading would block forever
    error = _decode_in_thread(fifo)
    assert isinstance(error, AudioDecodeError) and "named pipe" in error.reason
    endless = tmp_path / "endless.mp3"
    endless.symlink_to("/dev/zero")  # FFmpeg's MP3 probe read it forever
    error = _decode_in_thread(endless)
    assert isinstance(error, AudioDecodeError) and "device" in error.reason
    loop = tmp_path / "loop.wav"
    loop.symlink_to(loop)
    _expect_error(loop, "symbolic links")


def test_a_relative_name_that_looks_like_a_url_is_that_file(tmp_path, monkeypatch):
    """FFmpeg read "file:y.m4a" as a protocol URL (so it decoded y.m4a) and "http:x.m4a" as a web address."""
    monkeypatch.chdir(tmp_path)
    _write_pyav(tmp_path / "y.m4a", "mp4", "aac", 16000, 1)
    short = _tone(16000, 0.25)
    with_prefix = tmp_path / "file:y.m4a"
    _write_pyav(with_prefix, "mp4", "aac", 44100, 1)
    (tmp_path / "http:x.m4a").write_bytes(with_prefix.read_bytes())
    for name in ("file:y.m4a", "http:x.m4a"):
        audio = decode_audio(name)
        assert abs(len(audio) / SAMPLE_RATE - 1.0) < 0.1 and len(audio) > 2 * len(short), name
        assert abs(_peak_hz(audio) - TONE_HZ) < 20


@pytest.mark.parametrize("amplitude", [1e6, 1e37])
def test_float_samples_far_beyond_full_scale_are_corrupt(tmp_path, amplitude):
    """1e37 overflowed the resampler to NaN; 1e6 came out as 1e6 (integers stored as floats, or garbage)."""
    path = tmp_path / "loud.wav"
    sf.write(path, (_tone(44100) / AMPLITUDE * amplitude).astype(np.float32), 44100, subtype="FLOAT")
    _expect_error(path, "times full scale")
    sf.write(path, _tone(44100) * 2.5, 44100, subtype="FLOAT")  # a little headroom is still audio
    assert abs(float(np.abs(decode_audio(path)).max()) - 2.5 * AMPLITUDE) < 0.05


def test_random_bytes_behind_mpeg_frame_headers_are_not_audio(tmp_path):
    rng = np.random.default_rng(3)
    frames = [b"\xff\xfb\x90\x64" + rng.integers(0, 256, 413, dtype=np.uint8).tobytes() for _ in range(200)]
    path = tmp_path / "noise.mp3"
    path.write_bytes(b"".join(frames))
    _expect_error(path, "times full scale")


def _cut(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("kind", ["wav-95", "aiff", "rf64", "w64", "ima-adpcm", "wav-late-data"])
def test_cut_files_whose_header_states_the_length_are_truncated(tmp_path, kind):
    """libsndfile derives these formats' length from the file size; the header's own length catches the cut (a WAV
    cut by 5 % passed the 10 % tolerance meant for lossy codecs; AIFF, RF64, W64, ADPCM and a data chunk beyond the
    first 64 KiB were not checked at all)."""
    tone = _tone(22050, 2.0)
    path = tmp_path / f"{kind}.{'w64' if kind == 'w64' else 'aiff' if kind == 'aiff' else 'wav'}"
    if kind == "wav-late-data":
        pcm = (tone * 32767).astype("<i2").tobytes()
        note = b"LIST" + struct.pack("<I", 100_000) + b"INFO" + bytes(99_996)
        fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 22050, 44100, 2, 16)
        body = b"WAVE" + fmt + note + b"data" + struct.pack("<I", len(pcm)) + pcm
        path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    else:
        fmt, subtype = {"wav-95": ("WAV", "PCM_16"), "aiff": ("AIFF", "PCM_16"), "rf64": ("RF64", "PCM_16"),
                        "w64": ("W64", "PCM_16"), "ima-adpcm": ("WAV", "IMA_ADPCM")}[kind]
        sf.write(path, tone, 22050, format=fmt, subtype=subtype)
    assert abs(len(decode_audio(path)) / SAMPLE_RATE - 2.0) < 0.05  # whole, it decodes
    _cut(path, 0.95 if kind == "wav-95" else 0.75 if kind == "wav-late-data" else 0.5)
    _expect_error(path, "declares 2.0", "truncated or damaged")


def test_lossless_files_of_unknown_length_decode(tmp_path):
    """A FLAC whose STREAMINFO leaves the length unknown (0, as streaming encoders write) and a WAV whose data size
    is 0 (a writer that could not seek back) decoded to nothing."""
    flac = tmp_path / "stream.flac"
    sf.write(flac, _tone(44100, 2.0), 44100, format="FLAC")
    data = bytearray(flac.read_bytes())
    data[21] &= 0xF0  # STREAMINFO's 36-bit total-samples field: bytes 21 (low nibble) to 25
    data[22:26] = bytes(4)
    flac.write_bytes(bytes(data))
    assert abs(len(decode_audio(flac)) / SAMPLE_RATE - 2.0) < 0.01
    wav = tmp_path / "stream.wav"
    sf.write(wav, _tone(16000, 1.0), 16000, subtype="PCM_16")
    data = bytearray(wav.read_bytes())
    at = data.find(b"data")
    data[at + 4 : at + 8] = bytes(4)
    wav.write_bytes(bytes(data))
    assert abs(len(decode_audio(wav)) / SAMPLE_RATE - 1.0) < 0.01


def test_ogg_files_with_tags_after_the_last_page_decode_and_a_missing_page_is_damage(tmp_path):
    path = tmp_path / "tone.ogg"
    sf.write(path, _tone(44100, 5.0), 44100, format="OGG", subtype="VORBIS")
    ogg = path.read_bytes()
    id3v1 = b"TAG" + b"Title".ljust(30) + b"Artist".ljust(30) + b"Album".ljust(30) + b"2020" + bytes(31)
    for trailer in (id3v1, bytes(512), bytes(100) + id3v1):
        path.write_bytes(ogg + trailer)  # "the file ends inside an Ogg page" before
        assert abs(len(decode_audio(path)) / SAMPLE_RATE - 5.0) < 0.05
    pages = [m.start() for m in re.finditer(b"OggS", ogg)]
    middle = len(pages) // 2
    path.write_bytes(ogg[: pages[middle]] + ogg[pages[middle + 1]:])  # decoded 2.16 s of 5 without a word
    _expect_error(path, "5.00 s", "truncated or damaged")


def test_chained_ogg_decodes_every_stream(tmp_path):
    """Streams one after another (a radio recording): libsndfile decoded the first and stopped."""
    first, second = tmp_path / "a.ogg", tmp_path / "b.ogg"
    sf.write(first, _tone(44100, 2.0), 44100, format="OGG", subtype="VORBIS")
    sf.write(second, _tone(44100, 3.0), 44100, format="OGG", subtype="VORBIS")
    chain = tmp_path / "chain.ogg"
    chain.write_bytes(first.read_bytes() + second.read_bytes())
    assert abs(len(decode_audio(chain)) / SAMPLE_RATE - 5.0) < 0.05


def test_a_stream_whose_rate_changes_midway_keeps_its_speed(tmp_path):
    """Concatenated ADTS streams at 22.05 and 44.1 kHz: the second half was resampled as if it were at the first
    rate (half speed, a 1 kHz tone at 2 kHz)."""
    low, high = tmp_path / "low.aac", tmp_path / "high.aac"
    _write_pyav(low, "adts", "aac", 22050, 1)
    _write_pyav(high, "adts", "aac", 44100, 1)
    both = tmp_path / "both.aac"
    both.write_bytes(low.read_bytes() + high.read_bytes())
    audio = decode_audio(both)
    assert abs(len(audio) / SAMPLE_RATE - 2.0) < 0.15
    second = audio[len(audio) // 2 + SAMPLE_RATE // 5 : -SAMPLE_RATE // 5]
    assert abs(_peak_hz(second) - TONE_HZ) < 20


@pytest.mark.parametrize(("content", "reason"), [
    (b"R", "only 1 byte: too short"),
    (b"RIFF\xac\x58\x01\x00", "only 8 bytes: the header is cut short"),  # was "the content is plain text"
    (bytes(65536) + b"\xff\xfb\x90\x64" * 10, "all zero bytes"),  # FFmpeg read a file of zeros whole
])
def test_short_and_empty_content(tmp_path, content, reason):
    path = tmp_path / "x.mp3"
    path.write_bytes(content)
    _expect_error(path, reason)


def test_a_sample_rate_above_audio_is_a_broken_header(tmp_path):
    path = tmp_path / "fast.aiff"
    sf.write(path, _tone(44100), 44100, format="AIFF")
    data = bytearray(path.read_bytes())
    at = data.find(b"COMM") + 16  # the 80-bit rate
    data[at : at + 10] = b"\x40\x63" + b"\x80" + bytes(7)  # 2^100 Hz; libsndfile clamps it to 67 MHz
    path.write_bytes(bytes(data))
    _expect_error(path, "Hz is above")


def test_decode_audio_can_stop_early_and_reports_memory_exhaustion(tmp_path, monkeypatch):
    path = tmp_path / "long.flac"
    sf.write(path, np.tile(_tone(16000), 6), 16000, format="FLAC")
    assert len(decode_audio(path, max_seconds=1.5)) == round(1.5 * SAMPLE_RATE)

    def exhausted(*args, **kwargs):
        raise MemoryError

    # A small file can hold hours: a 72 KB FLAC of silence decodes to 2.6 GB at 32 kHz.
    monkeypatch.setattr(np, "concatenate", exhausted)
    _expect_error(path, "too long to decode into memory")
