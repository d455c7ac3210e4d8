"""The exported computations as torch modules: one per ONNX graph of the bundle.

- AudioGraph:  waveform segments [S, samples] -> segment embeddings [S, Da] (mel front end included,
  as a DFT convolution so every execution provider runs it).
- ClipGraph:   segment embeddings [C, M, Da] + mask [C, M] -> the vectors stored per clip: `global`
  [C, d] (cosine head) and `tokens` [C, M, row] (the folded attention head's clip tensors).
- TextGraph:   token ids + mask [B, L] -> `sentence` [B, d] and the text token embeddings [B, L, Dt].
- RerankGraph: a query's text tokens and its K candidates' stored rows -> attention scores [B, K].

A stored `tokens` row of segment m packs [k_m (d) | v_m (d) | rows m*h..m*h+h-1 of the clip's Gram
matrix (h x M*h)], so one multivector carries everything the reranker reads about the clip.
"""

from __future__ import annotations

import torch
from torch import nn

from hark.training.frontend import MelFrontEnd
from hark.training.model import RetrievalModel
from hark.training.towers import PASST_FRAMES


def row_size(dim: int, heads: int, max_segments: int) -> int:
    return 2 * dim + heads * heads * max_segments


class AudioGraph(nn.Module):
    def __init__(self, model: RetrievalModel) -> None:
        super().__init__()
        self.frontend = MelFrontEnd(model.cfg.audio, dft_conv=True)
        self.net = model.audio.net

    def forward(self, segments: torch.Tensor) -> torch.Tensor:
        mel = self.frontend(segments)[:, :, :PASST_FRAMES]
        feats = self.net.forward_features(mel[:, None])
        return (feats[0] + feats[1]) / 2 if isinstance(feats, tuple) else feats


class ClipGraph(nn.Module):
    def __init__(self, model: RetrievalModel) -> None:
        super().__init__()
        if model.cosine is None:
            raise ValueError("the bundle's prefilter needs the cosine head; this model has none")
        self.cosine = model.cosine
        self.attention = model.attention

    def forward(self, segments: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        glob = self.cosine.audio(segments, mask)
        if self.attention is None:
            return glob, segments[:, :, :0]
        state = self.attention.audio_state(segments, mask)
        c, m = segments.shape[:2]
        k = state["k"].reshape(c, m, -1)
        v = state["v"].reshape(c, m, -1)
        gram = state["gram"].reshape(c, m, -1)
        return glob, torch.cat([k, v, gram], dim=-1)


class TextGraph(nn.Module):
    def __init__(self, model: RetrievalModel) -> None:
        super().__init__()
        self.text = model.text
        self.cosine = model.cosine

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.text(ids, mask)
        return self.cosine.text(tokens, mask), tokens


class RerankGraph(nn.Module):
    """Folded attention-head scores of each query against its own K candidates."""

    def __init__(self, model: RetrievalModel) -> None:
        super().__init__()
        if model.attention is None:
            raise ValueError("this model has no attention head to rerank with")
        self.head = model.attention

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor, rows: torch.Tensor,
                segment_mask: torch.Tensor) -> torch.Tensor:
        head = self.head
        ts = head.text_state(tokens, token_mask.to(tokens.dtype))
        b, k, m, _ = rows.shape
        d, h, e = head.dim, head.heads, head.head_dim
        keys = rows[..., :d].reshape(b, k, m, h, e)
        values = rows[..., d:2 * d].reshape(b, k, m, h, e)
        gram = rows[..., 2 * d:].reshape(b, k, m * h, m * h)
        seg = segment_mask.to(rows.dtype)
        logits = torch.einsum("bnhe,bkmhe->bknhm", ts["q"], keys)
        logits = logits.masked_fill(seg[:, :, None, None, :] == 0, float("-inf"))
        att = torch.softmax(logits, dim=-1)
        zv = torch.einsum("bnhe,bkmhe->bknhm", ts["z"], values) + ts["e"][:, None, :, None, None]
        num = (att * zv).sum((-1, -2))
        p = att.transpose(-1, -2).reshape(b, k, att.shape[2], m * h)
        norm2 = torch.einsum("bknp,bkpq,bknq->bkn", p, gram, p)
        cos = num / (ts["xnorm"][:, None, :].clamp_min(1e-8) * norm2.clamp_min(0).sqrt().clamp_min(1e-8))
        valid = ts["mask"][:, None, :]
        return (cos * valid).sum(-1) / valid.sum(-1).clamp_min(1.0)


class LiteralRerankGraph(nn.Module):
    """The report's head as written, evaluated candidate by candidate over raw segment embeddings.

    Only for the benchmark and parity checks: it is what the folded reranker replaces.
    """

    def __init__(self, model: RetrievalModel) -> None:
        super().__init__()
        if model.attention is None:
            raise ValueError("this model has no attention head")
        self.head = model.attention

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor, segments: torch.Tensor,
                segment_mask: torch.Tensor) -> torch.Tensor:
        k = segments.shape[0]
        return self.head.reference_scores(tokens.expand(k, -1, -1), token_mask.expand(k, -1).to(tokens.dtype),
                                          segments, segment_mask.to(segments.dtype))
