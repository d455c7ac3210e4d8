"""Training from real pretrained weights: stand-ins in every release layout (random weights, tiny dims).

PaSST files are written in hear21passt's key naming by hear21passt's own PaSST class; RoBERTa folders by
transformers' own save functions. Nothing is downloaded: hub names must fail fast and name the local path.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hark.errors import HarkError  # noqa: E402
from hark.training.config import AudioConfig, TextConfig, load_config  # noqa: E402
from hark.training.model import (  # noqa: E402
    CheckpointError,
    RetrievalModel,
    load_checkpoint,
    resave_checkpoint,
)
from hark.training.towers import (  # noqa: E402
    AudioTower,
    ModelLoadError,
    TextTower,
    build_tokenizer,
    resolve_text_model,
)

STRIDE10 = "passt-s-f128-p16-s10-ap.476-swa.pt"
STRIDE16 = "passt-s-f128-p16-s16-ap.468.pt"
CAPTIONS = ["A dog barks twice, then a car passes.", "rain falls on a tin roof", "birds sing"]


# -- PaSST stand-ins -------------------------------------------------------------------------------

def passt_state(stride: int = 10, frames: int = 998, seed: int = 0, dim: int = 128) -> dict:
    """A tiny distilled PaSST with the AudioSet classifier, as hear21passt's release files hold it.

    64-wide attention heads, as in every release: the head count is not stored in the weights."""
    from hear21passt.models.passt import PaSST

    torch.manual_seed(seed)
    net = PaSST(img_size=(128, frames), patch_size=16, stride=stride, in_chans=1, num_classes=527,
                embed_dim=dim, depth=2, num_heads=dim // 64, distilled=True)
    return {k: v.clone() for k, v in net.state_dict().items()}


def reference_embedding(state: dict, stride: int, frames: int, mel: torch.Tensor) -> torch.Tensor:
    """What hear21passt itself computes from `state`: mean of the class and distillation tokens."""
    from hear21passt.models.passt import PaSST

    net = PaSST(img_size=(128, frames), patch_size=16, stride=stride, in_chans=1, num_classes=527,
                embed_dim=state["cls_token"].shape[-1], depth=2, num_heads=state["cls_token"].shape[-1] // 64,
                distilled=True)
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        cls, dist = net.forward_features(mel[:, None, :, :frames])
    return (cls + dist) / 2


def assert_loaded(tower: AudioTower, state: dict) -> None:
    own = tower.net.state_dict()
    shared = [k for k in state if k in own]
    assert len(shared) == len(own)  # every parameter came from the file
    for key in shared:
        assert torch.equal(own[key], state[key]), key


def test_stride10_release_adapts_the_default_config(tmp_path, caplog):
    state = passt_state(stride=10)
    path = tmp_path / STRIDE10
    torch.save(state, path)
    cfg = AudioConfig(init=str(path))  # the defaults describe the stride-16 release
    assert (cfg.stride, cfg.arch) == (16, "passt_s_p16_s16_128_ap468")
    with caplog.at_level(logging.WARNING):
        tower = AudioTower(cfg).eval()
    assert (cfg.stride, cfg.patch, cfg.embed_dim, cfg.depth, cfg.frames) == (10, 16, 128, 2, 998)
    assert cfg.arch == "passt_s_swa_p16_128_ap476"
    text = caplog.text
    assert "audio.arch=passt_s_swa_p16_128_ap476" in text and "audio.stride=10" in text
    assert_loaded(tower, state)
    # The tower computes what hear21passt computes from the same weights.
    wave = 0.1 * torch.randn(2, 32000 * 10)
    with torch.no_grad():
        ours = tower.embed_segments(wave)
        ref = reference_embedding(state, 10, 998, tower.frontend(wave))
    assert torch.allclose(ours, ref, atol=1e-6)


def test_stride16_release_loads_without_changes(tmp_path, caplog):
    state = passt_state(stride=16)
    path = tmp_path / STRIDE16
    torch.save(state, path)
    cfg = AudioConfig(init=str(path), embed_dim=128, depth=2, num_heads=2)
    with caplog.at_level(logging.WARNING):
        tower = AudioTower(cfg)
    assert "adapted" not in caplog.text
    assert (cfg.stride, cfg.arch) == (16, "passt_s_p16_s16_128_ap468")
    assert_loaded(tower, state)


def test_long_release_keeps_its_time_embedding(tmp_path):
    # hear21passt's 20 s release: 200 time columns; a 10 s segment uses the first 99.
    state = passt_state(stride=10, frames=2000)
    path = tmp_path / "passt-s-f128-20sec-p16-s10-ap.474-swa.pt"
    torch.save(state, path)
    cfg = AudioConfig(init=str(path))
    tower = AudioTower(cfg).eval()
    assert (cfg.frames, cfg.stride, cfg.arch) == (2000, 10, "passt_20sec")
    assert_loaded(tower, state)
    with torch.no_grad():
        out, _ = tower(0.1 * torch.randn(1, 32000 * 10), torch.tensor([32000 * 10]))
    assert out.shape == (1, 1, 128) and torch.isfinite(out).all()


def test_stft_hop_release_names_the_front_end_settings(tmp_path):
    state = passt_state(stride=10, frames=3200)
    path = tmp_path / "passt-s-f128-stfthop100-p16-s10-ap.473-swa.pt"
    torch.save(state, path)
    with pytest.raises(ModelLoadError) as info:
        AudioTower(AudioConfig(init=str(path)))
    assert "audio.hop_length=100 audio.arch=stfthop100 audio.stride=10 audio.frames=3200" in _one_line(info.value)
    # With those settings it loads (10 s at hop 100 = 3200 frames: 319 of its 320 columns).
    cfg = AudioConfig(init=str(path), hop_length=100, arch="stfthop100", stride=10, frames=3200)
    tower = AudioTower(cfg).eval()
    assert_loaded(tower, state)
    with torch.no_grad():
        assert tower.embed_segments(0.1 * torch.randn(1, 32000 * 10)).shape == (1, 128)


def _layouts(net: dict, swa: dict) -> dict:
    return {
        "bare": net,
        "model": {"model": net},
        "state_dict": {"state_dict": net},
        "lightning-net-only": {"state_dict": {f"net.{k}": v for k, v in net.items()}, "epoch": 3},
        "lightning-swa": {"state_dict": {**{f"net.{k}": v for k, v in net.items()},
                                         **{f"net_swa.{k}": v for k, v in swa.items()}},
                          "epoch": 3, "global_step": 1200, "hyper_parameters": {"lr": 1e-4}},
        "lightning-averaged-model": {"state_dict": {
            **{f"net.{k}": v for k, v in net.items()},
            **{f"net_swa.module.{k}": v for k, v in swa.items()}, "net_swa.n_averaged": torch.tensor(5)}},
    }


@pytest.mark.parametrize("layout", ["bare", "model", "state_dict", "lightning-net-only", "lightning-swa",
                                    "lightning-averaged-model"])
def test_every_release_layout_loads(tmp_path, caplog, layout):
    net, swa = passt_state(seed=1), passt_state(seed=2)
    path = tmp_path / STRIDE10
    torch.save(_layouts(net, swa)[layout], path)
    with caplog.at_level(logging.WARNING):
        tower = AudioTower(AudioConfig(init=str(path)))
    expected = swa if layout in {"lightning-swa", "lightning-averaged-model"} else net
    assert_loaded(tower, expected)
    if expected is swa:
        assert "net_swa.* (the averaged weights)" in caplog.text and "audio.weights=net" in caplog.text


def test_weights_setting_picks_the_plain_network(tmp_path, caplog):
    net, swa = passt_state(seed=1), passt_state(seed=2)
    path = tmp_path / STRIDE10
    torch.save(_layouts(net, swa)["lightning-swa"], path)
    cfg = load_config("passt-roberta-base", ["audio.init=" + str(path), "audio.weights=net"]).audio
    with caplog.at_level(logging.WARNING):
        tower = AudioTower(cfg)
    assert_loaded(tower, net)
    assert "ignored the" in caplog.text and "net_swa.*" in caplog.text


def test_hark_checkpoint_audio_tower_is_a_valid_init(tmp_path):
    state = passt_state(stride=10)
    torch.save({"format": 2, "config": {}, "model": {f"audio.net.{k}": v for k, v in state.items()
                                                     if not k.startswith(("head.1", "head_dist"))}},
               tmp_path / "best.pt")
    tower = AudioTower(AudioConfig(init=str(tmp_path / "best.pt")))
    assert_loaded(tower, state)


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message and isinstance(exc, HarkError), message
    return message


def test_passt_files_of_a_wrong_shape_give_a_clear_message(tmp_path):
    state = passt_state(stride=10)
    odd = dict(state, freq_new_pos_embed=torch.zeros(1, 128, 5, 1))  # no stride gives 5 rows over 128 mels
    torch.save(odd, tmp_path / "odd.pt")
    with pytest.raises(ModelLoadError) as info:
        AudioTower(AudioConfig(init=str(tmp_path / "odd.pt")))
    assert "5 frequency rows" in _one_line(info.value) and "audio.n_mels=128" in str(info.value)

    broken = dict(state)
    broken["blocks.1.attn.qkv.weight"] = torch.zeros(48, 128)  # inconsistent with the declared width
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ModelLoadError) as info:
        AudioTower(AudioConfig(init=str(tmp_path / "broken.pt")))
    assert "blocks.1.attn.qkv.weight" in _one_line(info.value)

    short = passt_state(stride=10, frames=500)  # a 5 s time embedding cannot cover a 10 s segment
    torch.save(short, tmp_path / "short.pt")
    with pytest.raises(ModelLoadError, match="fewer than the 99"):
        AudioTower(AudioConfig(init=str(tmp_path / "short.pt")))

    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(ModelLoadError) as info:
        AudioTower(AudioConfig(init=str(tmp_path / "other.pt")))
    assert "not a PaSST checkpoint" in _one_line(info.value)

    imagenet = {k: v for k, v in state.items() if "new_pos_embed" not in k}
    imagenet["pos_embed"] = torch.zeros(1, 198, 128)
    torch.save(imagenet, tmp_path / "deit.pt")
    with pytest.raises(ModelLoadError, match="ImageNet"):
        AudioTower(AudioConfig(init=str(tmp_path / "deit.pt")))

    with pytest.raises(ModelLoadError, match="not found"):
        AudioTower(AudioConfig(init=str(tmp_path / "missing.pt")))


def test_passt_files_with_pickled_objects_are_refused(tmp_path):
    torch.save({"state_dict": passt_state(), "hparams": argparse.Namespace(lr=1.0)}, tmp_path / "pickled.pt")
    with pytest.raises(ModelLoadError) as info:
        AudioTower(AudioConfig(init=str(tmp_path / "pickled.pt")))
    assert "weights_only" in _one_line(info.value)


def test_pretrained_passt_offline_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        AudioTower(AudioConfig(init="pretrained"))
    assert time.monotonic() - started < 5
    assert STRIDE16 in _one_line(info.value) and f"audio.init=/path/to/{STRIDE16}" in str(info.value)


# -- RoBERTa stand-ins -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    """A tiny masked-LM RoBERTa (as the hub's roberta-large is saved) and its byte-level BPE files."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM

    root = tmp_path_factory.mktemp("roberta-src")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([c.lower() for c in CAPTIONS] * 20, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(root))  # vocab.json + merges.txt, the files of the hub's roberta-large
    torch.manual_seed(3)
    # 64-wide heads and eps 1e-5, as every RoBERTa release (a folder without config.json relies on it).
    config = RobertaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=128, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=256, max_position_embeddings=40,
                           layer_norm_eps=1e-5, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    mlm = RobertaForMaskedLM(config).eval()
    return root, mlm


def _tokenizer_files(src, dst, full: bool) -> None:
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(src / name, dst / name)
    if full:
        from transformers import RobertaTokenizer

        RobertaTokenizer.from_pretrained(str(src)).save_pretrained(str(dst))


def make_folder(layout: str, roberta, root):
    src, mlm = roberta
    folder = root / layout
    folder.mkdir()
    if layout == "save_pretrained":
        mlm.save_pretrained(folder)
        _tokenizer_files(src, folder, full=True)
        return folder
    if layout == "hub_cache":
        repo = folder / "models--FacebookAI--roberta-large"
        snap = repo / "snapshots" / "0123abcd"
        snap.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0123abcd")
        mlm.save_pretrained(snap)
        _tokenizer_files(src, snap, full=True)
        return repo
    if layout == "hub_cache_root":
        return make_folder("hub_cache", roberta, folder)
    if layout == "vocab_merges_only":
        mlm.save_pretrained(folder)
        _tokenizer_files(src, folder, full=False)
        assert not (folder / "tokenizer.json").exists()
        return folder
    if layout == "pytorch_model_bin_only":
        torch.save(mlm.state_dict(), folder / "pytorch_model.bin")
        _tokenizer_files(src, folder, full=False)
        return folder
    if layout == "pytorch_model_bin_with_config":
        torch.save(mlm.state_dict(), folder / "pytorch_model.bin")
        mlm.config.to_json_file(str(folder / "config.json"))
        _tokenizer_files(src, folder, full=False)
        return folder
    raise AssertionError(layout)


@pytest.mark.parametrize("layout", ["save_pretrained", "hub_cache", "hub_cache_root", "vocab_merges_only",
                                    "pytorch_model_bin_only", "pytorch_model_bin_with_config"])
def test_roberta_folder_in_every_layout_loads(roberta, tmp_path, layout):
    from transformers import RobertaTokenizer

    src, mlm = roberta
    folder = make_folder(layout, roberta, tmp_path)
    cfg = TextConfig(model=str(folder))
    tok = build_tokenizer(cfg)
    tower = TextTower(cfg, tok.vocab_size).eval()
    ids, mask = tok.encode(CAPTIONS)
    # Same ids as RoBERTa's own tokenizer on the normalised captions (<s> ... </s>).
    ref_tok = RobertaTokenizer.from_pretrained(str(src))
    assert ids[1, : mask[1].sum()].tolist() == ref_tok("rain falls on a tin roof")["input_ids"]
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        ours = tower(ids_t, mask_t)
        ref = mlm.roberta(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
    assert torch.allclose(ours, ref, atol=1e-6)


def test_roberta_folder_errors_are_clear(tmp_path):
    resolve_text_model.cache_clear()
    with pytest.raises(ModelLoadError, match="folder not found"):
        TextTower(TextConfig(model=str(tmp_path / "nowhere")), 10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError) as info:
        build_tokenizer(TextConfig(model=str(tmp_path / "empty")))
    assert "no tokenizer" in _one_line(info.value)


@pytest.mark.parametrize("how", ["env", "unresolvable", "hanging"])
def test_offline_hub_name_fails_at_once_with_the_path_hint(tmp_path, monkeypatch, how):
    import hark.training.towers as towers

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to fall back on
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        reason = "HF_HUB_OFFLINE is set"
    elif how == "unresolvable":  # .invalid never resolves (RFC 6761)
        monkeypatch.setenv("HF_ENDPOINT", "https://hub.hark-test.invalid")
        reason = "hub.hark-test.invalid:443 is not reachable"
    else:  # a resolver or connect that hangs, as on a machine without a route: the check gives up in time
        def hang(*args, **kwargs):
            time.sleep(8)
            raise OSError("timed out")

        monkeypatch.setattr(towers.socket, "create_connection", hang)
        reason = "did not answer within"
    resolve_text_model.cache_clear()
    for build in (lambda: build_tokenizer(TextConfig(model="roberta-large")),
                  lambda: TextTower(TextConfig(model="roberta-large"), 10)):
        started = time.monotonic()
        with pytest.raises(ModelLoadError) as info:
            build()
        assert time.monotonic() - started < 5
        assert "text.model=/path/to/roberta-large" in _one_line(info.value)
        assert reason in str(info.value)


# -- checkpoints -----------------------------------------------------------------------------------

def test_model_from_release_files_round_trips_through_a_safe_checkpoint(roberta, tmp_path):
    """A stride-10 PaSST file + a RoBERTa folder -> model -> checkpoint -> the same model, offline."""
    torch.save(passt_state(stride=10), tmp_path / STRIDE10)
    folder = make_folder("save_pretrained", roberta, tmp_path)
    cfg = load_config("joint", [f"audio.init={tmp_path / STRIDE10}", f"text.model={folder}", "heads.dim=64",
                                "heads.attention_heads=4", "heads.compare_to=query"])
    model = RetrievalModel(cfg, build_tokenizer(cfg.text)).eval()
    assert model.cfg.audio.stride == 10
    torch.save(model.checkpoint_payload(), tmp_path / "best.pt")
    payload = torch.load(tmp_path / "best.pt", weights_only=True)
    assert isinstance(payload["tokenizer"], str)
    restored, _ = load_checkpoint(tmp_path / "best.pt")
    wave, lengths = 0.1 * torch.randn(2, 32000 * 12), torch.tensor([32000 * 12, 32000 * 8])
    with torch.no_grad():
        a, b = model.encode_audio(wave, lengths), restored.encode_audio(wave, lengths)
        ta, tb = model.encode_captions(CAPTIONS), restored.encode_captions(CAPTIONS)
    assert torch.equal(a.global_, b.global_) and torch.equal(ta.global_, tb.global_)
    assert restored.cfg.audio.init == "none" and restored.cfg.audio.stride == 10


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    from hark.demo.synth import write_clotho_corpus

    root = tmp_path_factory.mktemp("small")
    write_clotho_corpus(root, n_clips={"development": 16, "validation": 4, "evaluation": 2},
                        durations=(10.0, 11.0), seed=5)
    return root


# No validation split: best.pt then follows the training loss, which keeps these runs short.
OVERRIDES = ["train.epochs=1", "train.warmup_epochs=0", "train.batch_size=8", "train.pairs_per_epoch=audio",
             "train.val_split="]


def test_best_pt_holds_no_optimiser_state_and_last_pt_resumes(small_corpus, tmp_path):
    from hark.training.run import train

    cfg = load_config("tiny", [*OVERRIDES, "train.epochs=2"])
    straight = train(cfg, [small_corpus], tmp_path / "straight", device="cpu", progress=False)
    best = torch.load(tmp_path / "straight" / "best.pt", weights_only=True)
    assert {"model", "config", "tokenizer", "text_hf_config", "epoch"} <= set(best)
    assert not {"optimizer", "scheduler", "scaler", "rng", "batch_in_epoch"} & set(best)
    assert isinstance(best["tokenizer"], str)
    last = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    assert {"optimizer", "scheduler", "rng", "batch_in_epoch"} <= set(last)
    size = (tmp_path / "straight" / "best.pt").stat().st_size
    assert size < 0.6 * (tmp_path / "straight" / "last.pt").stat().st_size  # Adam's two moments are gone

    # Interrupted after 3 of 4 steps, then resumed from last.pt: the same weights as the straight run.
    train(cfg, [small_corpus], tmp_path / "resumed", device="cpu", progress=False, stop_after_steps=3)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["batch_in_epoch"] == 1
    resumed = train(cfg, [small_corpus], tmp_path / "resumed", device="cpu", progress=False)
    assert resumed.epochs_run == straight.epochs_run == 2
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key

    model, payload = load_checkpoint(tmp_path / "straight")  # a run folder means its best.pt
    assert payload["epoch"] == best["epoch"] and "optimizer" not in payload
    for key, value in model.state_dict().items():
        assert torch.equal(value, best["model"][key]), key
    with pytest.raises(CheckpointError, match=r"last\.pt"):
        from hark.training.loop import Trainer
        from hark.training.run import load_split

        Trainer(model, lambda b: None, load_split([small_corpus], "development"), [], model.cfg.train,
                tmp_path / "x", progress=False).resume(tmp_path / "straight" / "best.pt")


def test_old_pickled_checkpoint_fails_clearly_and_can_be_resaved(tmp_path):
    from hark.text import train_bpe_tokenizer

    model = RetrievalModel(load_config("tiny"), train_bpe_tokenizer(CAPTIONS * 5, 300))
    old = model.checkpoint_payload()
    # What hark wrote before format 2: numpy RNG state pickled into every checkpoint.
    old.update(format=1, epoch=2, rng={"numpy": np.random.get_state()})
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "old.pt")
    message = _one_line(info.value)
    assert "retrain" in message and "resave_checkpoint" in message
    resave_checkpoint(tmp_path / "old.pt", tmp_path / "new.pt")
    restored, payload = load_checkpoint(tmp_path / "new.pt")
    assert "rng" not in payload and payload["epoch"] == 2
    for key, value in restored.state_dict().items():
        assert torch.equal(value, old["model"][key]), key
