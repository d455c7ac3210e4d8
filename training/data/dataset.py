"""Torch dataset over `Example`s: decoding, random crops, caption sampling, and a collate that pads.

A file that fails to decode is logged once (by name, with the reason) and skipped: `__getitem__` returns
None and `collate` drops it, so one bad file in a 100k-clip corpus never stops a training run. The names
are kept in `failed` for an end-of-run report. With DataLoader workers each worker keeps its own record,
so a bad file is reported at most once per worker.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from hark.audio import SAMPLE_RATE, AudioDecodeError, decode_audio

from .formats import Example

log = logging.getLogger(__name__)


class AudioCaptionDataset(Dataset):
    """Audio-caption pairs for training (`train=True`) or evaluation.

    Training: one item per audio file with one of its captions drawn at random, and a random
    `crop_seconds` window of longer clips (shorter clips stay whole; `collate` pads). Evaluation: one item
    per audio file with all of its captions and the whole clip. Randomness depends on (seed, epoch,
    index) only, so it is reproducible and independent of worker scheduling; call `set_epoch` each epoch
    for fresh crops and captions.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        train: bool,
        crop_seconds: float | None = 30.0,
        sample_rate: int = SAMPLE_RATE,
        seed: int = 0,
        cache_size: int = 0,
    ) -> None:
        self.examples = list(examples)
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

    def __getitem__(self, index: int) -> dict | None:
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
        else:
            captions = list(example.captions)
        return {
            "waveform": torch.from_numpy(np.ascontiguousarray(audio)),
            "captions": captions,
            "audio_id": example.audio_id,
            "source": example.source,
        }


def collate(batch: Sequence[dict | None]) -> dict:
    """Stack items into a padded batch, dropping the None left by undecodable files.

    Returns `waveform` float32 [B, T] zero-padded to the longest clip, `lengths` long [B] (samples),
    `captions` list[str], `caption_audio_index` long [len(captions)] mapping each caption to its row
    (an arange in training, where there is one caption per clip; several per row in evaluation),
    `audio_ids` and `sources` list[str]. B can be 0 when every file in the batch failed.
    """
    items = [item for item in batch if item is not None]
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
