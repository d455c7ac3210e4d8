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

import contextlib
import functools
import io
import logging
import os
import re
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from hark.errors import SourcedError
from hark.sources import special_kind

SAMPLE_RATE = 32000
log = logging.getLogger(__name__)

# A decode shorter than this fraction of the declared length is treated as truncated. Codec priming and
# padding move the count by a few milliseconds, never by 10 %.
MIN_DECLARED_FRACTION = 0.9
# Below this a declared sample rate is a broken or hostile header, not audio (telephone speech is 8 kHz): an 80 KB
# WAV declaring 1 Hz decoded to 5.5 hours at 32 kHz, hundreds of windows to embed.
MIN_SAMPLE_RATE = 1000
# Above this a declared rate is a broken header too (studio audio stops at 768 kHz): an AIFF declaring 1e30 Hz
# "decoded" to a hundred near-zero samples.
MAX_SAMPLE_RATE = 1_536_000
# Decoded samples beyond this many times full scale are corrupt data, not audio: random bytes behind valid MP3
# frame headers decoded to 5 s of noise peaking at 2e7, and floats near 1e37 overflowed the resampler to NaN.
# Float files may exceed full scale a little (headroom), never by 36 dB.
MAX_PEAK = 64.0

_HEAD_BYTES = 65536
# No audio file is shorter (a WAV header alone is 44 bytes, an MP3 frame header 4 + a frame).
_MIN_FILE_BYTES = 12
_AUDIO_MAGIC = (b"RIFF", b"RF64", b"FORM", b"fLaC", b"OggS", b"ID3", b".snd", b"caff", b"\x1aE\xdf\xa3")
# An Ogg page is at most 27 + 255 + 255 * 255 bytes: the last one lies in this many bytes from the end.
_OGG_TAIL_BYTES = 66000
# Containers without a length field, whose duration FFmpeg guesses from the bit rate (raw ADTS AAC): a stream whose
# bit rate changes midway was called truncated.
_ESTIMATED_DURATION = {"aac"}
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
    # Absolute: FFmpeg reads a relative name that starts with "word:" as a protocol URL, so "http:x.m4a" went to
    # the network and "file:y.m4a" decoded y.m4a instead.
    return os.path.abspath(os.fspath(source))


def _read_head(source: Source, label: str) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        head = bytes(source[:_HEAD_BYTES])
    else:
        path = Path(os.fspath(source))
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise AudioDecodeError(label, "file not found") from None
        except OSError as exc:  # a symlink loop, a name too long, no permission on a folder
            raise AudioDecodeError(label, f"cannot open the file ({exc.strerror or exc})") from None
        if stat.S_ISDIR(mode):
            raise AudioDecodeError(label, "is a directory, not an audio file")
        kind = special_kind(mode)
        if kind:
            raise AudioDecodeError(label, f"is {kind}, not a regular file")
        try:
            with path.open("rb") as handle:
                head = handle.read(_HEAD_BYTES)
        except OSError as exc:
            raise AudioDecodeError(label, f"cannot read the file ({exc.strerror or exc})") from exc
    if not head:
        raise AudioDecodeError(label, "empty file (0 bytes)")
    if len(head) < _MIN_FILE_BYTES:
        known = head.startswith(_AUDIO_MAGIC)
        raise AudioDecodeError(label, f"only {len(head)} byte{'s' if len(head) > 1 else ''}: " + (
            "the header is cut short" if known else "too short to be an audio file"))
    if len(head) == _HEAD_BYTES and not head.strip(b"\0"):
        # FFmpeg's MP3 probe reads a file of zeros whole (twice its size in memory) before giving up.
        raise AudioDecodeError(label, f"not an audio file: the first {_HEAD_BYTES // 1024} KiB are all zero bytes")
    return head


def _text_kind(head: bytes) -> str | None:
    """Name the kind of text when the bytes are text rather than audio (a saved error page, a note...)."""
    sample = head[:1024]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the sample boundary is still text; a file that ends there is not.
        if len(head) <= len(sample) or exc.reason != "unexpected end of data":
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


@contextlib.contextmanager
def _reader(source: Source) -> Iterator[Callable[[int, int], bytes]]:
    """read(offset, size) over a path or an in-memory file, one open handle for the whole walk: chunk and page
    walks seek instead of reading whole files."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = memoryview(source)
        yield lambda offset, size: bytes(data[offset:offset + size])
        return
    with open(os.fspath(source), "rb") as handle:
        def read(offset: int, size: int) -> bytes:
            handle.seek(offset)
            return handle.read(size)
        yield read


# Ogg pages a chain check walks (a page holds up to 64 KiB; 4-8 KiB in practice): hours of audio.
_MAX_OGG_PAGES = 200_000
# Chunks a walk reads before giving up: real files hold a handful; a hostile one could hold millions.
_MAX_CHUNKS = 1000
_PCM_TAGS = (1, 3, 0xFFFE)  # integer PCM, IEEE float, extensible (whose block_align still counts frames)
_AIFC_PCM = {b"NONE", b"sowt", b"twos", b"raw ", b"fl32", b"FL32", b"fl64", b"FL64", b"in24", b"in32"}


def _declared_frames(source: Source, head: bytes) -> int | None:
    """Frame count a WAV/RF64 data chunk or an AIFF COMM chunk promises, for uncompressed audio.

    libsndfile derives these formats' length from the file size, so a cut file "decodes" to the cut; the header
    still holds the length the writer meant. Chunks are walked through the file (a data chunk may lie after a
    large metadata chunk, beyond the head)."""
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        walk = functools.partial(_riff_frames, rf64=head[:4] == b"RF64")
    elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        walk = functools.partial(_aiff_frames, aifc=head[8:12] == b"AIFC")
    elif head[:4] == b"riff" and head[24:28] == b"wave":
        walk = _w64_frames
    else:
        return None
    with _reader(source) as read:
        return walk(read)


def _riff_frames(read, rf64: bool) -> int | None:
    block_align = big_data = fact = None
    compressed = False
    offset = 12
    for _ in range(_MAX_CHUNKS):
        header = read(offset, 8)
        if len(header) < 8:
            return None
        chunk_id, (size,) = header[:4], struct.unpack("<I", header[4:])
        if chunk_id == b"ds64" and rf64:
            body = read(offset + 8, 16)
            if len(body) == 16:
                big_data = struct.unpack("<Q", body[8:16])[0]
        elif chunk_id == b"fmt ":
            body = read(offset + 8, 14)
            if len(body) < 14:
                return None
            (format_tag,) = struct.unpack("<H", body[:2])
            # For compressed payloads (ADPCM, GSM) block_align counts codec blocks, not frames: their length is
            # the fact chunk's.
            compressed = format_tag not in _PCM_TAGS
            (block_align,) = struct.unpack("<H", body[12:14])
        elif chunk_id == b"fact":
            body = read(offset + 8, 4)
            fact = struct.unpack("<I", body)[0] if len(body) == 4 else None
        elif chunk_id == b"data":
            if compressed:
                return fact or None
            if rf64 and size == 0xFFFFFFFF:
                size = big_data or 0
            # Streaming writers leave 0 or 0xFFFFFFFF when they could not seek back to fill the size in.
            if not block_align or size in (0, 0xFFFFFFFF):
                return None
            return size // block_align
        offset += 8 + size + (size & 1)
    return None


def _w64_frames(read) -> int | None:
    """Sony Wave64: RIFF's layout with 16-byte GUID chunk ids, 64-bit sizes that count the 24-byte chunk header,
    and chunks aligned to 8 bytes."""
    block_align = None
    offset = 40
    for _ in range(_MAX_CHUNKS):
        header = read(offset, 24)
        if len(header) < 24:
            return None
        chunk_id, (size,) = header[:4], struct.unpack("<Q", header[16:24])
        if chunk_id == b"fmt ":
            body = read(offset + 24, 14)
            if len(body) < 14 or struct.unpack("<H", body[:2])[0] not in _PCM_TAGS:
                return None
            (block_align,) = struct.unpack("<H", body[12:14])
        elif chunk_id == b"data":
            return (size - 24) // block_align if block_align and size > 24 else None
        if size < 24:
            return None
        offset += (size + 7) & ~7
    return None


def _aiff_frames(read, aifc: bool) -> int | None:
    offset = 12
    for _ in range(_MAX_CHUNKS):
        header = read(offset, 8)
        if len(header) < 8:
            return None
        chunk_id, (size,) = header[:4], struct.unpack(">I", header[4:])
        if chunk_id == b"COMM":
            body = read(offset + 8, 22)
            if len(body) < 18:
                return None
            (frames,) = struct.unpack(">I", body[2:6])
            # AIFF-C's compressed types count packets, not frames.
            if aifc and body[18:22] not in _AIFC_PCM:
                return None
            return frames or None
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
    # libsndfile's words for "no format of mine", which read as if the path were wrong.
    if "not a regular file (possibly a pipe?)" in text:
        return "not a format it reads"
    if isinstance(exc, AttributeError | TypeError):  # PyAV on a stream whose codec FFmpeg could not set up
        return "no decoder could be set up for the audio stream"
    # FFmpeg's failed calls, e.g. "'avcodec_open2("pcm_s16le", {})' returned 22": the call is not the reason.
    text = re.sub(r":?\s*'?\w+\(.*\)'? returned -?\d+:?\s*", "", text) or "the codec rejected the stream's parameters"
    return text.rstrip(".")


def _exact_length(handle: sf.SoundFile) -> bool:
    """Whether the header's length is exact (uncompressed or lossless audio), not an estimate (MP3, Ogg)."""
    if handle.format in ("MPEG", "OGG"):
        return False
    return handle.format == "FLAC" or handle.subtype.startswith(("PCM_", "FLOAT", "DOUBLE", "ULAW", "ALAW"))


def _short(frames: int, declared: int | None, rate: int, exact: bool) -> bool:
    """Whether `frames` falls short of the declared length: by more than 10 ms (or 0.1 %) where the header's
    length is exact, by MIN_DECLARED_FRACTION where it is an estimate (codec priming and padding)."""
    if not declared:
        return False
    if exact:
        return frames < declared - max(0.01 * rate, 0.001 * declared)
    return frames < MIN_DECLARED_FRACTION * declared


def _check_length(frames: int, rate: int, declared: int | None, label: str, exact: bool = False) -> None:
    if frames == 0:
        if declared:
            raise AudioDecodeError(
                label,
                f"no audio samples decoded although the header declares "
                f"{declared / rate:.2f} s; the file is probably truncated",
            )
        raise AudioDecodeError(label, "no audio samples decoded (empty or 0-second audio)")
    if _short(frames, declared, rate, exact):
        raise AudioDecodeError(
            label,
            f"decoded only {frames / rate:.2f} s but the header declares {declared / rate:.2f} s "
            f"({100 * frames / declared:.1f} %); the file is truncated or damaged",
        )


def _ogg_tail(source: Source, head: bytes) -> tuple[str | None, int | None]:
    """Why an Ogg stream is cut short (None when it ends properly), and the sample position its last page
    declares (the stream's length; None where unknown).

    libsndfile and FFmpeg take an Ogg file's length from the granule position of its last page, so a cut
    file decodes "successfully" to the cut. A complete stream ends exactly at the end of a page carrying the
    end-of-stream flag; a cut one ends inside a page, or after a page without that flag. Taggers may append an
    ID3v1 or APE tag, or zero padding, after the last page: those are not a cut.
    """
    if not head.startswith(b"OggS"):
        return None, None
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
                size = 27 + segments + sum(page[27 : 27 + segments])
                if size == len(page) or (size < len(page) and _only_tags(page[size:])):
                    if not page[5] & 0x04:
                        return "the Ogg stream has no end-of-stream page", None
                    (granule,) = struct.unpack("<q", page[6:14])
                    # The first page's stream: a multiplexed file's last page may be another stream's (video).
                    same = len(head) >= 18 and page[14:18] == head[14:18]
                    return None, (granule if same and granule > 0 else None)
        position = tail.rfind(b"OggS", 0, position)
    return "the file ends inside an Ogg page", None


def _ogg_chained(source: Source) -> bool:
    """Whether an Ogg file chains several streams one after another (a radio recording): a stream begins after
    another has ended. libsndfile decodes only the first and FFmpeg all of them; the last page's length is the
    last stream's alone. Walks the page headers (a seek per page), not the audio."""
    offset, ended = 0, False
    with _reader(source) as read:
        for _ in range(_MAX_OGG_PAGES):
            header = read(offset, 27)
            if len(header) < 27 or header[:4] != b"OggS":
                return False
            lacing = read(offset + 27, header[26])
            if len(lacing) < header[26]:
                return False
            if header[5] & 0x02 and ended:  # a stream begins after one has ended
                return True
            ended = ended or bool(header[5] & 0x04)
            offset += 27 + header[26] + sum(lacing)
    return False


def _only_tags(tail: bytes) -> bool:
    """Whether the bytes after the last page are only ID3v1 or APEv2 tags and zero padding."""
    for _ in range(8):
        if len(tail) >= 128 and tail[-128:-125] == b"TAG":
            tail = tail[:-128]
        elif len(tail) >= 32 and tail[-32:-24] == b"APETAGEX":
            (size,) = struct.unpack("<I", tail[-20:-16])  # footer + items; a header, when present, is 32 more
            (flags,) = struct.unpack("<I", tail[-12:-8])
            total = size + (32 if flags & 0x80000000 else 0)
            if not 32 <= total <= len(tail):
                return False
            tail = tail[:-total]
        elif tail and not tail[-1]:
            tail = tail.rstrip(b"\0")
        else:
            break
    return not tail


class _MonoSink:
    """Mixes blocks to mono and resamples them as a stream (soxr keeps its filter state across blocks).

    A stream whose rate changes midway (concatenated AAC or MP3 streams) gets a new resampler from that block on;
    `frames_in` counts input in frames of the first rate, which the length checks compare with the header."""

    def __init__(self, rate: int, out_rate: int) -> None:
        self.rate = self.first_rate = rate
        self.out_rate = out_rate
        self.frames_in = 0
        self.frames_out = 0
        self._in_exact = 0.0
        self._stream = self._resampler(rate)

    def _resampler(self, rate: int):
        return soxr.ResampleStream(rate, self.out_rate, 1, dtype="float32", quality="HQ") \
            if rate != self.out_rate else None

    def push(self, block: np.ndarray, last: bool = False, rate: int | None = None) -> np.ndarray:
        """`block` is [frames, channels] float32 at `rate` (the current one when None); returns the mono output
        that is ready."""
        flushed = None
        if rate is not None and rate != self.rate:
            flushed = self._stream.resample_chunk(np.zeros(0, np.float32), last=True) if self._stream else None
            self.rate, self._stream = rate, self._resampler(rate)
        self._in_exact += len(block) * self.first_rate / self.rate
        self.frames_in = round(self._in_exact)
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        if self._stream is not None:
            mono = self._stream.resample_chunk(mono, last=last)
        if flushed is not None and len(flushed):
            mono = np.concatenate([flushed, mono])
        self.frames_out += len(mono)
        return mono


def _finite(block: np.ndarray, label: str) -> np.ndarray:
    """`block`, once it is known to hold finite samples within MAX_PEAK of full scale."""
    if not np.isfinite(block).all():
        raise AudioDecodeError(label, "the audio contains NaN or infinite sample values")
    peak = float(np.abs(block).max()) if block.size else 0.0
    if peak > MAX_PEAK:
        raise AudioDecodeError(label, f"corrupt data: samples reach {peak:.3g} times full scale (floats stored at "
                                      "integer scale, or garbage decoded as audio)")
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
        if container.format.name in _ESTIMATED_DURATION:
            pass
        elif stream.duration and stream.time_base:
            state["declared_seconds"] = float(stream.duration * stream.time_base)
        elif container.duration:
            state["declared_seconds"] = container.duration / av.time_base
        # Any sample format the codec emits (s16, s32p, fltp, ...) becomes planar float32.
        resampler = av.AudioResampler(format="fltp")
        seen = 0

        def emit(frames):
            nonlocal seen
            for converted in frames:
                # A concatenated stream may change rate midway; the resampler passes each frame's rate on.
                state["block_rate"] = converted.sample_rate
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
    if rate > MAX_SAMPLE_RATE:
        raise AudioDecodeError(label, f"sample rate {rate} Hz is above {MAX_SAMPLE_RATE} Hz: a broken header, not "
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
    ogg_problem, ogg_declared = _ogg_tail(source, head)
    if ogg_problem is not None:
        raise AudioDecodeError(label, f"truncated: {ogg_problem}; the file was cut short")
    chained = head.startswith(b"OggS") and _ogg_chained(source)
    header_declared = _declared_frames(source, head) or (None if chained else ogg_declared)

    handle = None
    sf_failure = None
    try:
        if chained:
            raise _BackendError("it decodes only the first of a chained Ogg file's streams")
        handle = sf.SoundFile(_open_arg(source))
    except MemoryError:
        raise
    except _BackendError as exc:
        sf_failure = exc
    except Exception as exc:
        sf_failure = _BackendError(_clean_reason(exc))
    if handle is not None:
        with handle:
            rate = int(handle.samplerate)
            _check_rate(rate, label)
            sf_declared = int(handle.frames) if 0 < handle.frames < _UNKNOWN_FRAMES else None
            declared = max(filter(None, (sf_declared, header_declared)), default=None)
            exact = _exact_length(handle)
            sink = _MonoSink(rate, sample_rate)
            block_frames = max(1024, round(block_seconds * rate))
            for block in _stream_soundfile(handle, block_frames):
                out = sink.push(_finite(block, label))
                if len(out):
                    yield out
        if sink.frames_in == 0 or _short(sink.frames_in, declared, rate, exact):
            # libsndfile stops at the first damaged MP3 frame (or read error) where FFmpeg resynchronises, and
            # reads nothing of a FLAC whose header leaves the length unknown (0, as streaming encoders write) or
            # a WAV whose data size is 0: let FFmpeg go on from where libsndfile stopped before judging the file.
            state: dict = {}
            try:
                for block in _stream_pyav(source, sink.frames_in, state):
                    if state.get("rate") != rate:
                        break
                    out = sink.push(_finite(block, label), rate=state.get("block_rate"))
                    if len(out):
                        yield out
            except _BackendError:
                pass
        tail = sink.push(np.zeros((0, 1), np.float32), last=True)
        if len(tail):
            yield tail
        _check_length(sink.frames_in, rate, declared, label, exact)
        return

    state = {}
    sink = None
    try:
        for block in _stream_pyav(source, 0, state):
            if sink is None:
                rate = state.get("rate") or state.get("header_rate") or sample_rate
                _check_rate(rate, label)
                sink = _MonoSink(rate, sample_rate)
            block_rate = state.get("block_rate") or sink.rate
            _check_rate(block_rate, label)
            out = sink.push(_finite(block, label), rate=block_rate)
            if len(out):
                yield out
    except _BackendError as av_failure:
        raise AudioDecodeError(label, f"unrecognised format or corrupt data (FFmpeg: {av_failure.reason}; "
                               f"libsndfile: {sf_failure.reason})") from None
    rate = (sink.first_rate if sink else None) or state.get("header_rate") or 0
    seconds = None if chained else state.get("declared_seconds")  # a chain's is one stream's, or a guess
    declared = round(seconds * rate) if seconds and rate else None
    if header_declared:
        declared = max(declared or 0, header_declared)
    frames = sink.frames_in if sink else 0
    failure = state.get("failure")
    if failure is not None and (not declared or _short(frames, declared, rate, False)):
        of = f" of {declared / rate:.2f} s" if declared else ""
        decoded_s = frames / rate if rate else 0.0
        what = "chained Ogg streams FFmpeg cannot join" if chained else "corrupt or truncated data"
        raise AudioDecodeError(label, f"{what}: decoding stopped at {decoded_s:.2f} s{of} "
                               f"({_clean_reason(failure)}); libsndfile: {sf_failure.reason}")
    if sink is not None:
        tail = sink.push(np.zeros((0, 1), np.float32), last=True)
        if len(tail):
            yield tail
    _check_length(frames, rate or sample_rate, declared, label)


def decode_audio(source: Source, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Decode a file path or an in-memory file to 1-D float32 mono at `sample_rate`.

    Channels are averaged; resampling uses soxr at 'HQ' quality. Raises `AudioDecodeError` for missing,
    empty, non-audio, truncated, zero-length or non-finite input, and never lets a library exception escape.
    The whole recording is held in memory: long recordings should use `iter_audio`. `max_seconds` decodes only
    the beginning (what lies beyond it is neither decoded nor checked).
    """
    limit = None if max_seconds is None else max(1, round(max_seconds * sample_rate))
    blocks: list[np.ndarray] = []
    count = 0
    stream = iter_audio(source, sample_rate)
    try:
        for block in stream:
            blocks.append(block)
            count += len(block)
            if limit is not None and count >= limit:
                break
        audio = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    except MemoryError:
        # A small file can hold hours of audio (a 72 KB FLAC of silence decodes to 2.6 GB at 32 kHz).
        blocks.clear()
        raise AudioDecodeError(_label(source), f"too long to decode into memory ({count / sample_rate:.0f} s "
                                               "decoded before memory ran out); long recordings are streamed "
                                               "(iter_audio)") from None
    finally:
        stream.close()
    return np.ascontiguousarray(audio[:limit], dtype=np.float32)


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
            _check_rate(int(info.samplerate), label)
            riff = _declared_frames(source, head)
            frames = min(info.frames, riff) if riff else info.frames
            return frames / info.samplerate
    except (MemoryError, AudioDecodeError):
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
