"""The attention head on a hand-computed example, folded == literal eqs. 1-7, and the loss properties."""

import math

import pytest

torch = pytest.importorskip("torch")

from hark.training.heads import CosineHead, CrossModalAttentionHead, masked_mean  # noqa: E402
from hark.training.losses import DistillationLoss, NTXentLoss, positive_targets  # noqa: E402


def _identity_head(variant: str = "full") -> CrossModalAttentionHead:
    head = CrossModalAttentionHead(audio_dim=2, text_dim=2, dim=2, heads=1, variant=variant)
    with torch.no_grad():
        for layer in (head.wq, head.wk, head.wv, head.head_q, head.head_k, head.head_v, head.head_out, head.wo):
            layer.weight.copy_(torch.eye(2))
            layer.bias.zero_()
    return head


def test_attention_head_hand_computed_example():
    # T = [[1, 0]], A = [[1, 0], [0, 1]], identity projections, one head of width 2:
    # weights = softmax([1/sqrt(2), 0]) = [0.669762, 0.330238], H = weights, score = cos(T, H).
    head = _identity_head()
    text = torch.tensor([[[1.0, 0.0]]])
    audio = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    ones_t, ones_a = torch.ones(1, 1), torch.ones(1, 2)
    expected = 0.669762 / math.sqrt(0.669762**2 + 0.330238**2)
    assert expected == pytest.approx(0.896900, abs=1e-6)
    assert head.reference_scores(text, ones_t, audio, ones_a).item() == pytest.approx(expected, abs=1e-5)
    folded = head.scores(head.text_state(text, ones_t), head.audio_state(audio, ones_a))
    assert folded.item() == pytest.approx(expected, abs=1e-5)


def test_hand_example_padding_and_sentence_variant():
    head = _identity_head()
    # A masked third segment must not change the score; a second text token [0, 1] scores
    # symmetrically (0.8969), and a padded token is ignored by the mean.
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    tmask = torch.tensor([[1.0, 1.0, 0.0]])
    audio = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, -9.0]]])
    amask = torch.tensor([[1.0, 1.0, 0.0]])
    ref = head.reference_scores(text, tmask, audio, amask)
    assert ref.item() == pytest.approx(0.896900, abs=1e-5)
    sentence = _identity_head("sentence")
    # Sentence variant: only token 0 counts, whatever follows.
    text2 = torch.tensor([[[1.0, 0.0], [-3.0, 7.0], [5.0, 5.0]]])
    assert sentence.reference_scores(text2, torch.ones(1, 3), audio, amask).item() == pytest.approx(0.8969, abs=1e-4)


@pytest.mark.parametrize("variant", ["sentence", "full"])
@pytest.mark.parametrize("compare_to", ["text", "query"])
@pytest.mark.parametrize("segments", [1, 2, 3, 5])
def test_folded_scores_equal_literal_head(variant, compare_to, segments):
    torch.manual_seed(segments)
    d_text = 32 if compare_to == "text" else 24
    head = CrossModalAttentionHead(audio_dim=20, text_dim=d_text, dim=32, heads=4, variant=variant,
                                   compare_to=compare_to).double()
    n_text, n_audio, tokens = 5, 6, 7
    text = torch.randn(n_text, tokens, d_text, dtype=torch.float64)
    tmask = torch.ones(n_text, tokens, dtype=torch.float64)
    tmask[1, 4:] = 0
    tmask[3, 2:] = 0
    audio = torch.randn(n_audio, segments, 20, dtype=torch.float64)
    amask = torch.ones(n_audio, segments, dtype=torch.float64)
    if segments > 1:
        amask[2, 1:] = 0
        amask[4, -1] = 0
    folded = head.scores(head.text_state(text, tmask), head.audio_state(audio, amask))
    assert folded.shape == (n_text, n_audio)
    for t in range(n_text):
        literal = head.reference_scores(text[t:t + 1].expand(n_audio, -1, -1),
                                        tmask[t:t + 1].expand(n_audio, -1), audio, amask)
        rel = (folded[t] - literal).abs() / literal.abs().clamp_min(1e-6)
        assert rel.max().item() < 1e-4, (t, folded[t], literal)


def test_folded_scores_equal_literal_head_in_float32():
    torch.manual_seed(3)
    head = CrossModalAttentionHead(audio_dim=48, text_dim=64, dim=64, heads=8, variant="full").eval()
    text, tmask = torch.randn(4, 9, 64), torch.ones(4, 9)
    audio, amask = torch.randn(10, 3, 48), torch.ones(10, 3)
    amask[::2, 2] = 0
    with torch.no_grad():
        folded = head.scores(head.text_state(text, tmask), head.audio_state(audio, amask))
        literal = torch.stack([head.reference_scores(text[t:t + 1].expand(10, -1, -1), tmask[t:t + 1].expand(10, -1),
                                                     audio, amask) for t in range(4)])
    # Relative to the score scale: random vectors make single scores arbitrarily close to zero.
    assert ((folded - literal).abs().max() / literal.abs().max()).item() < 1e-4


def test_compare_to_text_needs_matching_widths():
    with pytest.raises(ValueError, match="compare_to"):
        CrossModalAttentionHead(audio_dim=8, text_dim=12, dim=16, heads=4, compare_to="text")


def test_cosine_head_is_normalised_and_pools_only_valid_segments():
    torch.manual_seed(0)
    head = CosineHead(audio_dim=6, text_dim=5, dim=4)
    segs = torch.randn(2, 3, 6)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = head.audio(segs, mask)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2))
    changed = segs.clone()
    changed[0, 2] = 100.0  # masked segment
    assert torch.allclose(head.audio(changed, mask), out)
    assert torch.allclose(masked_mean(segs, mask)[1], segs[1, 0])


def test_positive_targets_share_mass_between_duplicates():
    t = positive_targets(["a", "b", "a"])
    assert torch.allclose(t, torch.tensor([[0.5, 0, 0.5], [0, 1.0, 0], [0.5, 0, 0.5]]))


def test_ntxent_properties():
    loss = NTXentLoss(tau=0.05)
    ids = ["a", "b", "c", "d"]
    perfect = torch.eye(4) * 2 - 1  # positives at +1, negatives at -1
    assert loss(perfect, ids).item() < 1e-6
    uniform = torch.zeros(4, 4)
    assert loss(uniform, ids).item() == pytest.approx(math.log(4), rel=1e-6)
    # Symmetric: transposing the score matrix leaves the loss unchanged.
    scores = torch.randn(4, 4)
    assert loss(scores, ids).item() == pytest.approx(loss(scores.T, ids).item(), rel=1e-6)
    # The temperature sharpens: at tau = 0.05, a slightly better positive already gives a small loss.
    margin = torch.eye(4) * 0.5
    assert loss(margin, ids).item() < NTXentLoss(tau=1.0)(margin, ids).item()


def test_ntxent_duplicate_audio_is_not_a_negative():
    loss = NTXentLoss(tau=0.1)
    # Captions 0 and 2 describe the same audio: scoring caption 0 high on column 2 is not pushed down,
    # whereas with three distinct audios it is.
    base = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])
    grads = {}
    for name, ids in {"dup": ["x", "y", "x"], "distinct": ["x", "y", "z"]}.items():
        scores = base.clone().requires_grad_(True)
        loss(scores, ids).backward()
        grads[name] = scores.grad[0, 2].item()
    assert abs(grads["dup"]) < 1e-6
    assert grads["distinct"] > 1e-3


def test_distillation_matches_teacher_minimum():
    teacher = torch.randn(5, 5)
    kd = DistillationLoss(tau=0.05, kd_lambda=1.0)
    ids = list("abcde")
    at_teacher = kd(teacher, teacher, ids).item()
    assert kd(teacher + 0.3 * torch.randn(5, 5), teacher, ids).item() > at_teacher
    # lambda = 0 falls back to the hard contrastive loss alone.
    hard = DistillationLoss(tau=0.05, kd_lambda=0.0)
    assert hard(teacher, torch.zeros(5, 5), ids).item() == pytest.approx(NTXentLoss(0.05)(teacher, ids).item())
