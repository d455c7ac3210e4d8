"""Order: the caption swap (a general English rule) and the attention head's time positions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hark.demo.synth import VARIANTS
from hark.order import ordered_events, swap_order


@pytest.mark.parametrize("caption, swapped", [
    ("A dog barks, then a bell rings.", "A bell rings, then a dog barks."),
    ("A dog barks and then a bell rings.", "A bell rings and then a dog barks."),
    ("a dog barks then a bell rings", "a bell rings then a dog barks"),
    ("First a dog barks and afterwards a bell rings.", "First a bell rings and afterwards a dog barks."),
    ("A dog barks before a bell rings.", "A bell rings before a dog barks."),
    ("A woman talks after a beep sounds.", "A beep sounds after a woman talks."),
    ("After a dog barks, a bell rings.", "After a bell rings, a dog barks."),
    ("A man speaks followed by a loud bang.", "A loud bang followed by a man speaks."),
    ("A man speaking followed by a dog barking", "A dog barking followed by a man speaking"),
    ("Birds chirp as a car passes by, then a horn honks.", "A horn honks, then birds chirp as a car passes by."),
    ("A dog barks, then a bell rings, then rain falls.", "Rain falls, then a bell rings, then a dog barks."),
    ("First a dog barks, then a bell rings, and finally rain falls.",
     "First rain falls, then a bell rings, and finally a dog barks."),
    ("A vehicle engine revs, after which it idles.", "It idles, after which a vehicle engine revs."),
    ("To begin with a hound yaps, later a chime is struck.", "To begin with a chime is struck, later a hound yaps."),
    ("A hound yaps; subsequently a chime is struck.", "A chime is struck; subsequently a hound yaps."),
    ("Once a hound yaps, a chime is struck.", "Once a chime is struck, a hound yaps."),
])
def test_swaps_captions_that_state_an_order(caption, swapped):
    assert swap_order(caption) == swapped
    # Swapping back restores the caption.
    assert swap_order(swapped) == caption


@pytest.mark.parametrize("caption", [
    "A dog barks while rain falls.",
    "A dog barks as rain falls.",  # "as": at the same time, not in order
    "A siren wails, and meanwhile a dog barks.",
    "A man speaks and a dog barks.",
    "A dog barks now and then.",
    "Then a dog barks.",  # "then" without a clause before it
    "A dog barks and then",  # ... or after it
    "People talk one after another.",
    "A dog barks after a while.",
    "A bell rings shortly before noon.",
    "Rain falls before and after the thunder.",
    "Once again, a dog barks.",
    "A bird chirps.",
    "",
    "Rain falls, then rain falls.",  # reversing changes nothing
])
def test_leaves_captions_without_an_order_alone(caption):
    assert swap_order(caption) is None


@pytest.mark.parametrize(("caption", "events"), [
    ("A dog barks, then a bell rings.", ["a dog barks", "a bell rings"]),
    ("A bell rings after a dog barks.", ["a dog barks", "a bell rings"]),
    ("A dog barks before a bell rings.", ["a dog barks", "a bell rings"]),
    ("After a dog barks, a bell rings.", ["a dog barks", "a bell rings"]),
    ("Before the rain starts, a dog barks.", ["a dog barks", "the rain starts"]),
    ("First a siren wails, then a dog barks, and finally rain falls.",
     ["a siren wails", "a dog barks", "rain falls"]),
    ("I cough, followed by NASA radio chatter", ["I cough", "NASA radio chatter"]),
    ("A dog barks while it rains.", None),
    ("Now and then a dog barks.", None),
])
def test_ordered_events_earliest_first(caption, events):
    assert ordered_events(caption) == events


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_synthetic_sequence_template_is_reversed_and_no_other(variant):
    """Both generators' sequence captions swap into the template with the clauses reversed; mixed, bare
    and single-event captions do not swap. (Variant "b" is only checked here, never used to choose.)"""
    style = VARIANTS[variant]
    rng = np.random.default_rng(0)
    names = list(style.events)
    for count, templates in ((2, style.two), (3, style.three)):
        for arrangement, group in templates.items():
            for template in group:
                for _ in range(5):
                    events = [names[i] for i in rng.choice(len(names), size=count, replace=False)]
                    clauses = [style.events[e][int(rng.integers(3))] for e in events]
                    caption = template.format(**dict(zip("abc", clauses, strict=False))) + "."
                    caption = caption[0].upper() + caption[1:]
                    got = swap_order(caption)
                    if arrangement == "sequence":
                        back = template.format(**dict(zip("abc", clauses[::-1], strict=False))) + "."
                        assert got == back[0].upper() + back[1:], (template, caption)
                        # The events in the order they happen, whatever the template's wording.
                        assert ordered_events(caption) == clauses, (template, caption)
                    else:
                        assert got is None and ordered_events(caption) is None, (template, caption)
    for template, clause in itertools.product(style.single, itertools.chain(*style.events.values())):
        assert swap_order(template.format(a=clause) + ".") is None, template


# -- the attention head's time positions ---------------------------------------------------------------

torch = pytest.importorskip("torch")


def _positioned_head(compare_to: str = "text", variant: str = "full"):
    from hark.training.heads import CrossModalAttentionHead

    torch.manual_seed(7)
    text_dim = 32 if compare_to == "text" else 40
    head = CrossModalAttentionHead(24, text_dim, 32, 4, variant, compare_to, positions=3).double()
    with torch.no_grad():
        head.position.normal_()
    return head, text_dim


@pytest.mark.parametrize("compare_to", ["text", "query"])
def test_positions_make_the_head_hear_segment_order_and_the_fold_stays_exact(compare_to):
    head, text_dim = _positioned_head(compare_to)
    text, tmask = torch.randn(3, 5, text_dim, dtype=torch.float64), torch.ones(3, 5, dtype=torch.float64)
    tmask[1, 3:] = 0
    audio = torch.randn(4, 3, 24, dtype=torch.float64)
    amask = torch.ones(4, 3, dtype=torch.float64)
    amask[2, 2] = 0
    swapped = audio.clone()
    swapped[:, [0, 1]] = audio[:, [1, 0]]  # the first two segments trade places
    with torch.no_grad():
        folded = head.scores(head.text_state(text, tmask), head.audio_state(audio, amask))
        folded_swapped = head.scores(head.text_state(text, tmask), head.audio_state(swapped, amask))
        for t in range(3):
            literal = head.reference_scores(text[t:t + 1].expand(4, -1, -1), tmask[t:t + 1].expand(4, -1),
                                            audio, amask)
            np.testing.assert_allclose(folded[t].numpy(), literal.numpy(), rtol=1e-9, atol=1e-12)
        assert (folded - folded_swapped).abs().min() > 1e-8  # every pair changes, far above float64 rounding
        head.position.zero_()  # without positions the head cannot tell the two orders apart
        plain = head.scores(head.text_state(text, tmask), head.audio_state(audio, amask))
        plain_swapped = head.scores(head.text_state(text, tmask), head.audio_state(swapped, amask))
    np.testing.assert_allclose(plain.numpy(), plain_swapped.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("variant", ["sentence", "full"])
def test_stored_rows_carry_the_positions_and_the_reranker_equals_the_literal_head(variant):
    from types import SimpleNamespace

    from hark.exporters.graphs import ClipGraph, LiteralRerankGraph, RerankGraph
    from hark.training.heads import CosineHead

    head, text_dim = _positioned_head(variant=variant)
    holder = SimpleNamespace(attention=head, cosine=CosineHead(24, text_dim, 32).double())
    tokens, tmask = torch.randn(1, 6, text_dim, dtype=torch.float64), torch.ones(1, 6, dtype=torch.float64)
    segments = torch.randn(5, 3, 24, dtype=torch.float64)
    smask = torch.ones(5, 3, dtype=torch.float64)
    smask[1, 1:] = 0
    with torch.no_grad():
        glob, rows = ClipGraph(holder)(segments, smask)
        folded = RerankGraph(holder)(tokens, tmask, rows[None], smask[None])[0]
        literal = LiteralRerankGraph(holder)(tokens, tmask, segments, smask)
    assert rows.shape == (5, 3, 24 + 4 * 4 * 3)  # the row keeps its shape
    np.testing.assert_allclose(folded.numpy(), literal.numpy(), rtol=1e-9, atol=1e-12)
    # The prefilter vector ignores positions: it is the plain cosine head of the raw segments.
    np.testing.assert_allclose(glob.numpy(), holder.cosine.audio(segments, smask).detach().numpy())


def test_positions_config_and_checkpoints_without_the_key():
    from hark.training.config import ConfigError, ModelConfig, load_config
    from hark.training.model import RetrievalModel, restore_model
    from hark.training.towers import build_tokenizer

    assert ModelConfig().heads.positions == "none"
    with pytest.raises(ConfigError, match=r"heads\.positions"):
        load_config("tiny", ["heads.positions=sinusoid"])
    with pytest.raises(ConfigError, match="order_negatives"):
        load_config("tiny", ["train.order_negatives=-1"])
    with pytest.raises(ConfigError, match="order_heads"):
        load_config("tiny", ["train.order_heads=cosine"])
    cfg = load_config("tiny", ["heads.positions=none"])
    model = RetrievalModel(cfg, build_tokenizer(cfg.text, ["a dog barks, then rain falls"] * 20))
    payload = model.checkpoint_payload()
    del payload["config"]["heads"]["positions"]  # written by a hark without the switch
    restored = restore_model(payload)
    assert restored.attention.position is None and restored.cfg.heads.positions == "none"
    on = RetrievalModel(cfg.with_overrides(["heads.positions=learned"]), model.tokenizer)
    assert on.attention.position.shape == (cfg.audio.max_segments, on.audio.dim)
    assert float(on.attention.position.detach().abs().sum()) == 0.0  # starts as a position-free head


# -- order-aware training ------------------------------------------------------------------------------

def test_order_negatives_pick_ordered_unmixed_captions():
    from hark.training.objectives import order_negatives

    batch = {"captions": ["A dog barks, then rain falls.", "A bird chirps.", "Wind blows before a bell rings.",
                          "A man speaks, then a siren wails and water drips."],
             "caption_audio_index": torch.arange(4), "mixed": [False, False, False, True]}
    index, swapped = order_negatives(batch)
    assert index == [0, 2]
    assert swapped == ["Rain falls, then a dog barks.", "A bell rings before wind blows."]
    del batch["mixed"]
    assert order_negatives(batch)[0] == [0, 2, 3]


def test_order_loss_prefers_the_right_order_and_trains_the_positions():
    from hark.training.config import load_config
    from hark.training.losses import OrderLoss
    from hark.training.model import RetrievalModel
    from hark.training.objectives import ContrastiveObjective
    from hark.training.towers import build_tokenizer

    loss = OrderLoss(0.1)
    right, wrong = torch.tensor([0.5, 0.2]), torch.tensor([0.1, 0.4])
    assert float(loss(right, wrong)) < float(loss(wrong, right))
    assert float(loss(right, wrong)) == pytest.approx(float(torch.nn.functional.softplus((wrong - right) / 0.1).mean()))

    torch.manual_seed(0)
    captions = ["A dog barks, then rain falls.", "A bird chirps.", "Wind blows before a bell rings.", "Rain falls."]
    cfg = load_config("tiny", ["heads.positions=learned"])
    model = RetrievalModel(cfg, build_tokenizer(cfg.text, captions * 10)).eval()  # no dropout: same scores twice
    batch = {"waveform": 0.1 * torch.randn(4, 32000 * 14), "lengths": torch.full((4,), 32000 * 14),
             "captions": captions, "caption_audio_index": torch.arange(4), "audio_ids": list("abcd"),
             "sources": ["s"] * 4}
    plain_loss, plain = ContrastiveObjective(model, 0.05, 0.0)(batch)
    total, report = ContrastiveObjective(model, 0.05, 0.5)(batch)
    assert set(report) == {"loss_cosine", "loss_attention", "order_cosine", "order_attention"}
    assert "order_attention" not in plain
    expected = plain_loss + 0.5 * (report["order_cosine"] + report["order_attention"])
    assert float(total) == pytest.approx(float(expected), rel=1e-5)
    total.backward()
    assert model.attention.position.grad[:2].abs().sum() > 0  # both used segments learn a position
    _, only = ContrastiveObjective(model, 0.05, 0.5, "attention")(batch)
    assert "order_attention" in only and "order_cosine" not in only



def test_exported_bundle_with_positions_matches_pytorch(tmp_path):
    """The ONNX clip and rerank graphs of a model with (non-zero) positions equal its training scores."""
    from hark.bundle import Bundle
    from hark.exporters.onnx_export import export_bundle
    from hark.training.config import load_config
    from hark.training.model import RetrievalModel
    from hark.training.towers import build_tokenizer

    torch.manual_seed(1)
    captions = ["A dog barks, then rain falls.", "Rain falls before a dog barks.", "A bird chirps."]
    cfg = load_config("tiny-order")
    model = RetrievalModel(cfg, build_tokenizer(cfg.text, captions * 20)).eval()
    with torch.no_grad():
        model.attention.position.normal_()
    torch.save(model.checkpoint_payload(), tmp_path / "best.pt")
    bundle = Bundle.load(export_bundle(tmp_path / "best.pt", tmp_path / "bundle"))
    seg = torch.randn(2, cfg.audio.max_segments, model.audio.dim)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    swapped = seg[:, [1, 0, 2]]
    _, rows = bundle.session("clip", "cpu").run(None, {"segment_embeddings": torch.cat([seg, swapped]).numpy(),
                                                       "segment_mask": torch.cat([mask, mask]).numpy()})
    ids, tmask = model.tokenizer.encode(captions[:1])
    with torch.no_grad():
        text = model.encode_text(torch.from_numpy(ids), torch.from_numpy(tmask))
        ref = model.attention.scores(text.state, model.attention.audio_state(torch.cat([seg, swapped]),
                                                                           torch.cat([mask, mask])))[0]
    got = bundle.session("rerank", "cpu").run(None, {
        "tokens": text.tokens.numpy(), "token_mask": tmask.astype(np.float32), "rows": rows[None],
        "segment_mask": torch.cat([mask, mask]).numpy()[None]})[0][0]
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(got[:2] - got[2:]).min() > 1e-6  # swapping segments changes the exported score
