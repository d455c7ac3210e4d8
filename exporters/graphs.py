"""The exported computations as torch modules: one per ONNX graph of the bundle.

- AudioGraph:  waveform segments [S, samples] -> segment embeddings [S, Da] (mel front end included,
  as a DFT convolution so every execution provider runs it).
- MomentGraph: short sub-windows [S, samples] -> unit vectors in the cosine head's space [S, d] (moments).
- ClipGraph:   segment embeddings [C, M, Da] + mask [C, M] -> the vectors stored per clip: `global`
  [C, d] (cosine head) and `tokens` [C, M, row] (the folded attention head's clip tensors).
- TextGraph:   token ids + mask [B, L] -> `sentence` [B, d] and the text token embeddings [B, L, Dt].
- RerankGraph: a query's text tokens and its K candidates' stored rows -> attention scores [B, K].

A stored `tokens` row of segment m packs [A_m (the segment embedding plus its time position, if the head has
positions; Da) | rows m*h..m*h+h-1 of the clip's
Gram matrix (h x M*h)]. The key and value projections are linear in A_m, so the reranker moves them to the
query side (each query token gets one Da-vector per head for the keys and one for the values); the clip
stores less than the projected keys and values would take, which is what Qdrant ships back per candidate.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from hark.training.frontend import MelFrontEnd
from hark.training.heads import safe_cosine, token_mean
from hark.training.model import RetrievalModel


def row_size(audio_dim: int, heads: int, max_segments: int) -> int:
    return audio_dim + heads * heads * max_segments


class AudioGraph(nn.Module):
    def __init__(self, model: RetrievalModel) -> None:
        super().__init__()
        self.frontend = MelFrontEnd(model.cfg.audio, dft_conv=True)
        # The frames the tower's time positional embedding spans (the training crop), from the config.
        self.frames = int(model.cfg.audio.frames)
        self.net = model.audio.net

    def forward(self, segments: torch.Tensor) -> torch.Tensor:
        mel = self.frontend(segments)[:, :, : self.frames]
        feats = self.net.forward_features(mel[:, None])
        return (feats[0] + feats[1]) / 2 if isinstance(feats, tuple) else feats


class MomentGraph(nn.Module):
    """Short sub-windows of audio [S, samples] -> their unit vectors in the cosine head's joint space [S, d].

    The same tower and projection as a clip's `global` vector, applied to one sub-window instead of the mean of
    a window's segments: the query's sentence vector scores them with the cosine it uses for the prefilter.
    """

    def __init__(self, model: RetrievalModel) -> None:
        super().__init__()
        if model.cosine is None:
            raise ValueError("moments need the cosine head")
        # PaSST warns that a sub-window is shorter than its positional grid; cutting the grid is intended.
        warnings.filterwarnings("ignore", message=r"Input image size .* doesn't match model")
        self.audio = AudioGraph(model)
        self.proj = model.cosine.audio_proj

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.proj(self.audio(windows)), dim=-1)


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
        gram = state["gram"].reshape(c, m, -1)
        # The row holds the positioned embedding A_m + P_m: the reranker's key/value algebra needs no change.
        positioned = self.attention.with_positions(segments)
        return glob, torch.cat([positioned * state["mask"][..., None], gram], dim=-1)


class TextGraph(nn.Module):
    def __init__(self, model: RetrievalModel) -> None:
        super().__init__()
        self.text = model.text
        self.cosine = model.cosine

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.text(ids, mask)
        return self.cosine.text(tokens, mask), tokens


class RerankGraph(nn.Module):
    """Folded attention-head scores of each query against its own K candidates.

    With W_k,i = head_k[i] wk and W_v,i = head_v[i] wv (per head i, e x Da):
      logit[n,i,m] = (W_k,i^T q[n,i]) . A_m           (the key biases add a constant per (n, i): softmax drops it)
      z[n,i] . v[m,i] = (W_v,i^T z[n,i]) . A_m + z[n,i] . c_v,i
    """

    def __init__(self, model: RetrievalModel) -> None:
        super().__init__()
        if model.attention is None:
            raise ValueError("this model has no attention head to rerank with")
        head = model.attention
        self.head = head
        d, h, e = head.dim, head.heads, head.head_dim
        with torch.no_grad():
            key = head.head_k.weight.reshape(h, e, d) @ head.wk.weight
            value = head.head_v.weight.reshape(h, e, d) @ head.wv.weight
            value_bias = (head.head_v.weight @ head.wv.bias + head.head_v.bias).reshape(h, e)
        self.register_buffer("key", key.detach().clone(), persistent=False)
        self.register_buffer("value", value.detach().clone(), persistent=False)
        self.register_buffer("value_bias", value_bias.detach().clone(), persistent=False)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor, rows: torch.Tensor,
                segment_mask: torch.Tensor) -> torch.Tensor:
        head = self.head
        ts = head.text_state(tokens, token_mask.to(tokens.dtype))
        b, k, m, _ = rows.shape
        h, da = head.heads, self.key.shape[-1]
        # The query side is laid out [B, Da, h*N] so that every candidate-sized tensor below comes out of a
        # GEMM already in the order its reductions need: [B, K, M, h, N]. Permuting the [B, K, N, 2h, M] products
        # instead was 59% of the graph's CPU time at K=1000 (ONNX Runtime's Transpose is an element gather).
        qa = torch.einsum("bnhe,hea->bahn", ts["q"], self.key).reshape(b, da, h * ts["q"].shape[1])
        za = torch.einsum("bnhe,hea->bahn", ts["z"], self.value).reshape(b, da, h * ts["z"].shape[1])
        zc = torch.einsum("bnhe,he->bn", ts["z"], self.value_bias)
        n = ts["q"].shape[1]
        segments = rows[..., :da].reshape(b, k * m, da)
        gram = rows[..., da:].reshape(b, k, m * h, m * h)
        logits = torch.matmul(segments, qa).reshape(b, k, m, h, n)
        values = torch.matmul(segments, za).reshape(b, k, m, h, n)
        valid = segment_mask.to(rows.dtype)[:, :, :, None, None]
        # Softmax over the segment axis (2) from broadcast reductions: no axis has to move to the end.
        logits = logits.masked_fill(valid == 0, float("-inf"))
        weight = torch.exp(logits - logits.amax(dim=2, keepdim=True))
        att = weight / weight.sum(dim=2, keepdim=True)
        num = (att * values).sum((2, 3)) + (zc + h * ts["e"])[:, None, :]  # [B, K, N]
        p = att.reshape(b, k, m * h, n)  # index m*h + i, the Gram's order
        norm2 = (torch.matmul(gram, p) * p).sum(2)  # [B, K, N]
        cos = safe_cosine(num, ts["xnorm"][:, None, :], norm2.clamp_min(0).sqrt())
        return token_mean(cos, ts["mask"][:, None, :])


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
