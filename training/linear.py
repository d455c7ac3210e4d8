"""A linear audio-text model: spectral statistics and a bag of words, aligned by regularised CCA.

It trains in seconds from the development split alone and sees audio and text nothing like the neural towers do
(per-band log-mel statistics of the whole crop; word and word-pair counts), which is what makes it a useful
distillation teacher beside neural ones: an ensemble gains from members that err differently. On the synthetic
corpora it is also strong (benchmarks/README.md, "The linear model"), so it is the baseline that every trained
model there is compared with.

Scores are cosines in the canonical space, components weighted by their correlation to the power `power`, times a
scale fitted so that softmax(score / tau) is calibrated on held-out development scores: on the cosine scale the
neural models' predictions are on, so that an ensemble can average them.
"""

from __future__ import annotations

import itertools
import json
import math
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hark.errors import HarkError
from hark.text import normalize_caption

from .config import AudioConfig
from .data.dataset import load_clips
from .data.formats import Example
from .frontend import MEL_FIELDS, MelFrontEnd

FORMAT = "hark-linear-1"


class LinearModelError(HarkError, ValueError):
    """A linear model file that cannot be read, or a fit that cannot be made (the message says why)."""


@dataclass
class LinearConfig:
    rank: int = 32  # canonical components kept
    audio_reg: float = 1.0  # ridge on the standardised audio features' covariance (there are more features than clips)
    text_reg: float = 0.01  # ridge on the text features' covariance
    power: float = 4.0  # each component weighted by its canonical correlation to this power
    tau: float = 0.05  # the temperature the scale is calibrated for (the contrastive loss's)
    folds: int = 4  # cross-fitting folds of the development clips for held-out teacher scores (0: none)
    seed: int = 0  # the clips' assignment to folds
    max_terms: int = 5000  # the most frequent words and word pairs kept


def caption_terms(caption: str) -> list[str]:
    """Words and adjacent word pairs of the normalised caption (pairs keep some order: "dog then siren")."""
    words = normalize_caption(caption).split()
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def power_features(power: torch.Tensor, frames: torch.Tensor) -> np.ndarray:
    """[B, n_mels, F] mel power (rows valid up to `frames`) -> [B, 4 * n_mels + 1] statistics.

    Per band over the row's frames: mean and maximum of the log power relative to the row's overall level (so a
    gain changes only the level, the last feature), standard deviation, and mean absolute frame-to-frame change.
    Frames of exact zero power (zero padding, a leading delay) carry no spectrum and are left out.
    """
    logs = torch.log(power.double() + 1e-5)
    out = []
    for row in range(power.shape[0]):
        n = int(frames[row])
        p = power[row, :, :n]
        keep = p.sum(0) > 0
        x = logs[row, :, :n][:, keep] if bool(keep.any()) else logs[row, :, :max(n, 1)]
        level = x.mean()
        delta = (x[:, 1:] - x[:, :-1]).abs().mean(1) if x.shape[1] > 1 else torch.zeros(x.shape[0], dtype=x.dtype)
        std = x.std(1, unbiased=False)
        out.append(torch.cat([x.mean(1) - level, x.amax(1) - level, std, delta, level[None]]))
    return torch.stack(out).numpy()


def _inverse_sqrt(cov: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(cov)
    return (vectors / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


@dataclass
class Projection:
    """One fitted CCA: standardisation and the weighted canonical directions of both sides."""

    audio_mean: np.ndarray
    audio_std: np.ndarray
    text_mean: np.ndarray
    audio_proj: np.ndarray  # [audio features, rank], weights included
    text_proj: np.ndarray  # [terms, rank], weights included

    def audio(self, features: np.ndarray) -> np.ndarray:
        return _unit(((features - self.audio_mean) / self.audio_std) @ self.audio_proj)

    def text(self, text_features: np.ndarray) -> np.ndarray:
        return _unit((text_features - self.text_mean) @ self.text_proj)

    ARRAYS = ("audio_mean", "audio_std", "text_mean", "audio_proj", "text_proj")


def _fit_projection(x: np.ndarray, text: np.ndarray, config: LinearConfig) -> Projection:
    """CCA between the rows of x (audio features, one row per caption) and text, ridge-regularised."""
    audio_mean, audio_std, text_mean = x.mean(0), x.std(0) + 1e-6, text.mean(0)
    xs, ys = (x - audio_mean) / audio_std, text - text_mean
    n = len(xs)
    wx = _inverse_sqrt(xs.T @ xs / n + config.audio_reg * np.eye(xs.shape[1]))
    wy = _inverse_sqrt(ys.T @ ys / n + config.text_reg * np.eye(ys.shape[1]))
    u, corr, vt = np.linalg.svd(wx @ (xs.T @ ys / n) @ wy, full_matrices=False)
    rank = min(config.rank, len(corr))
    weight = corr[:rank] ** config.power
    return Projection(audio_mean, audio_std, text_mean, (wx @ u[:, :rank]) * weight, (wy @ vt.T[:, :rank]) * weight)


def _pair(a: int | None, b: int | None) -> tuple[int, int] | None:
    """The cross-fitted model for a caption of fold a against a clip of fold b: the one fitted without both."""
    known = [f for f in (a, b) if f is not None]
    if not known:
        return None
    return (min(known), max(known))


@dataclass
class LinearModel:
    """A fitted linear model (see the module docstring); `fit_linear` makes one, `save`/`load` keep it.

    With `config.folds` >= 2 it also holds cross-fitted projections: the development clips are split into folds,
    and for every pair of folds (a, b) a projection is fitted without either. A training batch scores a caption of
    fold a against a clip of fold b with that one, so every score the student learns from is a held-out prediction.
    In-sample scores would be near-certain on the pairs the model was fitted on (the hard labels again), and only
    held-out ones carry what the model knows beyond them: which other clips a caption also fits.
    """

    config: LinearConfig
    audio: dict[str, Any]  # the mel front end the features were fitted on (AudioConfig fields)
    vocabulary: list[str]
    idf: np.ndarray
    main: Projection
    scale: float = 1.0
    folds: dict[tuple[int, int], Projection] = field(default_factory=dict)
    clip_folds: dict[str, int] = field(default_factory=dict)  # "source:audio_id" of each development clip
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    _front: MelFrontEnd | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index = {term: i for i, term in enumerate(self.vocabulary)}

    # -- embeddings ---------------------------------------------------------------------------------------------
    def term_counts(self, captions: Sequence[str]) -> np.ndarray:
        """[captions, vocabulary] counts of the vocabulary's terms (others are ignored)."""
        counts = np.zeros((len(captions), len(self.vocabulary)))
        for row, caption in enumerate(captions):
            for term in caption_terms(caption):
                column = self._index.get(term)
                if column is not None:
                    counts[row, column] += 1
        return counts

    def text_features(self, captions: Sequence[str], counts: np.ndarray | None = None) -> np.ndarray:
        """Log counts x idf, unit rows (`counts` when the captions' `term_counts` are at hand)."""
        weighted = np.log1p(self.term_counts(captions) if counts is None else counts) * self.idf
        return weighted / np.maximum(np.linalg.norm(weighted, axis=1, keepdims=True), 1e-9)

    def scores_from_features(self, captions: Sequence[str], features: np.ndarray) -> np.ndarray:
        """[captions, clips] calibrated scores (`scale` x cosine in the canonical space) of the full model."""
        return self.scale * (self.main.text(self.text_features(captions)) @ self.main.audio(features).T)

    def crossfit_scores(self, captions: Sequence[str], features: np.ndarray, caption_folds: Sequence[int | None],
                        clip_folds: Sequence[int | None]) -> np.ndarray:
        """Like `scores_from_features`, but each (caption, clip) entry from the projection fitted without the
        folds of either (None: not a development clip); the full model where neither is known or there are no
        folds."""
        text = self.text_features(captions)
        out = np.empty((len(captions), len(features)))
        rows_f = np.array([-1 if f is None else f for f in caption_folds])
        cols_f = np.array([-1 if f is None else f for f in clip_folds])
        for a in np.unique(rows_f):
            rows = np.flatnonzero(rows_f == a)
            for b in np.unique(cols_f):
                cols = np.flatnonzero(cols_f == b)
                key = _pair(None if a < 0 else int(a), None if b < 0 else int(b)) if self.folds else None
                proj = self.main if key is None else self.folds[key]
                out[np.ix_(rows, cols)] = proj.text(text[rows]) @ proj.audio(features[cols]).T
        return self.scale * out

    # -- what distillation and evaluation call ------------------------------------------------------------------
    def front_end(self) -> MelFrontEnd:
        if self._front is None:
            self._front = MelFrontEnd(AudioConfig(**self.audio))
        return self._front

    def wave_features(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        rows = []
        with torch.no_grad():
            for clip in clips:
                power = self.front_end().clip_power(torch.from_numpy(np.ascontiguousarray(clip, np.float32))[None])
                rows.append(power_features(power, torch.tensor([power.shape[-1]]))[0])
        return np.stack(rows)

    @torch.no_grad()
    def batch_scores(self, batch: dict[str, Any]) -> torch.Tensor:
        """A training batch's [captions, audio] score matrix, from the same crops the student sees (cross-fitted
        where the batch names its clips and the model has folds)."""
        if "mel_power" in batch:
            features = power_features(batch["mel_power"].cpu(), batch["frames"].cpu())
        else:
            wave, lengths = batch["waveform"].cpu().float(), batch["lengths"].cpu()
            power = self.front_end().clip_power(wave)
            hop = int(self.audio["hop_length"])
            frames = torch.clamp((lengths - 1) // hop + 1, min=1, max=power.shape[-1])
            features = power_features(power, frames)
        captions = batch["captions"]
        if not self.folds or "audio_ids" not in batch:
            return torch.from_numpy(self.scores_from_features(captions, features)).float()
        keys = [f"{src}:{aid}" for src, aid in zip(batch["sources"], batch["audio_ids"], strict=True)]
        clip_folds = [self.clip_folds.get(k) for k in keys]
        owner = batch.get("caption_audio_index")
        owner = owner.tolist() if owner is not None else list(range(len(captions)))
        caption_folds = [clip_folds[i] for i in owner]
        scores = self.crossfit_scores(captions, features, caption_folds, clip_folds)
        return torch.from_numpy(scores).float()

    def split_scores(self, examples: Sequence[Example], max_seconds: float | None = None):
        """Scores of a split in `evaluate.score_split`'s order: (scores [captions, clips], targets, kept examples).
        Undecodable clips are left out, as there."""
        kept, clips, _ = load_clips(examples, int(self.audio["sample_rate"]), max_seconds)
        if not kept:
            raise LinearModelError("no decodable audio in the split")
        queries = [c for ex in kept for c in ex.captions]
        targets = np.array([i for i, ex in enumerate(kept) for _ in ex.captions])
        return self.scores_from_features(queries, self.wave_features(clips)), targets, kept

    # -- files --------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        meta = {"format": FORMAT, "config": asdict(self.config), "audio": self.audio,
                "vocabulary": self.vocabulary, "scale": self.scale, "clip_folds": self.clip_folds,
                "folds": [list(k) for k in self.folds]}
        arrays = {"idf": self.idf}
        for name, proj in [("main", self.main), *((f"fold{a}_{b}", p) for (a, b), p in self.folds.items())]:
            arrays |= {f"{name}.{field_}": getattr(proj, field_) for field_ in Projection.ARRAYS}
        np.savez(path, meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8), **arrays)
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path: str | Path) -> LinearModel:
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode("utf-8"))
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    found = meta.get("format") if isinstance(meta, dict) else None
                    raise LinearModelError(f"format {found!r}, expected {FORMAT}")
                names = ["main", *(f"fold{a}_{b}" for a, b in meta["folds"])]
                projections = [Projection(*(data[f"{n}.{f}"] for f in Projection.ARRAYS)) for n in names]
                idf = data["idf"]
                model = cls(LinearConfig(**meta["config"]), dict(meta["audio"]), list(meta["vocabulary"]), idf,
                            projections[0], scale=float(meta["scale"]),
                            folds={(int(a), int(b)): p for (a, b), p in zip(meta["folds"], projections[1:],
                                                                            strict=True)},
                            clip_folds={str(k): int(v) for k, v in meta["clip_folds"].items()})
                problem = _problem(model)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, UnicodeDecodeError,
                zipfile.BadZipFile) as exc:
            raise LinearModelError(f"{path}: not a linear model file ({exc})") from None
        if problem:
            raise LinearModelError(f"{path}: {problem}")
        return model


def _problem(model: LinearModel) -> str | None:
    """What is wrong with a loaded model's fields, None when nothing (a file edited or written by something else)."""
    if not all(isinstance(t, str) for t in model.vocabulary):
        return "the vocabulary is not a list of terms"
    if sorted(model.audio) != sorted(MEL_FIELDS) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            for v in model.audio.values()):
        return f"the mel front end {model.audio} is not one (fields {', '.join(MEL_FIELDS)})"
    if not (math.isfinite(model.scale) and model.scale > 0):
        return f"the scale {model.scale} is not a positive number"
    k = model.config.folds
    numbers = [model.config.rank, model.config.audio_reg, model.config.text_reg, model.config.power, k]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers) or not isinstance(k, int):
        return f"the settings {asdict(model.config)} are not numbers"
    if set(model.folds) != ({(a, b) for a in range(k) for b in range(a, k)} if k else set()):
        return f"the cross-fitted projections do not match {k} folds"
    if any(not 0 <= f < max(k, 1) for f in model.clip_folds.values()):
        return f"a clip's fold is outside 0-{k - 1}"
    n_terms = len(model.vocabulary)
    for proj in [model.main, *model.folds.values()]:
        n_audio, rank = proj.audio_mean.shape[0], proj.audio_proj.shape[-1]
        shapes = {"idf": (model.idf, (n_terms,)), "text_mean": (proj.text_mean, (n_terms,)),
                  "audio_std": (proj.audio_std, (n_audio,)), "audio_proj": (proj.audio_proj, (n_audio, rank)),
                  "text_proj": (proj.text_proj, (n_terms, rank))}
        for key, (array, shape) in shapes.items():
            if array.shape != shape:
                return f"{key} has shape {array.shape}, expected {shape}"
            if not np.isfinite(array).all():
                return f"{key} holds values that are not finite"
        if (proj.audio_std <= 0).any():
            return "audio_std holds values that are not positive"
    return None


def is_linear_model(path: str | Path) -> bool:
    """Whether `path` names a linear model file (what `hark linear` writes) rather than a checkpoint."""
    return Path(path).suffix == ".npz"


def _calibrated_scale(cos: np.ndarray, targets: np.ndarray, tau: float) -> float:
    """The factor s that minimises the symmetric cross entropy of softmax(s * cosine / tau) against the pairs
    (rows: captions -> their clip; columns: clips -> their captions, spread evenly), by golden-section search
    on log s."""
    own = np.zeros_like(cos)
    own[np.arange(len(targets)), targets] = 1.0
    col_targets = own / np.maximum(own.sum(0, keepdims=True), 1.0)

    def loss(log_s: float) -> float:
        logits = math.exp(log_s) * cos / tau
        rows = logits - logits.max(1, keepdims=True)
        rows = rows - np.log(np.exp(rows).sum(1, keepdims=True))
        cols = logits - logits.max(0, keepdims=True)
        cols = cols - np.log(np.exp(cols).sum(0, keepdims=True))
        return float(-(own * rows).sum(1).mean() - (col_targets * cols).sum(0).mean())

    lo, hi = math.log(1e-3), math.log(1e2)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2)


def fit_linear(examples: Sequence[Example], audio: AudioConfig, config: LinearConfig | None = None,
               max_seconds: float | None = None) -> LinearModel:
    """Fit on the examples (whole clips, up to `max_seconds`; every caption paired with its clip's features), and
    with `config.folds` >= 2 the cross-fitted projections (see `LinearModel`). The scale is calibrated on
    held-out scores where there are folds. Undecodable clips are left out; at least two clips with captions (two
    per fold) are needed."""
    config = config or LinearConfig()
    # A caption of fold a against a clip of fold b is scored by the fit without both: with two folds that fit would
    # have no data, so cross-fitting needs three or more.
    if (config.rank < 1 or config.audio_reg <= 0 or config.text_reg <= 0 or config.tau <= 0
            or config.folds < 0 or config.folds in (1, 2) or config.max_terms < 1):
        raise LinearModelError(f"linear model settings out of range (folds: 0, or 3 or more): {config}")
    kept, clips, _ = load_clips(examples, audio.sample_rate, max_seconds)
    pairs = [(i, c) for i, ex in enumerate(kept) for c in ex.captions]
    needed = max(2, 2 * config.folds)  # two clips a fold
    if len(kept) < needed or not pairs:
        raise LinearModelError(f"fitting the linear model needs at least {needed} decodable clips with captions; "
                               f"found {len(kept)}")
    mel = {f: getattr(audio, f) for f in MEL_FIELDS}
    empty = Projection(*(np.zeros(0) for _ in Projection.ARRAYS))
    model = LinearModel(config, mel, [], np.zeros(0), empty)
    features = model.wave_features(clips)
    # The vocabulary: the most frequent terms (ties in order of appearance), so that the text covariance stays small
    # on real datasets' vocabularies.
    frequency: dict[str, int] = {}
    for _, caption in pairs:
        for term in caption_terms(caption):
            frequency[term] = frequency.get(term, 0) + 1
    model.vocabulary = sorted(frequency, key=lambda t: -frequency[t])[:config.max_terms]
    model.__post_init__()
    counts = model.term_counts([c for _, c in pairs])
    model.idf = np.log(len(pairs) / (1.0 + (counts > 0).sum(0))) + 1.0
    text = model.text_features([c for _, c in pairs], counts)
    rows = np.array([i for i, _ in pairs])
    model.main = _fit_projection(features[rows], text, config)
    if config.folds:
        order = np.random.default_rng(config.seed).permutation(len(kept))
        fold_of = np.empty(len(kept), dtype=int)
        fold_of[order] = np.arange(len(kept)) % config.folds
        model.clip_folds = {f"{ex.source}:{ex.audio_id}": int(fold_of[i]) for i, ex in enumerate(kept)}
        for a in range(config.folds):
            for b in range(a, config.folds):
                use = (fold_of[rows] != a) & (fold_of[rows] != b)
                model.folds[(a, b)] = _fit_projection(features[rows[use]], text[use], config)
    # Calibrated on at most 1,000 clips (and their captions): the score matrix is captions x clips.
    sample = np.sort(np.random.default_rng(config.seed).permutation(len(kept))[:1000])
    column = {clip: j for j, clip in enumerate(sample)}
    picked = [r for r, clip in enumerate(rows) if clip in column]
    targets = np.array([column[rows[r]] for r in picked])
    if config.folds:
        cos = model.crossfit_scores([pairs[r][1] for r in picked], features[sample],
                                    [int(fold_of[rows[r]]) for r in picked], [int(fold_of[c]) for c in sample])
    else:
        cos = model.main.text(text[picked]) @ model.main.audio(features[sample]).T
    model.scale = _calibrated_scale(cos, targets, config.tau)
    return model
