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
        files={"text.onnx": "ab" * 32, "tokenizer.json": "cd" * 32},
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
    data["text"]["normalization_check"] = "A Dog, barking!"  # an exporter that kept case and punctuation
    _write_bundle(tmp_path, data)
    with pytest.raises(BundleError, match="text normalisation differs"):
        Bundle.load(tmp_path, verify_hashes=False)
    data["text"]["normalization_check"] = normalize_caption(NORMALIZATION_PROBE)
    data["text"]["lowercase"] = False
    _write_bundle(tmp_path, data)
    with pytest.raises(BundleError, match="lowercase=False"):
        Bundle.load(tmp_path, verify_hashes=False)
    data["text"]["lowercase"] = True
    _write_bundle(tmp_path, data)
    assert Bundle.load(tmp_path, verify_hashes=False).version == "0123456789ab"


def test_bundle_reports_manifest_errors_as_bundle_errors(tmp_path):
    data = sample().to_dict()
    del data["model"]["version"]
    _write_bundle(tmp_path, data)
    with pytest.raises(BundleError, match="model: missing key 'version'"):
        Bundle.load(tmp_path)


def _refused(edit, message):
    data = copy.deepcopy(sample().to_dict())
    edit(data)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(json.loads(json.dumps(data)), "m.json")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(files={}), r"text\.tokenizer names 'tokenizer\.json', which is not listed"),
    (lambda d: d["files"].pop("text.onnx"), r"graphs\.text\.files\.fp32 names 'text\.onnx', which is not listed"),
    (lambda d: d["graphs"]["text"]["files"].update(int8="text.int8.onnx"), r"'text\.int8\.onnx', which is not"),
    (lambda d: d["files"].update({"text.onnx": 123}), r"files\.text\.onnx: expected a sha256"),
    (lambda d: d["files"].update({"text.onnx": "AB" * 32}), "expected a sha256"),
])
def test_every_file_the_manifest_names_must_be_listed_with_its_hash(edit, message):
    _refused(edit, message)


@pytest.mark.parametrize("path", ["/etc/passwd", "../../../etc/passwd", "sub/../../x.onnx", "./text.onnx",
                                  "C:\\models\\text.onnx", "sub\\..\\..\\x", "", "dir/", "a//b"])
@pytest.mark.parametrize("where", ["graph", "tokenizer", "files"])
def test_paths_must_be_relative_and_inside_the_bundle(path, where):
    def edit(d):
        if where == "graph":
            d["graphs"]["text"]["files"]["fp32"] = path
        elif where == "tokenizer":
            d["text"]["tokenizer"] = path
        d["files"][path] = "ef" * 32

    _refused(edit, "not a relative path inside the bundle|expected a file name inside the bundle")


def test_relative_paths_in_subfolders_are_accepted():
    data = sample().to_dict()
    data["graphs"]["text"]["files"]["fp32"] = "graphs/text.onnx"
    data["files"]["graphs/text.onnx"] = data["files"].pop("text.onnx")
    assert Manifest.from_dict(data).graphs["text"].files["fp32"] == "graphs/text.onnx"


@pytest.mark.parametrize(("key", "value"), [
    ("name", "../evil"), ("name", "a/b"), ("name", ".."), ("name", ".hidden"), ("name", "x y"), ("name", ""),
    ("name", "é"), ("name", "a" * 65), ("version", "../../evil"), ("version", "a_b"), ("version", "1/2"),
    ("version", "."), ("version", ""),
])
def test_model_name_and_version_must_be_slugs(key, value):
    _refused(lambda d: d["model"].update({key: value}), f"model\\.{key} .* is not a slug")


@pytest.mark.parametrize(("name", "version"), [("tiny", "4b9b0284d27a"), ("passt-roberta-base", "0123456789ab"),
                                               ("tiny_v2.1", "v2"), ("A", "1.0-rc1")])
def test_exporter_names_and_versions_are_slugs(name, version):
    data = sample().to_dict()
    data["model"] = {"name": name, "version": version}
    assert Manifest.from_dict(data).model == ModelInfo(name, version)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(format_version=True), "bundle format True"),
    (lambda d: d["audio"].update(sample_rate=0), r"audio\.sample_rate: must be positive"),
    (lambda d: d["audio"].update(sample_rate=-1), r"audio\.sample_rate: must be positive"),
    (lambda d: d["audio"].update(sample_rate=True), r"audio\.sample_rate: expected an integer"),
    (lambda d: d["audio"].update(segment_seconds=0), r"audio\.segment_seconds: must be positive"),
    (lambda d: d["audio"].update(segment_seconds=1e-9), r"audio\.segment_seconds .* shorter than one sample"),
    (lambda d: d["audio"].update(window_seconds=-30.0), r"audio\.window_seconds: must be positive"),
    (lambda d: d["audio"].update(max_segments=-3), r"audio\.max_segments: must be positive"),
    (lambda d: d["audio"].update(max_segments=0), r"audio\.max_segments: must be positive"),
    (lambda d: d["audio"].update(hop_length=0), r"audio\.hop_length: must be positive"),
    (lambda d: d["audio"].update(fmax=float("inf")), r"audio\.fmax: expected a finite number"),
    (lambda d: d["audio"].update(fmin=20000.0), r"audio\.fmax \(15000\.0\) must be above"),
    (lambda d: d["audio"].update(moment_seconds=-2.0), r"audio\.moment_seconds: must be at least 0"),
    (lambda d: d["text"].update(max_tokens=0), r"text\.max_tokens: must be positive"),
    (lambda d: d["text"].update(lowercase=1), r"text\.lowercase: expected bool"),
    (lambda d: d["vectors"]["global"].update(size=0), r"vectors\.global\.size: must be positive"),
    (lambda d: d["vectors"]["global"].update(distance="Manhattan"), r"'Manhattan' is not one of cosine, dot"),
    (lambda d: d["vectors"]["global"].update(distance="Euclid"), r"vectors\.global\.distance"),
    (lambda d: d["vectors"]["tokens"].update(datatype="float64"), r"vectors\.tokens\.datatype"),
    (lambda d: d["vectors"]["tokens"].update(hnsw_m=-1), r"vectors\.tokens\.hnsw_m: must be at least 0"),
    (lambda d: d["vectors"].pop("global"), r"vectors: missing 'global'"),
    (lambda d: d["heads"]["fusion"].update(cosine=float("nan")), r"heads\.fusion\.cosine: expected a finite"),
    (lambda d: d["heads"]["fusion"].update(attention=float("-inf")), r"heads\.fusion\.attention: expected a fin"),
    (lambda d: d["heads"]["fusion"].update(cosine=True), r"heads\.fusion\.cosine: expected a number"),
    (lambda d: d["heads"]["attention"].update(variant="half"), r"heads\.attention\.variant"),
    (lambda d: d["heads"]["attention"].update(heads=0), r"heads\.attention\.heads: must be positive"),
    (lambda d: d["heads"].update(cosine=[1]), r"heads\.cosine: expected an object"),
    (lambda d: d["graphs"]["text"].update(default="int8"), r"graphs\.text\.default: 'int8' is not one of"),
    (lambda d: d["graphs"]["text"].update(files={}), r"graphs\.text\.files: no file"),
    (lambda d: d["graphs"]["text"].update(inputs=[1]), r"graphs\.text\.inputs: expected a list of names"),
    (lambda d: d.update(training="x"), r"training: expected an object"),
    (lambda d: d.update(calibration=[1]), r"calibration: expected an object"),
])
def test_values_are_checked_for_type_and_range_when_read(edit, message):
    _refused(edit, message)


def test_store_distances_are_read_in_any_case():
    data = sample().to_dict()
    data["vectors"]["global"]["distance"] = "cosine"
    data["vectors"]["tokens"]["distance"] = "DOT"
    assert Manifest.from_dict(data).vectors["tokens"].distance == "DOT"
