"""Audio decoding to 32 kHz mono float32, shared by training and the runtime.

This module must stay free of torch: workers and the query service import it from images that only carry
numpy, soundfile, soxr and PyAV.

Decoding tries libsndfile first (fast, exact for wav/flac/ogg/mp3) and falls back to FFmpeg through PyAV
for everything else (m4a, aac, opus, webm, ...). Both libraries can hand back less audio than the file
claims without raising: libsndfile reads a truncated MP3 "successfully" up to the cut, and hides a
truncated WAV by deriving the frame count from the file size; FFmpeg can return zero samples for a stream
that has no decodable packets. So every decode is checked against the length the container declares, and
anything unusable raises `AudioDecodeError` with a reason a person can act on.
"""

from __future__ import annotations

import io
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 32000

# A decode shorter than this fraction of the declared length is treated as truncated. Codec priming and
# padding move the count by a few milliseconds, never by 10 %.
MIN_DECLARED_FRACTION = 0.9

_HEAD_BYTES = 65536
# libsndfile reports this (or -1) when it cannot know the length up front.
_UNKNOWN_FRAMES = (1 << 62) - 1


class AudioDecodeError(ValueError):
    """A file (or buffer) that cannot be turned into usable audio; `reason` says why in plain words."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self):
        # Rebuild from both fields: worker processes and task queues ship exceptions by pickling.
        return (type(self), (self.source, self.reason))


@dataclass
class _Decoded:
    samples: np.ndarray  # [frames, channels] float32
    sample_rate: int
    declared_frames: int | None  # what the header promises, when it promises anything
    backend: str


class _BackendError(Exception):
    def __init__(self, reason: str, declared_frames: int | None = None, sample_rate: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.declared_frames = declared_frames
        self.sample_rate = sample_rate


Source = str | os.PathLike | bytes


def _label(source: Source) -> str:
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes in memory>"
    return os.fspath(source)


def _open_arg(source: Source) -> str | io.BytesIO:
    # Each backend gets a fresh handle: a BytesIO left at the end by libsndfile would look empty to FFmpeg.
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source))
    return os.fspath(source)


def _read_head(source: Source, label: str) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        head = bytes(source[:_HEAD_BYTES])
    else:
        path = Path(os.fspath(source))
        if not path.exists():
            raise AudioDecodeError(label, "file not found")
        if path.is_dir():
            raise AudioDecodeError(label, "is a directory, not an audio file")
        try:
            with path.open("rb") as handle:
                head = handle.read(_HEAD_BYTES)
        except OSError as exc:
            raise AudioDecodeError(label, f"cannot read the file ({exc.strerror or exc})") from exc
    if not head:
        raise AudioDecodeError(label, "empty file (0 bytes)")
    return head


def _text_kind(head: bytes) -> str | None:
    """Name the kind of text when the bytes are text rather than audio (a saved error page, a note...)."""
    sample = head[:1024]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the sample boundary is still text.
        if exc.start < len(sample) - 4:
            return None
        text = sample[: exc.start].decode("utf-8")
    if not text or any(not (ch.isprintable() or ch in "\r\n\t\f") for ch in text):
        return None
    lowered = text.lstrip().lower()
    if lowered.startswith(("<!doctype html", "<html")):
        return "an HTML page"
    if lowered.startswith(("{", "[")):
        return "JSON or other text"
    if lowered.startswith("<?xml"):
        return "an XML document"
    return "plain text"


def _riff_declared_frames(head: bytes) -> int | None:
    """Frame count promised by a WAV's data chunk; libsndfile silently trusts the file size instead."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    block_align = None
    offset = 12
    while offset + 8 <= len(head):
        chunk_id = head[offset : offset + 4]
        (size,) = struct.unpack("<I", head[offset + 4 : offset + 8])
        if chunk_id == b"fmt " and offset + 22 <= len(head):
            (format_tag,) = struct.unpack("<H", head[offset + 8 : offset + 10])
            # For compressed payloads block_align counts codec blocks, not frames.
            if format_tag not in (1, 3, 0xFFFE):
                return None
            (block_align,) = struct.unpack("<H", head[offset + 20 : offset + 22])
        elif chunk_id == b"data":
            # Streaming writers leave 0 or 0xFFFFFFFF when they could not seek back to fill the size in.
            if not block_align or size in (0, 0xFFFFFFFF):
                return None
            return size // block_align
        offset += 8 + size + (size & 1)
    return None


def _decode_soundfile(source: Source) -> _Decoded:
    declared = None
    rate = None
    try:
        with sf.SoundFile(_open_arg(source)) as handle:
            rate = int(handle.samplerate)
            if 0 < handle.frames < _UNKNOWN_FRAMES:
                declared = int(handle.frames)
            samples = handle.read(dtype="float32", always_2d=True)
    except MemoryError:
        raise
    except Exception as exc:
        raise _BackendError(_clean_reason(exc), declared, rate) from exc
    return _Decoded(samples, rate, declared, "libsndfile")


def _decode_pyav(source: Source, hint: _BackendError | None) -> _Decoded:
    import av  # imported lazily: most files never need FFmpeg

    try:
        container = av.open(_open_arg(source), mode="r")
    except MemoryError:
        raise
    except Exception as exc:
        raise _BackendError(_clean_reason(exc)) from exc
    chunks: list[np.ndarray] = []
    rate = None
    header_rate = None
    declared_seconds = None
    failure: Exception | None = None
    try:
        streams = container.streams.audio
        if not streams:
            raise _BackendError("the file has no audio stream")
        stream = streams[0]
        header_rate = stream.rate or stream.codec_context.sample_rate or None
        if stream.duration and stream.time_base:
            declared_seconds = float(stream.duration * stream.time_base)
        elif container.duration:
            declared_seconds = container.duration / av.time_base
        # Convert whatever sample format the codec emits (s16, s32p, fltp, ...) to planar float32; layout
        # and rate stay as the first frame has them.
        resampler = av.AudioResampler(format="fltp")
        try:
            for frame in container.decode(stream):
                rate = rate or frame.sample_rate
                for converted in resampler.resample(frame):
                    chunks.append(converted.to_ndarray())
            for converted in resampler.resample(None):
                chunks.append(converted.to_ndarray())
        except MemoryError:
            raise
        except Exception as exc:
            failure = exc
    except _BackendError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise _BackendError(_clean_reason(exc)) from exc
    finally:
        container.close()

    samples = (
        np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False) if chunks else np.zeros((0, 1), np.float32)
    )
    rate = rate or header_rate or (hint.sample_rate if hint else None) or 0
    declared = round(declared_seconds * rate) if declared_seconds and rate else None
    if hint is not None and hint.declared_frames and hint.sample_rate == rate:
        # libsndfile read the header before failing; its count is exact where FFmpeg's is an estimate.
        declared = hint.declared_frames
    if failure is not None:
        decoded_s = len(samples) / rate if rate else 0.0
        if not declared or len(samples) < MIN_DECLARED_FRACTION * declared:
            of = f" of {declared / rate:.2f} s" if declared else ""
            raise _BackendError(
                f"corrupt or truncated data: decoding stopped at {decoded_s:.2f} s{of} ({_clean_reason(failure)})"
            ) from failure
        # The damage is confined to the tail; the rest is usable audio.
    return _Decoded(samples, rate, declared, "ffmpeg")


def _clean_reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # Library messages carry errno codes and repeat the path we already print in front of the reason.
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    text = re.sub(r":\s*'[^']*'$", "", text)
    for prefix in ("Error opening ", "Error : "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if text.startswith("'") and ": " in text:
        text = text.split(": ", 1)[1]
    # Decoding from memory: libsndfile names the buffer object instead of a file.
    text = re.sub(r"^<_io\.BytesIO object at 0x[0-9a-f]+>:\s*", "", text)
    return text.rstrip(".")


def _check_length(decoded: _Decoded, declared: int | None, label: str) -> None:
    frames = len(decoded.samples)
    if frames == 0:
        if declared:
            raise AudioDecodeError(
                label,
                f"no audio samples decoded although the header declares "
                f"{declared / decoded.sample_rate:.2f} s; the file is probably truncated",
            )
        raise AudioDecodeError(label, "no audio samples decoded (empty or 0-second audio)")
    if declared and frames < MIN_DECLARED_FRACTION * declared:
        rate = decoded.sample_rate
        raise AudioDecodeError(
            label,
            f"decoded only {frames / rate:.2f} s but the header declares {declared / rate:.2f} s "
            f"({100 * frames / declared:.0f} %); the file is probably truncated",
        )


def _to_mono_resampled(decoded: _Decoded, sample_rate: int) -> np.ndarray:
    mono = decoded.samples.mean(axis=1, dtype=np.float32) if decoded.samples.shape[1] > 1 else decoded.samples[:, 0]
    if decoded.sample_rate != sample_rate:
        mono = soxr.resample(mono, decoded.sample_rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def decode_audio(source: Source, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a file path or an in-memory file to 1-D float32 mono at `sample_rate`.

    Channels are averaged; resampling uses soxr at 'HQ' quality. Raises `AudioDecodeError` for missing,
    empty, non-audio, truncated, zero-length or non-finite input, and never lets a library exception escape.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    label = _label(source)
    head = _read_head(source, label)
    text_kind = _text_kind(head)
    if text_kind is not None:
        raise AudioDecodeError(label, f"not an audio file: the content is {text_kind}")
    riff_declared = _riff_declared_frames(head)

    try:
        decoded = _decode_soundfile(source)
    except _BackendError as sf_failure:
        try:
            decoded = _decode_pyav(source, hint=sf_failure)
        except _BackendError as av_failure:
            if av_failure.reason.startswith("corrupt or truncated"):
                # FFmpeg recognised the format and got partway: that is the more useful story.
                reason = f"{av_failure.reason}; libsndfile: {sf_failure.reason}"
            else:
                reason = (
                    f"unrecognised format or corrupt data (FFmpeg: {av_failure.reason}; "
                    f"libsndfile: {sf_failure.reason})"
                )
            raise AudioDecodeError(label, reason) from None
    else:
        declared = max(filter(None, (decoded.declared_frames, riff_declared)), default=None)
        if declared and len(decoded.samples) < MIN_DECLARED_FRACTION * declared:
            # libsndfile stops at the first damaged MP3 frame where FFmpeg resynchronises; let FFmpeg try
            # before calling the file truncated.
            try:
                retry = _decode_pyav(source, hint=None)
            except _BackendError:
                retry = None
            if (
                retry is not None
                and retry.sample_rate == decoded.sample_rate
                and (len(retry.samples) > len(decoded.samples))
            ):
                decoded = retry
        decoded.declared_frames = declared

    declared = decoded.declared_frames
    if riff_declared and decoded.backend == "ffmpeg":
        declared = max(declared or 0, riff_declared)
    _check_length(decoded, declared, label)
    if not np.isfinite(decoded.samples).all():
        raise AudioDecodeError(label, "the audio contains NaN or infinite sample values")
    return _to_mono_resampled(decoded, sample_rate)


def audio_duration(source: Source) -> float:
    """Duration in seconds read from the header, without decoding the audio."""
    label = _label(source)
    head = _read_head(source, label)
    text_kind = _text_kind(head)
    if text_kind is not None:
        raise AudioDecodeError(label, f"not an audio file: the content is {text_kind}")
    try:
        info = sf.info(_open_arg(source))
        if 0 < info.frames < _UNKNOWN_FRAMES and info.samplerate > 0:
            riff = _riff_declared_frames(head)
            frames = min(info.frames, riff) if riff else info.frames
            return frames / info.samplerate
    except MemoryError:
        raise
    except Exception:
        pass
    import av

    try:
        with av.open(_open_arg(source), mode="r") as container:
            streams = container.streams.audio
            if not streams:
                raise AudioDecodeError(label, "the file has no audio stream")
            stream = streams[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            if container.duration:
                return container.duration / av.time_base
    except AudioDecodeError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise AudioDecodeError(label, f"cannot read the header: {_clean_reason(exc)}") from None
    raise AudioDecodeError(label, "the container does not declare a duration")
