"""The typed manifest schema: round trip, tolerance of newer keys, clear errors, the text front-end check."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from hark.bundle import Bundle, BundleError
from hark.manifest import (
    NORMALIZATION_PROBE,
    AttentionHead,
    AudioFrontEnd,
    GraphEntry,
    Heads,
    Manifest,
    ManifestError,
    ModelInfo,
    TextFrontEnd,
    VectorSpec,
)
from hark.text import normalize_caption


def sample() -> Manifest:
    return Manifest(
        model=ModelInfo("tiny", "0123456789ab"),
        audio=AudioFrontEnd(sample_rate=32000, segment_seconds=10.0, max_segments=3, window_seconds=30.0,
                            embedding_dim=64),
        text=TextFrontEnd(tokenizer="tokenizer.json", max_tokens=32, embedding_dim=64,
                          normalization_check=normalize_caption(NORMALIZATION_PROBE)),
        vectors={"global": VectorSpec("global", 32, "Cosine"),
                 "tokens": VectorSpec("tokens", 100, "Dot", multivector=True, hnsw_m=0, on_disk=True)},
        heads=Heads(fusion={"cosine": 1.0, "attention": 1.0}, cosine={"dim": 32},
                    attention=AttentionHead("full", 4, 32)),
        graphs={"text": GraphEntry(files={"fp32": "text.onnx"}, inputs=["ids"], outputs=["sentence"])},
        files={"text.onnx": "ab" * 32},
    )


def test_round_trip_is_exact():
    data = sample().to_dict()
    again = Manifest.from_dict(json.loads(json.dumps(data)))
    assert again == sample()
    assert again.to_dict() == data
    # The stored schema leaves defaults out: it reads as what is special about each vector.
    assert data["vectors"]["global"] == {"size": 32, "distance": "Cosine"}


def test_unknown_keys_of_a_newer_exporter_are_tolerated_and_kept():
    data = sample().to_dict()
    data["lineage"] = {"parent": "abc"}
    data["vectors"]["tokens"]["quantization"] = "binary"
    data["audio"]["augment"] = True
    data["heads"]["attention"]["rope"] = False
    manifest = Manifest.from_dict(data)
    assert manifest.vectors["tokens"].size == 100
    assert manifest.extra == {"lineage": {"parent": "abc"}}
    assert manifest.to_dict()["lineage"] == {"parent": "abc"}


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.pop("vectors"), "missing key 'vectors'"),
    (lambda d: d["audio"].pop("sample_rate"), "audio: missing key 'sample_rate'"),
    (lambda d: d["audio"].update(sample_rate="32000"), "audio.sample_rate: expected an integer"),
    (lambda d: d["vectors"]["global"].update(size=1.5), "vectors.global.size: expected an integer"),
    (lambda d: d["heads"]["fusion"].update(cosine="high"), "heads.fusion.cosine: expected a number"),
    (lambda d: d.update(format_version=2), "format 2"),
    (lambda d: d.update(graphs=[]), "graphs: expected an object"),
])
def test_errors_name_the_key(edit, message):
    data = copy.deepcopy(sample().to_dict())
    edit(data)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(data, "m.json")


def test_clip_rows_are_float32_because_float16_overflows():
    # Gram rows hold products of value coordinates: a value vector of norm 300 gives entries past
    # float16's maximum (65504), which would be stored as inf.
    values = np.full(16, 300 / 4, dtype=np.float32)  # norm 300
    gram = np.outer(values, values).sum()
    with np.errstate(over="ignore"):
        assert np.isinf(np.float16(gram)) and np.isfinite(np.float32(gram))
    assert sample().vectors["tokens"].datatype == "float32"
    assert VectorSpec("x", 4, "Dot").datatype == "float32"


def _write_bundle(tmp_path, manifest: dict) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))


def test_bundle_refuses_a_different_text_normalisation(tmp_path):
    data = sample().to_dict()
    data["files"] = {}
    data["text"]["normalization_check"] = "A Dog, barking!"  # an exporter that kept case and punctuation
    _write_bundle(tmp_path, data)
    with pytest.raises(BundleError, match="text normalisation differs"):
        Bundle.load(tmp_path)
    data["text"]["normalization_check"] = normalize_caption(NORMALIZATION_PROBE)
    data["text"]["lowercase"] = False
    _write_bundle(tmp_path, data)
    with pytest.raises(BundleError, match="lowercase=False"):
        Bundle.load(tmp_path)
    data["text"]["lowercase"] = True
    _write_bundle(tmp_path, data)
    assert Bundle.load(tmp_path).version == "0123456789ab"


def test_bundle_reports_manifest_errors_as_bundle_errors(tmp_path):
    data = sample().to_dict()
    del data["model"]["version"]
    _write_bundle(tmp_path, data)
    with pytest.raises(BundleError, match="model: missing key 'version'"):
        Bundle.load(tmp_path)
