"""Bundle export: parity of every graph with PyTorch, end-to-end ranking, verification of damaged bundles."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hark.audio import decode_audio  # noqa: E402
from hark.bundle import Bundle, BundleError  # noqa: E402
from hark.exporters.graphs import AudioGraph, ClipGraph, RerankGraph, TextGraph  # noqa: E402
from hark.exporters.onnx_export import ExportError, export_bundle  # noqa: E402
from hark.plugin.encoders import AudioEncoder, Reranker, TextEncoder  # noqa: E402
from hark.plugin.verify import verify_bundle  # noqa: E402
from hark.training.evaluate import score_split  # noqa: E402
from hark.training.model import load_checkpoint  # noqa: E402
from hark.training.run import load_split  # noqa: E402


@pytest.fixture(scope="module")
def model(trained_run):
    return load_checkpoint(trained_run[0] / "best.pt")[0]


def _cos(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_manifest_describes_the_collection(bundle_dir, model):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert len(manifest["model"]["version"]) == 12
    d, h, m = model.cfg.heads.dim, model.cfg.heads.attention_heads, model.cfg.audio.max_segments
    assert manifest["vectors"]["global"] == {"size": d, "distance": "Cosine"}
    tokens = manifest["vectors"]["tokens"]
    assert tokens["size"] == model.audio.dim + h * h * m
    assert (tokens["distance"], tokens["multivector"], tokens["hnsw_m"]) == ("Dot", True, 0)
    assert manifest["audio"]["sample_rate"] == 32000 and manifest["text"]["max_tokens"] == 32
    assert set(manifest["graphs"]) == {"audio", "clip", "text", "rerank", "moments"}
    assert manifest["graphs"]["audio"]["default"] == "int8"
    # Moments: 2 s sub-windows in the cosine head's space, stored one byte per value and never indexed.
    assert manifest["vectors"]["moments"] == {"size": d, "distance": "Cosine", "multivector": True, "hnsw_m": 0,
                                              "datatype": "uint8", "on_disk": True}
    assert manifest["audio"]["moment_seconds"] == manifest["audio"]["moment_hop_seconds"] == 2.0
    assert manifest["graphs"]["moments"]["default"] == "int8"
    # fp32 parity is enforced at export; reduced precision is measured and recorded.
    for graph, parity in manifest["parity"].items():
        assert parity["fp32"] >= 0.9999, graph
    assert 0.95 < manifest["parity"]["audio"]["int8"] < 1.0 + 1e-9
    assert set(manifest["files"]) == {p.name for p in bundle_dir.iterdir()} - {"manifest.json"}


def test_every_graph_matches_pytorch_on_new_inputs(bundle_dir, model):
    bundle = Bundle.load(bundle_dir)
    gen = torch.Generator().manual_seed(123)
    segments = 0.2 * torch.randn(3, bundle.segment_samples, generator=gen)
    seg_emb = torch.randn(4, bundle.max_segments, model.audio.dim, generator=gen)
    seg_mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]], dtype=torch.float32)
    ids, mask = model.tokenizer.encode(["footsteps approach then a bell rings", "wind", "a siren wails"])
    with torch.no_grad():
        ref_audio = AudioGraph(model)(segments).numpy()
        ref_glob, ref_rows = (t.numpy() for t in ClipGraph(model)(seg_emb, seg_mask))
        ref_sent, ref_tok = (t.numpy() for t in TextGraph(model)(torch.from_numpy(ids), torch.from_numpy(mask)))
        ref_rerank = RerankGraph(model)(torch.from_numpy(ref_tok[:1]), torch.from_numpy(mask[:1]).float(),
                                        torch.from_numpy(ref_rows)[None], seg_mask[None]).numpy()
    windows = 0.2 * torch.randn(5, round(2.0 * bundle.sample_rate), generator=gen)
    with torch.no_grad():
        # A sub-window's moment vector is the tower + cosine projection of that sub-window alone.
        ref_moments = torch.nn.functional.normalize(
            model.cosine.audio_proj(model.audio.embed_segments(windows)), dim=-1).numpy()
    got_moments = bundle.session("moments", "cpu", "fp32").run(None, {"windows": windows.numpy()})[0]
    np.testing.assert_allclose(np.linalg.norm(got_moments, axis=1), 1.0, atol=1e-5)
    got_audio = bundle.session("audio", "cpu", "fp32").run(None, {"segments": segments.numpy()})[0]
    got_glob, got_rows = bundle.session("clip", "cpu").run(
        None, {"segment_embeddings": seg_emb.numpy(), "segment_mask": seg_mask.numpy()})
    got_sent, got_tok = bundle.session("text", "cpu", "fp32").run(None, {"input_ids": ids, "attention_mask": mask})
    got_rerank = bundle.session("rerank", "cpu").run(None, {
        "tokens": ref_tok[:1], "token_mask": mask[:1].astype(np.float32), "rows": ref_rows[None],
        "segment_mask": seg_mask.numpy()[None]})[0]
    for ref, got in [(ref_audio, got_audio), (ref_glob, got_glob), (ref_rows, got_rows), (ref_sent, got_sent),
                     (ref_tok, got_tok), (ref_moments, got_moments)]:
        for r, g in zip(ref, got, strict=True):
            assert _cos(r, g) >= 0.9999
    np.testing.assert_allclose(got_rerank, ref_rerank, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["sentence", "full"])
@pytest.mark.parametrize("compare_to", ["text", "query"])
def test_rerank_graph_equals_the_literal_head(variant, compare_to):
    from types import SimpleNamespace

    from hark.exporters.graphs import LiteralRerankGraph
    from hark.training.heads import CosineHead, CrossModalAttentionHead

    torch.manual_seed(5)
    text_dim = 32 if compare_to == "text" else 40
    head = CrossModalAttentionHead(24, text_dim, 32, 4, variant, compare_to).double()
    holder = SimpleNamespace(attention=head, cosine=CosineHead(24, text_dim, 32).double())
    tokens, tmask = torch.randn(1, 6, text_dim, dtype=torch.float64), torch.ones(1, 6, dtype=torch.float64)
    tmask[0, 4:] = 0
    segments = torch.randn(7, 3, 24, dtype=torch.float64)
    smask = torch.ones(7, 3, dtype=torch.float64)
    smask[1, 1:] = 0
    smask[4, 2] = 0
    with torch.no_grad():
        _, rows = ClipGraph(holder)(segments, smask)
        folded = RerankGraph(holder)(tokens, tmask, rows[None], smask[None])[0]
        literal = LiteralRerankGraph(holder)(tokens, tmask, segments, smask)
    np.testing.assert_allclose(folded.numpy(), literal.numpy(), rtol=1e-9, atol=1e-12)


def test_bundle_ranking_equals_pytorch_ranking(bundle_dir, model, corpus):
    examples = load_split([corpus], "evaluation")
    reference = score_split(model, examples, progress=False)
    bundle = Bundle.load(bundle_dir)
    audio = AudioEncoder(bundle, "cpu", precision="fp32")
    limit = audio.window_samples
    clips = [audio.encode_windows([decode_audio(ex.audio_path)[:limit]])[0] for ex in examples
             if ex.audio_path.name in reference.audio_names]
    text = TextEncoder(bundle, "cpu", precision="fp32").encode(reference.queries)
    reranker = Reranker(bundle, "cpu")
    glob = np.stack([c.global_ for c in clips])
    fusion = bundle.fusion
    fused = np.zeros_like(reference.scores["fused"])
    for q in range(len(reference.queries)):
        length = int(text.mask[q].sum())
        att = reranker.score(text.tokens[q, :length], text.mask[q, :length], [c.rows for c in clips])
        fused[q] = fusion["cosine"] * (glob @ text.sentence[q]) + fusion["attention"] * att
    np.testing.assert_allclose(fused, reference.scores["fused"], atol=2e-4)
    top_ref = np.argsort(-reference.scores["fused"], axis=1, kind="stable")[:, :10]
    top_got = np.argsort(-fused, axis=1, kind="stable")[:, :10]
    # Identical top-10; a swap is tolerated only between clips whose PyTorch scores tie within float error.
    for q in range(len(top_ref)):
        for a, b in zip(top_ref[q], top_got[q], strict=True):
            if a != b:
                assert abs(reference.scores["fused"][q, a] - reference.scores["fused"][q, b]) < 1e-4, (q, a, b)


def test_verify_reports_a_healthy_bundle(bundle_dir):
    report = verify_bundle(bundle_dir)
    assert report["ok"] and report["graphs"]["audio"] == ["fp32", "int8"]
    assert len(report["smoke_rerank_scores"]) == 2


@pytest.mark.parametrize("damage, message", [
    ("hash", "sha256 mismatch"),
    ("missing", "listed in the manifest but missing"),
    ("format", "bundle format 99"),
    ("json", "not valid JSON"),
    ("no-manifest", "not a hark bundle"),
    ("onnx", "sha256 mismatch"),
])
def test_damaged_bundles_fail_with_the_file_named(bundle_dir, tmp_path, damage, message):
    broken = tmp_path / "b"
    shutil.copytree(bundle_dir, broken)
    manifest_path = broken / "manifest.json"
    if damage == "hash":
        with open(broken / "text.onnx", "ab") as fh:
            fh.write(b"\0")
    elif damage == "missing":
        (broken / "rerank.onnx").unlink()
    elif damage == "format":
        data = json.loads(manifest_path.read_text())
        data["format_version"] = 99
        manifest_path.write_text(json.dumps(data))
    elif damage == "json":
        manifest_path.write_text("{not json")
    elif damage == "no-manifest":
        manifest_path.unlink()
    elif damage == "onnx":
        (broken / "clip.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError, match=message) as info:
        verify_bundle(broken)
    assert str(broken) in str(info.value)


def test_unloadable_graph_is_named_even_with_matching_hashes(bundle_dir, tmp_path):
    from hark.bundle import sha256_file

    broken = tmp_path / "b"
    shutil.copytree(bundle_dir, broken)
    (broken / "clip.onnx").write_bytes(b"not an onnx graph")
    data = json.loads((broken / "manifest.json").read_text())
    data["files"]["clip.onnx"] = sha256_file(broken / "clip.onnx")
    (broken / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"clip\.onnx: ONNX Runtime cannot load it"):
        verify_bundle(broken)


def test_fp16_variant_and_export_refusals(trained_run, tmp_path):
    out = export_bundle(trained_run[0] / "best.pt", tmp_path / "fp16", precision="fp16")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["graphs"]["text"]["files"] == {"fp32": "text.onnx", "fp16": "text.fp16.onnx"}
    assert 0.99 < manifest["parity"]["text"]["fp16"] <= 1.0 + 1e-9
    assert verify_bundle(out)["ok"]
    with pytest.raises(ExportError, match="not empty"):
        export_bundle(trained_run[0] / "best.pt", out)
    with pytest.raises(ExportError, match="precision"):
        export_bundle(trained_run[0] / "best.pt", tmp_path / "x", precision="int4")


def test_query_processes_hash_only_the_files_they_use(bundle_dir, tmp_path):
    from hark.bundle import Bundle

    broken = tmp_path / "b"
    shutil.copytree(bundle_dir, broken)
    with open(broken / "text.onnx", "ab") as fh:  # the fp32 variant; the int8 one is the default
        fh.write(b"\0")
    bundle = Bundle.load(broken)  # default: lazy hashing
    assert bundle.session("text", "cpu") is not None  # int8 graph: intact, loads
    with pytest.raises(BundleError, match=r"text\.onnx: sha256 mismatch"):
        bundle.session("text", "cpu", "fp32")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Bundle.load(broken, verify_hashes=True)
    (broken / "rerank.onnx").unlink()
    with pytest.raises(BundleError, match=r"rerank\.onnx: listed in the manifest but missing"):
        Bundle.load(broken)
