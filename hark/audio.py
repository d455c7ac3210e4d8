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
import logging
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from hark.errors import SourcedError

SAMPLE_RATE = 32000
log = logging.getLogger(__name__)

# A decode shorter than this fraction of the declared length is treated as truncated. Codec priming and
# padding move the count by a few milliseconds, never by 10 %.
MIN_DECLARED_FRACTION = 0.9
# Below this a declared sample rate is a broken or hostile header, not audio (telephone speech is 8 kHz): an 80 KB
# WAV declaring 1 Hz decoded to 5.5 hours at 32 kHz, hundreds of windows to embed.
MIN_SAMPLE_RATE = 1000

_HEAD_BYTES = 65536
# An Ogg page is at most 27 + 255 + 255 * 255 bytes: the last one lies in this many bytes from the end.
_OGG_TAIL_BYTES = 66000
# libsndfile reports this (or -1) when it cannot know the length up front.
_UNKNOWN_FRAMES = (1 << 62) - 1


class AudioDecodeError(SourcedError, ValueError):
    """A file (or buffer) that cannot be turned into usable audio; `reason` says why in plain words."""


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


def _check_length(frames: int, rate: int, declared: int | None, label: str) -> None:
    if frames == 0:
        if declared:
            raise AudioDecodeError(
                label,
                f"no audio samples decoded although the header declares "
                f"{declared / rate:.2f} s; the file is probably truncated",
            )
        raise AudioDecodeError(label, "no audio samples decoded (empty or 0-second audio)")
    if declared and frames < MIN_DECLARED_FRACTION * declared:
        raise AudioDecodeError(
            label,
            f"decoded only {frames / rate:.2f} s but the header declares {declared / rate:.2f} s "
            f"({100 * frames / declared:.0f} %); the file is probably truncated",
        )


def _ogg_tail_problem(source: Source, head: bytes) -> str | None:
    """Why an Ogg stream is cut short, or None when it ends properly.

    libsndfile and FFmpeg take an Ogg file's length from the granule position of its last page, so a cut
    file decodes "successfully" to the cut. A complete stream ends exactly at the end of a page carrying the
    end-of-stream flag; a cut one ends inside a page, or after a page without that flag.
    """
    if not head.startswith(b"OggS"):
        return None
    if isinstance(source, bytes | bytearray | memoryview):
        tail = bytes(source[-_OGG_TAIL_BYTES:])
    else:
        with open(os.fspath(source), "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _OGG_TAIL_BYTES))
            tail = handle.read()
    position = tail.rfind(b"OggS")
    while position >= 0:
        page = tail[position:]
        if len(page) >= 27:
            segments = page[26]
            if len(page) >= 27 + segments:
                body = sum(page[27 : 27 + segments])
                if 27 + segments + body == len(page):
                    if page[5] & 0x04:
                        return None
                    return "the Ogg stream has no end-of-stream page"
        position = tail.rfind(b"OggS", 0, position)
    return "the file ends inside an Ogg page"


class _MonoSink:
    """Mixes blocks to mono and resamples them as a stream (soxr keeps its filter state across blocks)."""

    def __init__(self, rate: int, out_rate: int) -> None:
        self.rate = rate
        self.out_rate = out_rate
        self.frames_in = 0
        self.frames_out = 0
        self._stream = soxr.ResampleStream(rate, out_rate, 1, dtype="float32", quality="HQ") \
            if rate != out_rate else None

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """`block` is [frames, channels] float32; returns the mono output that is ready."""
        self.frames_in += len(block)
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        if self._stream is not None:
            mono = self._stream.resample_chunk(mono, last=last)
        self.frames_out += len(mono)
        return mono


def _finite(block: np.ndarray, label: str) -> np.ndarray:
    if not np.isfinite(block).all():
        raise AudioDecodeError(label, "the audio contains NaN or infinite sample values")
    return block


def _stream_soundfile(handle: sf.SoundFile, block_frames: int) -> Iterator[np.ndarray]:
    """[frames, channels] blocks; a read error mid-file ends the stream (the length check judges it)."""
    try:
        # Plain reads, not `blocks()`: that one trusts the declared length and pads a truncated MP3.
        while True:
            block = handle.read(block_frames, dtype="float32", always_2d=True)
            if not len(block):
                break
            yield block
    except MemoryError:
        raise
    except Exception as exc:
        log.debug("libsndfile stopped mid-file: %s", exc)


def _stream_pyav(source: Source, skip_frames: int, state: dict) -> Iterator[np.ndarray]:
    """[frames, channels] blocks from FFmpeg after the first `skip_frames` frames.

    `state` receives the rate, the declared length and a mid-stream failure, for the caller's checks.
    """
    import av  # imported lazily: most files never need FFmpeg

    try:
        container = av.open(_open_arg(source), mode="r")
    except MemoryError:
        raise
    except Exception as exc:
        raise _BackendError(_clean_reason(exc)) from exc
    try:
        streams = container.streams.audio
        if not streams:
            raise _BackendError("the file has no audio stream")
        stream = streams[0]
        state["header_rate"] = stream.rate or stream.codec_context.sample_rate or None
        if stream.duration and stream.time_base:
            state["declared_seconds"] = float(stream.duration * stream.time_base)
        elif container.duration:
            state["declared_seconds"] = container.duration / av.time_base
        # Any sample format the codec emits (s16, s32p, fltp, ...) becomes planar float32.
        resampler = av.AudioResampler(format="fltp")
        seen = 0

        def emit(frames):
            nonlocal seen
            for converted in frames:
                planes = converted.to_ndarray()
                start = max(0, skip_frames - seen)
                seen += planes.shape[1]
                if start < planes.shape[1]:
                    yield np.ascontiguousarray(planes[:, start:].T, dtype=np.float32)

        try:
            for frame in container.decode(stream):
                state["rate"] = state.get("rate") or frame.sample_rate
                yield from emit(resampler.resample(frame))
            yield from emit(resampler.resample(None))
        except (MemoryError, AudioDecodeError, GeneratorExit):
            raise
        except Exception as exc:
            state["failure"] = exc
    except (_BackendError, MemoryError, AudioDecodeError, GeneratorExit):
        raise
    except Exception as exc:
        raise _BackendError(_clean_reason(exc)) from exc
    finally:
        container.close()


def _check_rate(rate: int, label: str) -> None:
    if rate < MIN_SAMPLE_RATE:
        raise AudioDecodeError(label, f"sample rate {rate} Hz is below {MIN_SAMPLE_RATE} Hz: a broken header, not "
                                      "audio")


def iter_audio(source: Source, sample_rate: int = SAMPLE_RATE, block_seconds: float = 10.0) -> Iterator[np.ndarray]:
    """Decode a file path or an in-memory file as a stream of 1-D float32 mono blocks at `sample_rate`.

    Memory is bounded by the block length, not the recording's. Checks as `decode_audio`; a file that turns
    out truncated raises `AudioDecodeError` at the end of the stream (after the blocks decoded before the
    cut), so a caller must not commit anything before the generator is exhausted.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    label = _label(source)
    head = _read_head(source, label)
    text_kind = _text_kind(head)
    if text_kind is not None:
        raise AudioDecodeError(label, f"not an audio file: the content is {text_kind}")
    ogg_problem = _ogg_tail_problem(source, head)
    if ogg_problem is not None:
        raise AudioDecodeError(label, f"truncated: {ogg_problem}; the file was cut short")
    riff_declared = _riff_declared_frames(head)

    handle = None
    sf_failure = None
    try:
        handle = sf.SoundFile(_open_arg(source))
    except MemoryError:
        raise
    except Exception as exc:
        sf_failure = _BackendError(_clean_reason(exc))
    if handle is not None:
        with handle:
            rate = int(handle.samplerate)
            _check_rate(rate, label)
            sf_declared = int(handle.frames) if 0 < handle.frames < _UNKNOWN_FRAMES else None
            declared = max(filter(None, (sf_declared, riff_declared)), default=None)
            sink = _MonoSink(rate, sample_rate)
            block_frames = max(1024, round(block_seconds * rate))
            for block in _stream_soundfile(handle, block_frames):
                out = sink.push(_finite(block, label))
                if len(out):
                    yield out
        if declared and sink.frames_in < MIN_DECLARED_FRACTION * declared:
            # libsndfile stops at the first damaged MP3 frame (or read error) where FFmpeg resynchronises;
            # let FFmpeg go on from where libsndfile stopped before calling the file truncated.
            state: dict = {}
            try:
                for block in _stream_pyav(source, sink.frames_in, state):
                    if state.get("rate") != rate:
                        break
                    out = sink.push(_finite(block, label))
                    if len(out):
                        yield out
            except _BackendError:
                pass
        tail = sink.push(np.zeros((0, 1), np.float32), last=True)
        if len(tail):
            yield tail
        _check_length(sink.frames_in, rate, declared, label)
        return

    state = {}
    sink = None
    try:
        for block in _stream_pyav(source, 0, state):
            if sink is None:
                rate = state.get("rate") or state.get("header_rate") or sample_rate
                _check_rate(rate, label)
                sink = _MonoSink(rate, sample_rate)
            out = sink.push(_finite(block, label))
            if len(out):
                yield out
    except _BackendError as av_failure:
        raise AudioDecodeError(label, f"unrecognised format or corrupt data (FFmpeg: {av_failure.reason}; "
                               f"libsndfile: {sf_failure.reason})") from None
    rate = (sink.rate if sink else None) or state.get("header_rate") or 0
    seconds = state.get("declared_seconds")
    declared = round(seconds * rate) if seconds and rate else None
    if riff_declared:
        declared = max(declared or 0, riff_declared)
    frames = sink.frames_in if sink else 0
    failure = state.get("failure")
    if failure is not None and (not declared or frames < MIN_DECLARED_FRACTION * declared):
        of = f" of {declared / rate:.2f} s" if declared else ""
        decoded_s = frames / rate if rate else 0.0
        raise AudioDecodeError(label, f"corrupt or truncated data: decoding stopped at {decoded_s:.2f} s{of} "
                               f"({_clean_reason(failure)}); libsndfile: {sf_failure.reason}")
    if sink is not None:
        tail = sink.push(np.zeros((0, 1), np.float32), last=True)
        if len(tail):
            yield tail
    _check_length(frames, rate or sample_rate, declared, label)


def decode_audio(source: Source, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a file path or an in-memory file to 1-D float32 mono at `sample_rate`.

    Channels are averaged; resampling uses soxr at 'HQ' quality. Raises `AudioDecodeError` for missing,
    empty, non-audio, truncated, zero-length or non-finite input, and never lets a library exception escape.
    The whole recording is held in memory: long recordings should use `iter_audio`.
    """
    blocks = list(iter_audio(source, sample_rate))
    if not blocks:
        return np.zeros(0, np.float32)
    return np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)


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
