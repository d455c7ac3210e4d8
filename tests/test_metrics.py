"""Reference-value tests for hark.training.metrics: every expected number is worked out by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hark.training import metrics
from hark.training.metrics import (
    MetricsInputError,
    average_precision_at_k,
    ensemble,
    evaluate_scores,
    map_at_k,
    normalize_query,
    ranks_of_relevant,
    ranks_of_targets,
    read_relevance,
    read_score_csv,
    retrieval_metrics,
)


def row_with_ranks(n_audio: int, placed: dict[int, int]) -> np.ndarray:
    """A score row with distinct values where column ``c`` lands at rank ``placed[c]``."""
    descending = np.linspace(1.0, 0.0, n_audio)
    free_ranks = iter(r for r in range(n_audio) if r not in placed.values())
    row = np.empty(n_audio)
    for column in range(n_audio):
        row[column] = descending[placed[column] if column in placed else next(free_ranks)]
    return row


# --- many-to-many AP@k: the design's reference values -------------------------------------------------


@pytest.mark.parametrize(
    ("ranks", "k", "expected"),
    [
        ([0, 2, 15], 16, 0.618056),
        ([0, 2, 15], 10, 0.555556),
        ([3], 10, 0.25),
        ([12], 10, 0.0),
        ([15, 2, 0], 16, 0.618056),  # order of the input must not matter
        ([0, 1, 2], 16, 1.0),
        ([16], 16, 0.0),  # rank k is just outside the cut-off
        ([15], 16, 1 / 16),
    ],
)
def test_average_precision_reference_values(ranks: list[int], k: int, expected: float) -> None:
    assert average_precision_at_k(ranks, k) == pytest.approx(expected, abs=1e-5)


def test_average_precision_exact_fraction() -> None:
    assert average_precision_at_k([0, 2, 15], 16) == pytest.approx((1 + 2 / 3 + 3 / 16) / 3, abs=1e-12)


@pytest.mark.parametrize(
    ("ranks", "k", "message"),
    [
        ([], 10, "at least one relevant"),
        ([1, 1], 10, "share a rank"),
        ([-1], 10, "negative"),
        ([0], 0, "k must be at least 1"),
    ],
)
def test_average_precision_rejects_bad_input(ranks: list[int], k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        average_precision_at_k(ranks, k)


# --- one target per query: R@k and mAP@10 -------------------------------------------------------------


def known_rank_matrix() -> tuple[np.ndarray, np.ndarray]:
    """Four queries over 12 clips whose targets sit at ranks 0, 3, 7 and 11."""
    targets = np.array([5, 0, 11, 2])
    ranks = [0, 3, 7, 11]
    scores = np.stack([row_with_ranks(12, {t: r}) for t, r in zip(targets, ranks, strict=True)])
    return scores, targets


def test_ranks_of_targets_known_ranks() -> None:
    scores, targets = known_rank_matrix()
    ranks = ranks_of_targets(scores, targets)
    assert ranks.tolist() == [0, 3, 7, 11]
    assert ranks.dtype == np.int64


def test_retrieval_metrics_known_values() -> None:
    scores, targets = known_rank_matrix()
    result = retrieval_metrics(scores, targets)
    assert set(result) == {"R@1", "R@5", "R@10", "mAP@10"}
    assert result["R@1"] == pytest.approx(25.0)
    assert result["R@5"] == pytest.approx(50.0)
    assert result["R@10"] == pytest.approx(75.0)
    # (1/1 + 1/4 + 1/8 + 0) / 4, in percent
    assert result["mAP@10"] == pytest.approx(34.375)
    assert all(isinstance(v, float) for v in result.values())


def test_retrieval_metrics_rank_nine_and_ten_boundary() -> None:
    scores = np.stack([row_with_ranks(20, {0: 9}), row_with_ranks(20, {0: 10})])
    result = retrieval_metrics(scores, np.array([0, 0]))
    assert result["R@10"] == pytest.approx(50.0)
    assert result["mAP@10"] == pytest.approx(100 * (1 / 10) / 2)


def test_ties_are_pessimistic() -> None:
    scores = np.array(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],  # constant scorer: the target ends up last
            [1.0, 0.5, 0.5, 0.5, 0.0],  # 1 above, 2 tied others
            [1.0, 0.5, 0.5, 0.5, 0.0],  # same row, different tied column: same rank
            [0.5, 0.5, 0.2, 0.1, 0.0],  # target first in column order still loses the tie
        ]
    )
    ranks = ranks_of_targets(scores, np.array([0, 1, 3, 0]))
    assert ranks.tolist() == [4, 3, 3, 1]
    assert retrieval_metrics(scores, np.array([0, 1, 3, 0]))["R@1"] == 0.0


def test_ranks_of_targets_handles_infinite_scores() -> None:
    scores = np.array([[-np.inf, 0.0, np.inf]])
    assert ranks_of_targets(scores, np.array([0])).tolist() == [2]
    assert ranks_of_targets(scores, np.array([2])).tolist() == [0]


@pytest.mark.parametrize(
    ("scores", "targets", "message"),
    [
        (np.zeros((2, 3)), np.array([0]), "shape"),
        (np.zeros((2, 3)), np.array([0, 3]), r"\[0, 3\)"),
        (np.zeros((2, 3)), np.array([0, -1]), r"\[0, 3\)"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), "integer"),
        (np.array([[0.0, np.nan, 1.0]]), np.array([0]), "NaN"),
        (np.zeros(3), np.array([0]), "matrix"),
        (np.zeros((0, 3)), np.array([], dtype=int), "non-empty"),
    ],
)
def test_ranks_of_targets_rejects_bad_input(scores: np.ndarray, targets: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ranks_of_targets(scores, targets)


# --- many-to-many mAP@k over a score matrix ----------------------------------------------------------


def test_ranks_of_relevant_and_map_at_k_reference() -> None:
    row = row_with_ranks(20, {4: 0, 9: 2, 1: 15})
    assert ranks_of_relevant(row, {1, 4, 9}) == [15, 0, 2]  # ordered by column
    assert map_at_k(row[None, :], [{1, 4, 9}], k=16) == pytest.approx(61.8056, abs=1e-3)
    assert map_at_k(row[None, :], [{1, 4, 9}], k=10) == pytest.approx(55.5556, abs=1e-3)


def test_map_at_k_averages_over_queries() -> None:
    scores = np.stack([row_with_ranks(20, {4: 0, 9: 2, 1: 15}), row_with_ranks(20, {7: 3})])
    expected = 100 * ((1 + 2 / 3) / 3 + 1 / 4) / 2
    assert map_at_k(scores, [[4, 9, 1], [7]], k=10) == pytest.approx(expected, abs=1e-9)


def test_map_at_k_ties_put_relevant_items_last() -> None:
    scores = np.zeros((1, 4))
    assert ranks_of_relevant(scores[0], [0, 2]) == [2, 3]
    assert map_at_k(scores, [[0, 2]], k=16) == pytest.approx(100 * (1 / 3 + 2 / 4) / 2)
    # a tie with a higher-scoring neighbour: relevant column 1 is tied with column 2 and loses it
    assert ranks_of_relevant(np.array([0.9, 0.5, 0.5, 0.1]), [1]) == [2]


def test_map_at_k_with_single_targets_matches_retrieval_map() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(30, 25)).astype(float)  # coarse values force many ties
    targets = rng.integers(0, 25, size=30)
    single = retrieval_metrics(scores, targets)["mAP@10"]
    assert map_at_k(scores, [[t] for t in targets], k=10) == pytest.approx(single, abs=1e-9)
    assert [ranks_of_relevant(scores[q], [t])[0] for q, t in enumerate(targets)] == ranks_of_targets(
        scores, targets
    ).tolist()


@pytest.mark.parametrize(
    ("relevance", "message"),
    [
        ([[0], []], "no relevant audio"),
        ([[0]], "2 query rows"),
        ([[0], [5]], r"\[0, 3\)"),
    ],
)
def test_map_at_k_rejects_bad_relevance(relevance: list[list[int]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        map_at_k(np.zeros((2, 3)), relevance)


# --- ensemble -----------------------------------------------------------------------------------------


def test_ensemble_averages_members() -> None:
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[3.0, 0.0], [3.0, -4.0]], dtype=np.float32)
    c = np.array([[2.0, 1.0], [0.0, 3.0]])
    result = ensemble([a, b, c])
    np.testing.assert_array_equal(result, np.array([[2.0, 1.0], [2.0, 1.0]]))
    assert result.dtype == np.float64
    np.testing.assert_array_equal(ensemble([a]), a)


def test_ensemble_rejects_mismatched_or_empty() -> None:
    with pytest.raises(ValueError, match="same shape"):
        ensemble([np.zeros((2, 3)), np.zeros((3, 2))])
    with pytest.raises(ValueError, match="at least one"):
        ensemble([])


# --- relevance CSV --------------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_relevance_with_header(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rel.csv",
        "query,audio_filenames\n"
        "A dog barks loudly,\"['dog.wav', 'park.wav']\"\n"
        "\n"
        " rain on a roof , \"['rain.wav']\"\n"
        '"birds, chirping","(\'birds.wav\',)"\n',
    )
    assert read_relevance(path) == {
        "A dog barks loudly": ["dog.wav", "park.wav"],
        "rain on a roof": ["rain.wav"],
        "birds, chirping": ["birds.wav"],
    }


def test_read_relevance_without_header_and_identical_duplicates(tmp_path: Path) -> None:
    path = write(tmp_path, "rel.csv", "wind,\"['a.wav']\"\nwind ,\"['a.wav']\"\n")
    assert read_relevance(path) == {"wind": ["a.wav"]}


def test_read_relevance_handles_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "rel.csv"
    path.write_bytes("\ufeffquery,audio_filenames\nwind,\"['a.wav']\"\n".encode())
    assert read_relevance(path) == {"wind": ["a.wav"]}


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("query,audio_filenames\nwind,a.wav\n", 2, "not a Python list literal"),
        ("query,audio_filenames\nwind,\"['a.wav'\"\n", 2, "not a Python list literal"),
        ("query,audio_filenames\nwind\n", 2, "expected 2 cells"),
        ("wind,\"['a.wav']\",extra\n", 1, "expected 2 cells"),
        ('query,audio_filenames\nwind,"[1, 2]"\n', 2, "list of strings"),
        ("query,audio_filenames\nwind,\"'a.wav'\"\n", 2, "list of strings"),
        ("query,audio_filenames\nwind,[]\n", 2, "no relevant audio"),
        ("query,audio_filenames\n,\"['a.wav']\"\n", 2, "empty query"),
        ("wind,\"['a.wav']\"\nrain,\"['b.wav']\"\nwind,\"['c.wav']\"\n", 3, "line 1 with different"),
    ],
)
def test_read_relevance_malformed_names_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write(tmp_path, "bad_rel.csv", text)
    with pytest.raises(MetricsInputError, match=message) as caught:
        read_relevance(path)
    assert str(path) in str(caught.value)
    assert f"line {line}" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["", "\n\n", "query,audio_filenames\n"])
def test_read_relevance_empty(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "empty_rel.csv", text)
    with pytest.raises(MetricsInputError, match=r"empty relevance file|no relevance rows") as caught:
        read_relevance(path)
    assert str(path) in str(caught.value)


def test_read_relevance_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.csv"
    with pytest.raises(MetricsInputError, match="cannot read") as caught:
        read_relevance(path)
    assert str(path) in str(caught.value)


def test_metrics_input_error_is_value_error() -> None:
    assert issubclass(MetricsInputError, ValueError)


# --- score CSV ------------------------------------------------------------------------------------------


def test_read_score_csv_good(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "scores.csv",
        'query,a.wav,b.wav,c.wav\na dog barks,0.5,-1.25,3e-2\n"rain, heavy", 1 ,inf,-inf\n',
    )
    queries, audio, scores = read_score_csv(path)
    assert queries == ["a dog barks", "rain, heavy"]
    assert audio == ["a.wav", "b.wav", "c.wav"]
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, np.array([[0.5, -1.25, 0.03], [1.0, np.inf, -np.inf]]))


def test_read_score_csv_query_column_anywhere(tmp_path: Path) -> None:
    path = write(tmp_path, "scores.csv", "a.wav,query,b.wav\n1,wind,2\n")
    queries, audio, scores = read_score_csv(path)
    assert queries == ["wind"]
    assert audio == ["a.wav", "b.wav"]
    np.testing.assert_array_equal(scores, np.array([[1.0, 2.0]]))


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ["empty score file"]),
        ("caption,a.wav\nwind,1\n", ["line 1", "no 'query' column"]),
        ("query,a.wav,query\nwind,1,x\n", ["line 1", "more than one 'query' column"]),
        ("query\nwind\n", ["line 1", "no audio columns"]),
        ("query,a.wav,a.wav\nwind,1,2\n", ["line 1", "'a.wav' appears twice"]),
        ("query,a.wav,,c.wav\nwind,1,2,3\n", ["line 1", "column 3 has an empty audio file name"]),
        ("query,a.wav,b.wav\n", ["header only"]),
        ("query,a.wav,b.wav\nwind,1,2\nrain,1\n", ["line 3", "expected 3 cells", "found 2"]),
        ("query,a.wav,b.wav\nwind,1,2,3\n", ["line 2", "expected 3 cells", "found 4"]),
        ("query,a.wav,b.wav\nwind,1,2\nrain,0.5,abc\n", ["line 3", "column 'b.wav'", "'abc'"]),
        ("query,a.wav,b.wav\nwind,,2\n", ["line 2", "column 'a.wav'", "not a number"]),
        ("query,a.wav,b.wav\nwind,1,nan\n", ["line 2", "column 'b.wav'", "NaN"]),
        ("query,a.wav,b.wav\n  ,1,2\n", ["line 2", "empty query"]),
    ],
)
def test_read_score_csv_malformed_names_file(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = write(tmp_path, "bad_scores.csv", text)
    with pytest.raises(MetricsInputError) as caught:
        read_score_csv(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


# --- evaluate_scores --------------------------------------------------------------------------------------


def small_problem() -> tuple[np.ndarray, list[str], list[str]]:
    audio = [f"clip{i}.wav" for i in range(12)]
    queries = ["q zero", "q one", "q two", "q three"]
    scores, _ = known_rank_matrix()  # targets columns 5, 0, 11, 2 at ranks 0, 3, 7, 11
    return scores, queries, audio


def test_evaluate_scores_with_target_list() -> None:
    scores, queries, audio = small_problem()
    result = evaluate_scores(scores, queries, audio, ["clip5.wav", "clip0.wav", "clip11.wav", "clip2.wav"])
    assert result == pytest.approx({"R@1": 25.0, "R@5": 50.0, "R@10": 75.0, "mAP@10": 34.375})


def test_evaluate_scores_with_target_mapping_and_relevance() -> None:
    scores, queries, audio = small_problem()
    targets = {" q zero": "clip5.wav", "q  one": "clip0.wav", "q two\t": "clip11.wav", "q three": "clip2.wav"}
    order = [np.argsort(-scores[q], kind="stable") for q in range(4)]
    relevance = {
        "q zero": [audio[order[0][0]]],  # rank 0 -> AP 1
        "q one": [audio[order[1][0]], audio[order[1][2]], audio[order[1][3]]],  # ranks 0, 2, 3
        "q two": [audio[order[2][3]]],  # rank 3 -> AP 1/4
        "q three": [audio[order[3][11]]],  # rank 11 -> 0 at k=10, 1/12 at k=16
    }
    result = evaluate_scores(scores, queries, audio, targets, relevance)
    assert set(result) == {"R@1", "R@5", "R@10", "mAP@10", "mAP@16", "mAP@10_rel"}
    assert result["mAP@10"] == pytest.approx(34.375)
    ap_one = (1 + 2 / 3 + 3 / 4) / 3
    assert result["mAP@16"] == pytest.approx(100 * (1 + ap_one + 1 / 4 + 1 / 12) / 4)
    assert result["mAP@10_rel"] == pytest.approx(100 * (1 + ap_one + 1 / 4 + 0) / 4)


def test_evaluate_scores_from_files(tmp_path: Path) -> None:
    score_path = write(
        tmp_path,
        "scores.csv",
        "query,a.wav,b.wav,c.wav\ndog barking,0.9,0.1,0.5\nrain falling,0.2,0.3,0.1\n",
    )
    rel_path = write(
        tmp_path,
        "rel.csv",
        "query,audio_filenames\ndog barking ,\"['a.wav', 'b.wav']\"\nrain falling,\"['c.wav']\"\n",
    )
    queries, audio, scores = read_score_csv(score_path)
    result = evaluate_scores(
        scores, queries, audio, {"dog barking": "a.wav", "rain falling": "c.wav"}, read_relevance(rel_path)
    )
    # targets at ranks 0 and 2; relevant ranks [0, 2] and [2]
    assert result["R@1"] == pytest.approx(50.0)
    assert result["R@5"] == pytest.approx(100.0)
    assert result["mAP@10"] == pytest.approx(100 * (1 + 1 / 3) / 2)
    assert result["mAP@16"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1 / 3) / 2)


@pytest.mark.parametrize(
    ("targets", "relevance", "message"),
    [
        ({"q zero": "clip5.wav"}, None, "no target audio for query 'q one'"),
        (["clip5.wav"], None, "one audio name per query"),
        (["clip5.wav", "clip0.wav", "clip11.wav", "nope.wav"], None, "'nope.wav'"),
        ({"q zero": "a", " q zero ": "b"}, None, "appears twice"),
        (["clip5.wav", "clip0.wav", "clip11.wav", "clip2.wav"], {"q zero": ["clip1.wav"]}, "'q one'"),
        (
            ["clip5.wav", "clip0.wav", "clip11.wav", "clip2.wav"],
            {"q zero": ["x.wav"], "q one": ["clip1.wav"], "q two": ["clip1.wav"], "q three": ["clip1.wav"]},
            "'x.wav'",
        ),
    ],
)
def test_evaluate_scores_rejects_unmatched(
    targets: dict[str, str] | list[str], relevance: dict[str, list[str]] | None, message: str
) -> None:
    scores, queries, audio = small_problem()
    with pytest.raises(MetricsInputError, match=message):
        evaluate_scores(scores, queries, audio, targets, relevance)


def test_evaluate_scores_rejects_shape_mismatch() -> None:
    scores, queries, audio = small_problem()
    with pytest.raises(MetricsInputError, match="shape"):
        evaluate_scores(scores, queries[:3], audio, ["clip5.wav"] * 3)


def test_normalize_query_only_touches_whitespace() -> None:
    assert normalize_query("  A  dog\tbarks.\n") == "A dog barks."


# --- runtime safety ---------------------------------------------------------------------------------------


def test_metrics_module_does_not_need_torch() -> None:
    # Loaded by file path so the check covers this module alone, not whatever its parent package imports.
    code = (
        "import importlib.util, sys\n"
        "sys.modules['torch'] = None\n"
        f"spec = importlib.util.spec_from_file_location('standalone_metrics', {metrics.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules[spec.name] = module\n"
        "spec.loader.exec_module(module)\n"
        "assert 'torch' not in {name.split('.')[0] for name, m in sys.modules.items() if m is not None}\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the one relevance evaluator -----------------------------------------------------------------------
def test_relevance_mismatches_are_reported_and_missing_files_stay_in_the_divisor(caplog) -> None:
    from hark.training.metrics import relevance_metrics

    scores = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.0, 0.1, 0.9]])
    queries, audio = ["q a", "q b", "q c"], ["a.wav", "b.wav", "c.wav"]
    # q a: a.wav is ranked first, x.wav is not in the split; q c has no entry; q z is not in the split.
    relevance = {"q a": ["a.wav", "x.wav"], "q b": ["b.wav"], "q z": ["c.wav"]}
    with caplog.at_level("WARNING"):
        found, report = relevance_metrics(scores, queries, audio, relevance)
    assert report.unmatched_queries == ["q c"]
    assert report.unknown_queries == ["q z"]
    assert report.missing_files == ["x.wav"]
    assert "relevant files not in the split" in caplog.text
    # q a: AP = (1/1) / 2 relevant items (x.wav never retrieved); q b: 1. Dropping x.wav would give 100.
    assert found["mAP@16"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    with pytest.raises(MetricsInputError, match="does not match the split"):
        relevance_metrics(scores, queries, audio, relevance, strict=True)
    clean = {"q a": ["a.wav"], "q b": ["b.wav"], "q c": ["c.wav"]}
    found, report = relevance_metrics(scores, queries, audio, clean, strict=True)
    assert report.clean and found["mAP@16"] == pytest.approx(100.0)


def test_relevance_with_nothing_shared_is_an_error() -> None:
    from hark.training.metrics import relevance_metrics

    with pytest.raises(MetricsInputError, match="shares no query"):
        relevance_metrics(np.eye(2), ["q a", "q b"], ["a.wav", "b.wav"], {"other": ["a.wav"]})


def test_score_file_targets_match_repeated_captions_in_order() -> None:
    from hark.training.metrics import score_file_targets

    pairs = [("a.wav", ["rain", "dog"]), ("b.wav", ["rain"])]
    assert score_file_targets(["rain", "dog", " rain "], pairs) == ["a.wav", "a.wav", "b.wav"]
    with pytest.raises(MetricsInputError, match="row 2: query 'cat'"):
        score_file_targets(["cat"], pairs)
