"""The bundle's graphs behind small numpy interfaces: text encoder, audio encoder, reranker.

Torch-free. Shapes are bounded: audio segments are always one segment long (zero-padded), run in
batches of at most `batch_segments`; text is padded to the longest query of a batch (<= max_tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hark.bundle import Bundle
from hark.moments import quantize
from hark.onnx import CUDA

# Batch sizes by where a session runs, from benchmarks/gpu.sh on an H200 (report-size model; benchmarks/README.md,
# gpu). The RoBERTa-large-size text encoder costs 7.8 ms a call at 1 query and 9.4 ms at 32 on CUDA, so there a
# call should take all the queries it can; on the CPU the cost grows with the batch (44 ms at 1, 220 ms at 8), and
# 8 keeps a batch's latency bounded. The audio encoder on CUDA (32 windows a call): batch_segments 8 / 16 / 32 / 64
# gave 43 / 77 / 86 / 72 windows/s with moments and 166 / 188 / 201 / 142 without.
TEXT_BATCH = {"cuda": 32, "cpu": 8}
AUDIO_BATCH_SEGMENTS = {"cuda": 32, "cpu": 8}


def runs_on(session) -> str:
    """"cuda" when ONNX Runtime put the session on the CUDA provider, else "cpu"."""
    return "cuda" if session.get_providers()[0] == CUDA else "cpu"


@dataclass
class TextBatch:
    sentence: np.ndarray  # [B, d] unit vectors for the cosine prefilter
    tokens: np.ndarray  # [B, L, Dt] text token embeddings for the reranker
    mask: np.ndarray  # [B, L] 1 for real tokens


@dataclass
class ClipVectors:
    global_: np.ndarray  # [d]
    rows: np.ndarray  # [M, row] the `tokens` multivector (M segments), empty without a rerank head
    segments: int
    # [T, d] the `moments` multivector (hark.moments.quantize'd sub-window vectors); None without moments
    moments: np.ndarray | None = None


class TextEncoder:
    def __init__(self, bundle: Bundle, device: str = "auto", precision: str | None = None) -> None:
        self.bundle = bundle
        self.session = bundle.session("text", device, precision)
        self.tokenizer = bundle.tokenizer
        # Most queries one call should take when callers may choose (hark serve's micro-batcher).
        self.preferred_batch = TEXT_BATCH[runs_on(self.session)]

    def encode(self, texts: Sequence[str]) -> TextBatch:
        if isinstance(texts, str):
            texts = [texts]
        ids, mask = self.tokenizer.encode(list(texts))
        sentence, tokens = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
        return TextBatch(sentence.astype(np.float32), tokens.astype(np.float32), mask)


def split_segments(wave: np.ndarray, segment_samples: int, max_segments: int) -> np.ndarray:
    """One window of audio -> [M, segment_samples] zero-padded segments, 1 <= M <= max_segments."""
    count = min(max_segments, max(1, math.ceil(len(wave) / segment_samples)))
    out = np.zeros((count, segment_samples), dtype=np.float32)
    for m in range(count):
        piece = wave[m * segment_samples:(m + 1) * segment_samples]
        out[m, : len(piece)] = piece
    return out


class AudioEncoder:
    def __init__(self, bundle: Bundle, device: str = "auto", precision: str | None = None,
                 batch_segments: int | None = None) -> None:
        self.bundle = bundle
        self.audio = bundle.session("audio", device, precision)
        self.clip = bundle.session("clip", device)
        self.batch_segments = batch_segments or AUDIO_BATCH_SEGMENTS[runs_on(self.audio)]
        self.segment_samples = bundle.segment_samples
        self.max_segments = bundle.max_segments
        self.moment_spec = bundle.moments
        self.moments = bundle.session("moments", device, precision) if self.moment_spec else None

    @property
    def window_samples(self) -> int:
        return self.segment_samples * self.max_segments

    def embed_segments(self, segments: np.ndarray) -> np.ndarray:
        """[S, segment_samples] -> [S, Da], in batches of bounded size."""
        parts = []
        for start in range(0, len(segments), self.batch_segments):
            chunk = np.ascontiguousarray(segments[start:start + self.batch_segments], dtype=np.float32)
            parts.append(self.audio.run(None, {"segments": chunk})[0])
        return np.concatenate(parts).astype(np.float32)

    def encode_windows(self, windows: Sequence[np.ndarray], with_moments: bool = True) -> list[ClipVectors]:
        """Each window (at most max_segments segments of audio) -> its stored vectors (`with_moments=False`:
        without the moments, which cost as much again; their field is None)."""
        if not windows:
            return []
        split = [split_segments(w, self.segment_samples, self.max_segments) for w in windows]
        embeddings = self.embed_segments(np.concatenate(split))
        m = self.max_segments
        seg = np.zeros((len(windows), m, embeddings.shape[1]), dtype=np.float32)
        mask = np.zeros((len(windows), m), dtype=np.float32)
        offset = 0
        for i, s in enumerate(split):
            seg[i, : len(s)] = embeddings[offset:offset + len(s)]
            mask[i, : len(s)] = 1
            offset += len(s)
        glob, rows = self.clip.run(None, {"segment_embeddings": seg, "segment_mask": mask})
        moments = (self.encode_moments(windows) if with_moments and self.moments is not None
                   else [None] * len(windows))
        return [ClipVectors(glob[i].astype(np.float32), rows[i, : len(s)].astype(np.float32), len(s), moments[i])
                for i, s in enumerate(split)]

    def encode_moments(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each window -> its sub-windows' vectors, quantised as stored ([T, d], see hark.moments)."""
        spec = self.moment_spec
        size = round(spec.window_s * self.bundle.sample_rate)
        counts, pieces = [], []
        for wave in windows:
            starts = spec.starts(len(wave) / self.bundle.sample_rate)
            counts.append(len(starts))
            for start in starts:
                at = round(start * self.bundle.sample_rate)
                piece = np.zeros(size, dtype=np.float32)
                chunk = wave[at:at + size]
                piece[: len(chunk)] = chunk
                pieces.append(piece)
        batch = 4 * self.batch_segments  # sub-windows are short: more of them per call
        vectors = np.concatenate([self.moments.run(None, {"windows": np.stack(pieces[i:i + batch])})[0]
                                  for i in range(0, len(pieces), batch)])
        out, at = [], 0
        for count in counts:
            out.append(quantize(vectors[at:at + count]))
            at += count
        return out


class Reranker:
    """The folded attention head over stored `tokens` rows."""

    def __init__(self, bundle: Bundle, device: str = "auto") -> None:
        self.session = bundle.session("rerank", device)
        self.max_segments = bundle.max_segments

    def score(self, tokens: np.ndarray, token_mask: np.ndarray, candidates: Sequence[np.ndarray]) -> np.ndarray:
        """One query ([L, Dt] tokens) against its candidates -> [K] attention scores."""
        if not candidates:
            return np.zeros(0, dtype=np.float32)
        return self.score_batch(tokens[None], token_mask[None], [list(candidates)])[0]

    def score_batch(self, tokens: np.ndarray, token_mask: np.ndarray,
                    candidates: Sequence[Sequence[np.ndarray | None]]) -> list[np.ndarray]:
        """B queries ([B, L, Dt] tokens), each against its own candidates, in one call -> B arrays of scores.

        Candidates lists may differ in length; a candidate without stored rows (None, or no rows) scores NaN.
        """
        groups = []
        for group in candidates:
            present = [c for c in group if c is not None and len(c)]
            counts = np.fromiter((0 if c is None else len(c) for c in group), dtype=np.int64, count=len(group))
            groups.append((np.concatenate(present).astype(np.float32, copy=False) if present else None, counts))
        return self.score_packed(tokens, token_mask, groups)

    def score_packed(self, tokens: np.ndarray, token_mask: np.ndarray,
                     groups: Sequence[tuple[np.ndarray | None, np.ndarray]]) -> list[np.ndarray]:
        """`score_batch` for candidates packed as the store returns them (`hark.store.query_candidates`): per
        query, (rows [R, width], counts [n]) where candidate i owns the next counts[i] rows (0: none stored,
        scored NaN). Filled by indexing, with no Python loop over candidates."""
        width = next((rows.shape[1] for rows, _ in groups if rows is not None and len(rows)), None)
        if width is None:
            return [np.full(len(counts), np.nan, dtype=np.float32) for _, counts in groups]
        k = max(len(counts) for _, counts in groups)
        m = self.max_segments
        out = np.zeros((len(groups), k, m, width), dtype=np.float32)
        mask = np.zeros((len(groups), k, m), dtype=np.float32)
        mask[:, :, 0] = 1  # padding and missing candidates: one zero segment keeps the softmax finite
        missing = np.ones((len(groups), k), dtype=bool)
        for b, (rows, counts) in enumerate(groups):
            counts = np.asarray(counts, dtype=np.int64)
            if rows is None or not len(counts):
                continue
            used = np.minimum(counts, m)
            starts = np.cumsum(counts) - counts
            cand = np.repeat(np.arange(len(counts)), used)
            seg = np.arange(int(used.sum())) - np.repeat(np.cumsum(used) - used, used)
            out[b, cand, seg] = rows[np.repeat(starts, used) + seg]
            mask[b, cand, seg] = 1
            missing[b, : len(counts)] = counts == 0
        scores = self.session.run(None, {"tokens": tokens.astype(np.float32),
                                         "token_mask": token_mask.astype(np.float32),
                                         "rows": out, "segment_mask": mask})[0]
        scores = np.where(missing, np.nan, scores)
        return [scores[b, : len(counts)] for b, (_, counts) in enumerate(groups)]
