"""Scoring heads: the cosine bi-encoder head and the report's cross-modal attention head (eqs. 1-7).

The attention head has two exact evaluations:
- `reference_scores` follows eqs. 1-7 literally for paired (text, audio) inputs;
- `text_state` / `audio_state` / `scores` fold everything on the value path that does not depend on
  the query into per-clip tensors. Scoring a (query, clip) pair then costs about tokens x segments x d
  instead of tokens x d x d. Training uses it for the all-pairs batch matrix; the exported reranker
  runs the same algebra over stored clip tensors.

Folding (per head i, head width e = d / h, W_blk_i the columns of W^O acting on head i):
  a[n,i,m] = softmax_m(q[n,i] . k[m,i])          q, k: head-split projections of Q = Wq T, K = Wk A
  H_n      = sum_{i,m} a[n,i,m] u[m,i],          u[m,i] = Wo W_blk_i v[m,i] + c / h,  c = Wo b^O + b_o
  (the c / h share is exact because the attention weights of each head sum to one)
  x_n . H_n = sum a[n,i,m] (z[n,i] . v[m,i] + x_n . c / h),  z[n,i] = W_blk_i^T Wo^T x_n
  |H_n|^2   = a_n^T G a_n,                        G = Gram matrix of the u[m,i] of one clip
where x_n is T_n (eq. 7) or Q_n (`compare_to="query"`).

Time positions (`positions > 0`): a learned vector per segment index is added to the segment embeddings
before the key and value projections, A'_m = A_m + P_m. Everything above then holds with A' for A, so the
fold stays exact and a stored clip row keeps its shape (it holds A'_m instead of A_m). Without positions
the head is blind to the order of segments: permuting them permutes keys and values alike.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

EPS = 1e-8


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x [B, M, D] over the valid rows of mask [B, M]."""
    weights = mask.to(x.dtype)[..., None]
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the last axis of the positions the mask marks valid (eq. 7's 1/N sum over real tokens)."""
    return (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def safe_cosine(dot: torch.Tensor, norm_a: torch.Tensor, norm_b: torch.Tensor) -> torch.Tensor:
    return dot / (norm_a.clamp_min(EPS) * norm_b.clamp_min(EPS))


class CosineHead(nn.Module):
    """Projections of the pooled audio and the sentence token into the joint space, L2-normalised."""

    def __init__(self, audio_dim: int, text_dim: int, dim: int) -> None:
        super().__init__()
        self.audio_proj = nn.Linear(audio_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)

    def audio(self, segments: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.audio_proj(masked_mean(segments, mask)), dim=-1)

    def text(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(tokens[:, 0]), dim=-1)


class CrossModalAttentionHead(nn.Module):
    def __init__(self, audio_dim: int, text_dim: int, dim: int, heads: int = 8, variant: str = "full",
                 compare_to: str = "text", positions: int = 0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError("dim must be divisible by heads")
        if compare_to == "text" and text_dim != dim:
            raise ValueError(f"compare_to='text' compares T with H, so the text width ({text_dim}) must equal "
                             f"the joint dimension ({dim}); use compare_to='query'")
        if variant not in {"sentence", "full"}:
            raise ValueError("variant must be 'sentence' or 'full'")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.variant, self.compare_to = variant, compare_to
        self.wq = nn.Linear(text_dim, dim)  # eq. 1
        self.wk = nn.Linear(audio_dim, dim)  # eq. 2
        self.wv = nn.Linear(audio_dim, dim)  # eq. 3
        self.head_q = nn.Linear(dim, dim)  # W_i^Q of all heads, stacked (eq. 5)
        self.head_k = nn.Linear(dim, dim)  # W_i^K
        self.head_v = nn.Linear(dim, dim)  # W_i^V
        self.head_out = nn.Linear(dim, dim)  # W^O (eq. 4)
        self.wo = nn.Linear(dim, dim)  # W_o (eq. 6)
        # Zero at start: a fresh head scores exactly as a position-free one, and an index that training
        # never reaches (the third segment under 20 s crops) stays neutral instead of random.
        self.position = nn.Parameter(torch.zeros(positions, audio_dim)) if positions else None

    def with_positions(self, audio: torch.Tensor) -> torch.Tensor:
        """Segment embeddings [B, M, Da] plus their index's position vector (unchanged without positions)."""
        if self.position is None:
            return audio
        m = audio.shape[1]
        if m > self.position.shape[0]:
            raise ValueError(f"{m} segments but positions only for {self.position.shape[0]}")
        return audio + self.position[:m].to(audio.dtype)

    def select_tokens(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.variant == "sentence":
            return tokens[:, :1], mask[:, :1]
        return tokens, mask

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-1], self.heads, self.head_dim)

    # -- eqs. 1-7 as written -------------------------------------------------------------------
    def reference_scores(self, text: torch.Tensor, text_mask: torch.Tensor, audio: torch.Tensor,
                         audio_mask: torch.Tensor) -> torch.Tensor:
        """Score of text row b against audio row b: [B, N, Dt], [B, N], [B, M, Da], [B, M] -> [B]."""
        text, text_mask = self.select_tokens(text, text_mask)
        audio = self.with_positions(audio)
        Q, K, V = self.wq(text), self.wk(audio), self.wv(audio)
        q = self._split(self.head_q(Q)).transpose(1, 2)  # [B, h, N, e]
        k = self._split(self.head_k(K)).transpose(1, 2)  # [B, h, M, e]
        v = self._split(self.head_v(V)).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        logits = logits.masked_fill(~audio_mask.bool()[:, None, None, :], float("-inf"))
        heads = torch.softmax(logits, dim=-1) @ v  # [B, h, N, e]
        multihead = self.head_out(heads.transpose(1, 2).reshape(text.shape[0], text.shape[1], self.dim))
        H = self.wo(multihead)
        X = text if self.compare_to == "text" else Q
        cos = safe_cosine((X * H).sum(-1), X.norm(dim=-1), H.norm(dim=-1))
        return token_mean(cos, text_mask.to(cos.dtype))

    # -- folded evaluation -------------------------------------------------------------------------
    def _bias_share(self) -> torch.Tensor:
        """c / h: the constant part of H spread over the h heads."""
        return self.wo(self.head_out.bias) / self.heads

    def text_state(self, text: torch.Tensor, text_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Query-side tensors: q (pre-scaled), z, e = x.c/h, |x|, token mask."""
        text, text_mask = self.select_tokens(text, text_mask)
        Q = self.wq(text)
        q = self._split(self.head_q(Q)) / math.sqrt(self.head_dim)
        X = text if self.compare_to == "text" else Q
        z = self._split((X @ self.wo.weight) @ self.head_out.weight)
        e = X @ self._bias_share()
        return {"q": q, "z": z, "e": e, "xnorm": X.norm(dim=-1), "mask": text_mask.to(q.dtype)}

    def audio_state(self, audio: torch.Tensor, audio_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Clip-side tensors: k, v [B, M, h, e], Gram [B, M*h, M*h] (index m*h + i), segment mask."""
        audio = self.with_positions(audio)
        k = self._split(self.head_k(self.wk(audio)))
        v = self._split(self.head_v(self.wv(audio)))
        out_blocks = self.head_out.weight.reshape(self.dim, self.heads, self.head_dim)
        u = torch.einsum("bmhe,dhe->bmhd", v, out_blocks) @ self.wo.weight.T + self._bias_share()
        valid = audio_mask.to(u.dtype)
        u = u * valid[:, :, None, None]
        u = u.flatten(1, 2)
        gram = u @ u.transpose(1, 2)
        return {"k": k, "v": v, "gram": gram, "mask": valid}

    def scores(self, ts: dict[str, torch.Tensor], aus: dict[str, torch.Tensor]) -> torch.Tensor:
        """All pairs: text states [T, ...] x audio states [A, ...] -> scores [T, A]."""
        logits = torch.einsum("tnhe,amhe->tanhm", ts["q"], aus["k"])
        seg_mask = aus["mask"][None, :, None, None, :]
        att = torch.softmax(logits.masked_fill(seg_mask == 0, float("-inf")), dim=-1)
        zv = torch.einsum("tnhe,amhe->tanhm", ts["z"], aus["v"]) + ts["e"][:, None, :, None, None]
        num = (att * zv).sum((-1, -2))
        p = att.transpose(-1, -2).flatten(-2)  # [T, A, N, M*h], index m*h + i
        norm2 = torch.einsum("tanp,apq,tanq->tan", p, aus["gram"], p)
        cos = safe_cosine(num, ts["xnorm"][:, None, :], norm2.clamp_min(0).sqrt())
        return token_mean(cos, ts["mask"][:, None, :])
