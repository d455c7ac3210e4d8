"""Text front end shared by training and the runtime: caption normalisation and tokenisation.

Both sides tokenise through the `tokenizers` library alone, so a query at serving time is encoded
exactly as captions were in training (no transformers at run time).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

DEFAULT_MAX_TOKENS = 32


def normalize_caption(text: str) -> str:
    """Lowercase, drop punctuation, collapse whitespace (the report's text preprocessing).

    Punctuation is every Unicode character of category P*; it becomes a space so that
    "rain,thunder" does not glue into one word.
    """
    lowered = unicodedata.normalize("NFKC", text).lower()
    cleaned = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in lowered)
    return " ".join(cleaned.split())


class TextTokenizer:
    """A `tokenizers.Tokenizer` with the project's normalisation, truncation and padding rules."""

    def __init__(self, tokenizer, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        pad = tokenizer.token_to_id("<pad>")
        self.pad_id = 1 if pad is None else pad
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_tokens)

    @classmethod
    def from_file(cls, path: str | Path, max_tokens: int = DEFAULT_MAX_TOKENS) -> TextTokenizer:
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises plain Exceptions with terse text
            raise ValueError(f"{path}: not a valid tokenizers JSON file ({exc})") from exc
        return cls(tok, max_tokens)

    @classmethod
    def from_json(cls, text: str, max_tokens: int = DEFAULT_MAX_TOKENS) -> TextTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text), max_tokens)

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, int64 [B, L], padded to the longest row (L <= max_tokens)."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not one string")
        encodings = self.tokenizer.encode_batch([normalize_caption(t) for t in texts])
        length = max((len(e.ids) for e in encodings), default=1) or 1
        ids = np.full((len(encodings), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), length), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return ids, mask


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> TextTokenizer:
    """Train a small byte-level BPE with RoBERTa's special tokens on the given captions.

    Used for randomly initialised text towers (tests, the demo), where no pretrained tokenizer
    can be downloaded. The special-token ids match RoBERTa's (<s>=0, <pad>=1, </s>=2, <unk>=3).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((normalize_caption(t) for t in texts), trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return TextTokenizer(tok)
