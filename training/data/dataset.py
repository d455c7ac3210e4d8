"""Torch dataset over `Example`s: decoding, random crops, caption sampling, and a collate that pads.

A file that fails to decode is logged once (by name, with the reason) and skipped: `__getitem__` returns
None and `collate` drops it, so one bad file in a 100k-clip corpus never stops a training run. The names
are kept in `failed` for an end-of-run report. With DataLoader workers each worker keeps its own record,
so a bad file is reported at most once per worker.
"""

from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from hark.audio import SAMPLE_RATE, AudioDecodeError, decode_audio

from .formats import Example

log = logging.getLogger(__name__)

# Words that carry temporal order: caption augmentation never drops them, so "A, then B" stays ordered.
ORDER_WORDS = frozenset({"then", "before", "after", "afterwards", "first", "finally", "next", "later", "once",
                         "subsequently", "lastly", "begin", "end", "while", "whilst", "meanwhile", "during"})


def load_clips(examples: Sequence[Example], sample_rate: int, max_seconds: float | None = None):
    """Decode each example's audio (the first `max_seconds`, or all of it): (kept examples, their clips, names of the
    skipped files). Undecodable files are reported (a warning each) and left out."""
    kept, clips, skipped = [], [], []
    for ex in examples:
        try:
            clips.append(decode_audio(ex.audio_path, sample_rate, max_seconds=max_seconds))
            kept.append(ex)
        except AudioDecodeError as exc:
            log.warning("skipping %s", exc)
            skipped.append(ex.audio_path.name)
    return kept, clips, skipped


@dataclass(frozen=True)
class Augment:
    """Per-item training augmentation (the batch-level ones live in `mix_batch` and the loop)."""

    gain_db: float = 0.0  # random gain in +-gain_db
    shift_seconds: float = 0.0  # up to this much leading silence
    word_dropout: float = 0.0  # per-word drop probability, order words excepted

    @property
    def active(self) -> bool:
        return bool(self.gain_db or self.shift_seconds or self.word_dropout)


def drop_words(caption: str, p: float, rng: np.random.Generator) -> str:
    """`caption` with each word dropped with probability p, except order words; at least one word stays."""
    words = caption.split()
    keep = [w for w in words if re.sub(r"\W", "", w.lower()) in ORDER_WORDS or rng.random() >= p]
    return " ".join(keep) if keep else words[int(rng.integers(len(words)))]


class AudioCaptionDataset(Dataset):
    """Audio-caption pairs for training (`train=True`) or evaluation.

    Training: one item per audio file with one of its captions drawn at random, and a random
    `crop_seconds` window of longer clips (shorter clips stay whole; `collate` pads). Evaluation: one item
    per audio file with all of its captions and the whole clip. Randomness depends on (seed, epoch,
    index) only, so it is reproducible and independent of worker scheduling; call `set_epoch` each epoch
    for fresh crops and captions.

    With `mel` (a whole clip's waveform -> its mel power, `MelFrontEnd.power`; `train.mel_cache`), training
    items carry `mel_power` [n_mels, frames] instead of the waveform: each clip's power is computed once and
    kept (bfloat16), and crops, gain and delay are cut from it: crops and delays in whole hops, the gain as
    g^2 on the power. The front end was 84% of a tiny model's CPU training step (benchmarks/README.md).
    """

    def __init__(
        self,
        examples: Sequence[Example],
        train: bool,
        crop_seconds: float | None = 30.0,
        sample_rate: int = SAMPLE_RATE,
        seed: int = 0,
        cache_size: int = 0,
        augment: Augment | None = None,
        mel: Callable[[np.ndarray], torch.Tensor] | None = None,
        hop: int = 320,
    ) -> None:
        self.examples = list(examples)
        self.mel = mel if train else None
        self.hop = hop
        self._powers: dict[str, tuple[torch.Tensor, int]] = {}  # path -> (bfloat16 power, length in samples)
        self.augment = augment or Augment()
        self.train = train
        self.crop_samples = round(crop_seconds * sample_rate) if crop_seconds else None
        self.sample_rate = sample_rate
        self.seed = seed
        self.epoch = 0
        self.cache_size = cache_size
        # Keyed by path: several items (one per caption) may share one audio file.
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.failed: dict[str, str] = {}  # audio path -> reason

    def __len__(self) -> int:
        return len(self.examples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _load(self, index: int) -> np.ndarray | None:
        example = self.examples[index]
        key = str(example.audio_path)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if key in self.failed:
            return None
        try:
            audio = decode_audio(example.audio_path, self.sample_rate)
        except AudioDecodeError as exc:
            self.failed[key] = exc.reason
            log.warning("skipping undecodable audio %s (%s): %s", key, example.source, exc.reason)
            return None
        if self.cache_size > 0:
            self._cache[key] = audio
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return audio

    def _load_power(self, index: int) -> tuple[torch.Tensor, int] | None:
        key = str(self.examples[index].audio_path)
        if key not in self._powers:
            audio = self._load(index)
            if audio is None:
                return None
            # bfloat16 keeps float32's range (float16 overflows on loud clips) at half the memory; its
            # 0.4% relative error is 0.0008 after the log and PaSST's scaling.
            power = self.mel(np.ascontiguousarray(audio, dtype=np.float32)).to(torch.bfloat16)
            self._powers[key] = (power, len(audio))
        return self._powers[key]

    def _mel_item(self, index: int) -> dict | None:
        loaded = self._load_power(index)
        if loaded is None:
            return None
        power, length = loaded
        example = self.examples[index]
        rng = self._rng(index)
        if self.crop_samples and length > self.crop_samples:
            start = int(rng.integers(0, (length - self.crop_samples) // self.hop + 1))
            frames = power[:, start:start + self.crop_samples // self.hop]
        else:
            frames = power[:, :math.ceil(length / self.hop)]
        captions = [example.captions[int(rng.integers(len(example.captions)))]]
        gain, delay, captions = self._draws(captions, rng)
        frames = torch.nn.functional.pad(frames.float() * gain**2, (delay // self.hop, 0))
        return {"mel_power": frames, "captions": captions, "audio_id": example.audio_id, "source": example.source}

    def __getitem__(self, index: int) -> dict | None:
        if self.mel is not None:
            return self._mel_item(index)
        audio = self._load(index)
        if audio is None:
            return None
        example = self.examples[index]
        if self.train:
            rng = self._rng(index)
            if self.crop_samples and len(audio) > self.crop_samples:
                start = int(rng.integers(0, len(audio) - self.crop_samples + 1))
                audio = audio[start : start + self.crop_samples]
            captions = [example.captions[int(rng.integers(len(example.captions)))]]
            if self.augment.active:
                # Drawn after the crop and caption, so turning augmentation on changes neither.
                audio, captions = self._augmented(audio, captions, rng)
        else:
            captions = list(example.captions)
        return {
            "waveform": torch.from_numpy(np.ascontiguousarray(audio)),
            "captions": captions,
            "audio_id": example.audio_id,
            "source": example.source,
        }


    def _draws(self, captions: list[str], rng: np.random.Generator) -> tuple[float, int, list[str]]:
        """The item's augmentation: gain factor, leading delay in samples, captions after word dropout (drawn in
        this order, the same for the waveform and the mel-power path)."""
        aug = self.augment
        gain = 10 ** (rng.uniform(-aug.gain_db, aug.gain_db) / 20) if aug.gain_db else 1.0
        delay = int(rng.uniform(0, aug.shift_seconds) * self.sample_rate) if aug.shift_seconds else 0
        if aug.word_dropout:
            captions = [drop_words(c, aug.word_dropout, rng) for c in captions]
        return gain, delay, captions

    def _augmented(self, audio: np.ndarray, captions: list[str], rng: np.random.Generator):
        gain, delay, captions = self._draws(captions, rng)
        audio = audio * np.float32(gain)
        if delay:
            audio = np.concatenate([np.zeros(delay, dtype=audio.dtype), audio])
        return audio.astype(np.float32, copy=False), captions


def mix_batch(batch: dict, fraction: float, generator: torch.Generator) -> dict:
    """Batch-level mixing: a `fraction` of rows get another row's audio added and its caption joined.

    Row i mixed with row j holds both clips (the partner scaled by a random 0.5-1); its caption becomes
    "<caption i> and <caption j>" and its identity "i+j", a new clip that no other row shares. Only for
    training batches with one caption per row (the collate of training items).
    """
    n = len(batch["captions"])
    rows = round(fraction * n)
    if rows == 0 or n < 2 or len(batch["audio_ids"]) != n:
        return batch
    chosen = torch.randperm(n, generator=generator)[:rows]
    partners = (chosen + torch.randint(1, n, (rows,), generator=generator)) % n  # never the row itself
    scale = 0.5 + 0.5 * torch.rand(rows, generator=generator)
    wave, lengths = batch["waveform"].clone(), batch["lengths"].clone()
    captions, ids = list(batch["captions"]), list(batch["audio_ids"])
    for i, j, k in zip(chosen.tolist(), partners.tolist(), scale.tolist(), strict=True):
        wave[i] += k * batch["waveform"][j]
        lengths[i] = max(lengths[i], batch["lengths"][j])
        other = batch["captions"][j]
        captions[i] = f"{batch['captions'][i].rstrip('.')} and {other[:1].lower()}{other[1:]}"
        ids[i] = f"{batch['audio_ids'][i]}+{batch['audio_ids'][j]}"
    # A joined caption states no one order for the mixed clip: order-aware training skips these rows.
    mixed = [bool(batch.get("mixed", [False] * n)[i]) for i in range(n)]
    for i in chosen.tolist():
        mixed[i] = True
    return {**batch, "waveform": wave, "lengths": lengths, "captions": captions, "audio_ids": ids,
            "mixed": mixed}


def collate(batch: Sequence[dict | None]) -> dict:
    """Stack items into a padded batch, dropping the None left by undecodable files.

    Returns `waveform` float32 [B, T] zero-padded to the longest clip, `lengths` long [B] (samples),
    `captions` list[str], `caption_audio_index` long [len(captions)] mapping each caption to its row
    (an arange in training, where there is one caption per clip; several per row in evaluation),
    `audio_ids` and `sources` list[str]. B can be 0 when every file in the batch failed.
    """
    items = [item for item in batch if item is not None]
    if items and "mel_power" in items[0]:
        return _collate_power(items)
    lengths = torch.tensor([len(item["waveform"]) for item in items], dtype=torch.long)
    longest = int(lengths.max()) if len(items) else 0
    waveform = torch.zeros(len(items), longest, dtype=torch.float32)
    captions: list[str] = []
    owner: list[int] = []
    for row, item in enumerate(items):
        waveform[row, : len(item["waveform"])] = item["waveform"]
        captions.extend(item["captions"])
        owner.extend([row] * len(item["captions"]))
    return {
        "waveform": waveform,
        "lengths": lengths,
        "captions": captions,
        "caption_audio_index": torch.tensor(owner, dtype=torch.long),
        "audio_ids": [item["audio_id"] for item in items],
        "sources": [item["source"] for item in items],
    }


def _collate_power(items: list[dict]) -> dict:
    """`collate` for `mel_power` items: `mel_power` [B, n_mels, F] zero-padded, `frames` long [B]."""
    frames = torch.tensor([item["mel_power"].shape[1] for item in items], dtype=torch.long)
    power = torch.zeros(len(items), items[0]["mel_power"].shape[0], int(frames.max()), dtype=torch.float32)
    for row, item in enumerate(items):
        power[row, :, : item["mel_power"].shape[1]] = item["mel_power"]
    return {
        "mel_power": power,
        "frames": frames,
        "captions": [item["captions"][0] for item in items],
        "caption_audio_index": torch.arange(len(items), dtype=torch.long),
        "audio_ids": [item["audio_id"] for item in items],
        "sources": [item["source"] for item in items],
    }
