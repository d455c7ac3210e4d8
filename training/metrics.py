"""Retrieval metrics for text-to-audio search, as pure numpy functions.

Numpy only, on purpose: the runtime (plugin, workers, benchmarks) evaluates with the same code as training,
and those images carry no torch.

Conventions shared by every function here:

- ``scores`` is a ``[Q, A]`` matrix, one row per text query and one column per audio clip; higher is better.
- Ranks are 0-based: rank 0 is the top of the list.
- Ties are broken pessimistically: an item tied with others is ranked below every tied item that is not
  relevant. A constant (or degenerate, e.g. all-zero) scorer therefore gets the worst possible ranks
  instead of whatever column order happens to favour, so a broken model can never look good. Tied relevant
  items are ordered by column index among themselves, which does not change any metric here.
- R@k and mAP@k are reported in percent, like the report's tables; ``average_precision_at_k`` is a
  fraction in [0, 1] because the design's reference values are stated that way.
"""

from __future__ import annotations

import ast
import csv
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TypeVar

import numpy as np

from hark.errors import HarkError

log = logging.getLogger(__name__)

__all__ = [
    "MetricsInputError",
    "RelevanceReport",
    "average_precision_at_k",
    "ensemble",
    "evaluate_scores",
    "map_at_k",
    "normalize_query",
    "ranks_of_relevant",
    "ranks_of_targets",
    "read_relevance",
    "read_score_csv",
    "relevance_metrics",
    "retrieval_metrics",
    "score_file_targets",
]

RECALL_KS = (1, 5, 10)

_V = TypeVar("_V")


class MetricsInputError(HarkError, ValueError):
    """Input data (a file or the arguments built from one) cannot be evaluated as given."""


def normalize_query(text: str) -> str:
    """Key used to match a query across files: surrounding whitespace stripped, inner runs collapsed.

    Only whitespace is normalised: the DCASE files are known to differ there, while case and punctuation
    differences could be genuinely different captions.
    """
    return " ".join(text.split())


def _score_matrix(scores: np.ndarray) -> np.ndarray:
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty [queries, audio] matrix, got shape {matrix.shape}")
    # NaN compares false with everything, so it would silently land at the top under pessimistic ties.
    if np.isnan(matrix).any():
        row, col = np.argwhere(np.isnan(matrix))[0]
        raise ValueError(f"scores contain NaN (first at query row {row}, audio column {col})")
    return matrix


def ranks_of_targets(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each query's single target audio (pessimistic ties).

    ``rank = #{audio scoring higher} + #{other audio scoring exactly the same}``.
    Returns an int64 array of shape ``[Q]``.
    """
    matrix = _score_matrix(scores)
    n_queries, n_audio = matrix.shape
    target_idx = np.asarray(targets)
    if target_idx.shape != (n_queries,):
        raise ValueError(f"targets must have shape ({n_queries},) to match scores, got {target_idx.shape}")
    if not np.issubdtype(target_idx.dtype, np.integer):
        raise ValueError(f"targets must be integer column indices, got dtype {target_idx.dtype}")
    if n_queries and (target_idx.min() < 0 or target_idx.max() >= n_audio):
        raise ValueError(
            f"targets must lie in [0, {n_audio}), got range [{target_idx.min()}, {target_idx.max()}]"
        )
    target_scores = matrix[np.arange(n_queries), target_idx][:, None]
    higher = (matrix > target_scores).sum(axis=1)
    tied_others = (matrix == target_scores).sum(axis=1) - 1
    return (higher + tied_others).astype(np.int64)


def retrieval_metrics(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """R@1, R@5, R@10 and mAP@10 in percent, one target audio per query.

    With a single relevant item, AP@10 is ``1 / (rank + 1)`` when the target is in the top 10, else 0.
    """
    ranks = ranks_of_targets(scores, targets)
    metrics = {f"R@{k}": float(np.mean(ranks < k) * 100.0) for k in RECALL_KS}
    reciprocal = np.where(ranks < 10, 1.0 / (ranks + 1.0), 0.0)
    metrics["mAP@10"] = float(np.mean(reciprocal) * 100.0)
    return metrics


def average_precision_at_k(relevant_ranks: Sequence[int], k: int, n_relevant: int | None = None) -> float:
    """Many-to-many AP@k (a fraction) from the 0-based ranks of all of a query's relevant items.

    ``sum over relevant items with rank < k of (1-based position among the relevant items sorted by rank)
    / (rank + 1)``, divided by the number of relevant items, including those ranked at k or beyond, so
    missing a relevant item costs even when it falls outside the cut-off. ``n_relevant`` (at least the
    number of ranks) counts relevant items that could not be ranked at all, e.g. files missing from the
    evaluated split: they are never retrieved, so they only grow the divisor.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    ranks = sorted(int(r) for r in relevant_ranks)
    if not ranks:
        raise ValueError("average_precision_at_k needs at least one relevant item")
    if ranks[0] < 0:
        raise ValueError(f"ranks are 0-based and cannot be negative, got {ranks[0]}")
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"two relevant items cannot share a rank, got {ranks}")
    divisor = len(ranks) if n_relevant is None else n_relevant
    if divisor < len(ranks):
        raise ValueError(f"n_relevant ({n_relevant}) is smaller than the number of ranked items ({len(ranks)})")
    total = sum(position / (rank + 1) for position, rank in enumerate(ranks, start=1) if rank < k)
    return total / divisor


def ranks_of_relevant(row: np.ndarray, relevant: Collection[int]) -> list[int]:
    """0-based ranks of the relevant columns of one score row, pessimistic ties, all ranks distinct."""
    scores = np.asarray(row, dtype=np.float64)
    columns = sorted({int(c) for c in relevant})
    if columns and (columns[0] < 0 or columns[-1] >= scores.shape[0]):
        raise ValueError(f"relevant columns must lie in [0, {scores.shape[0]}), got {columns}")
    is_relevant = np.zeros(scores.shape[0], dtype=np.int8)
    is_relevant[columns] = 1
    # np.lexsort sorts by the last key first: score descending, then irrelevant before relevant, then column.
    order = np.lexsort((np.arange(scores.shape[0]), is_relevant, -scores))
    position = np.empty_like(order)
    position[order] = np.arange(order.shape[0])
    return [int(position[c]) for c in columns]


def map_at_k(scores: np.ndarray, relevance: Sequence[Collection[int]], k: int = 16,
             n_relevant: Sequence[int] | None = None) -> float:
    """Mean many-to-many AP@k over queries, in percent.

    ``relevance[q]`` holds the relevant audio column indices of query ``q``; ``n_relevant[q]`` (optional)
    its total number of relevant items, including ones that are not columns (see
    ``average_precision_at_k``). A query with no relevant item raises ``ValueError``: AP is undefined for
    it, and silently skipping it would change the denominator the reported mean is compared against.
    """
    matrix = _score_matrix(scores)
    if len(relevance) != matrix.shape[0]:
        raise ValueError(
            f"relevance has {len(relevance)} entries but scores have {matrix.shape[0]} query rows"
        )
    total = 0.0
    for query, relevant in enumerate(relevance):
        if not relevant:
            raise ValueError(f"query row {query} has no relevant audio; AP@{k} is undefined for it")
        total += average_precision_at_k(ranks_of_relevant(matrix[query], relevant), k,
                                        None if n_relevant is None else n_relevant[query])
    return total / matrix.shape[0] * 100.0


def ensemble(score_matrices: Sequence[np.ndarray]) -> np.ndarray:
    """Average of the members' score matrices (the report's ensemble), as float64."""
    if len(score_matrices) == 0:
        raise ValueError("ensemble needs at least one score matrix")
    members = [np.asarray(m, dtype=np.float64) for m in score_matrices]
    shapes = [m.shape for m in members]
    if any(shape != shapes[0] for shape in shapes):
        raise ValueError(f"ensemble members must all have the same shape, got {shapes}")
    return np.mean(np.stack(members), axis=0)


def _read_rows(path: Path, encoding: str) -> list[tuple[int, list[str]]]:
    """All non-blank CSV records with the file line each one ends on."""
    try:
        with path.open(newline="", encoding=encoding) as handle:
            # Hand-edited files put a space after the comma, which would otherwise hide a quoted cell.
            reader = csv.reader(handle, skipinitialspace=True)
            return [(reader.line_num, row) for row in reader if row and any(cell.strip() for cell in row)]
    except OSError as error:
        raise MetricsInputError(f"{path}: cannot read file ({error.strerror or error})") from error
    except UnicodeDecodeError as error:
        raise MetricsInputError(
            f"{path}: not valid {encoding} text ({error.reason} at byte {error.start})"
        ) from error
    except csv.Error as error:
        raise MetricsInputError(f"{path}: malformed CSV ({error})") from error


def read_relevance(path: str | PathLike[str], encoding: str = "utf-8-sig") -> dict[str, list[str]]:
    """Read a DCASE 2025 relevance file: ``query,audio_filenames`` with the second cell a Python list literal.

    An optional header row (``query,audio_filenames``) is skipped. Keys are the queries with surrounding
    whitespace stripped. A query repeated with the same list is accepted once; repeated with a different
    list it is an error, since the two rows could not be told apart when matching score rows by text.
    """
    file = Path(path)
    rows = _read_rows(file, encoding)
    if not rows:
        raise MetricsInputError(f"{file}: empty relevance file")
    if [cell.strip().lower() for cell in rows[0][1]] == ["query", "audio_filenames"]:
        rows = rows[1:]
    relevance: dict[str, list[str]] = {}
    first_seen: dict[str, tuple[int, list[str]]] = {}
    for line, row in rows:
        where = f"{file}, line {line}"
        if len(row) != 2:
            raise MetricsInputError(f"{where}: expected 2 cells (query, audio_filenames), found {len(row)}")
        query, literal = row[0].strip(), row[1].strip()
        if not query:
            raise MetricsInputError(f"{where}: empty query")
        try:
            parsed = ast.literal_eval(literal)
        except (ValueError, SyntaxError) as error:
            raise MetricsInputError(
                f"{where}: audio_filenames is not a Python list literal: {literal[:80]!r}"
            ) from error
        if not isinstance(parsed, list | tuple) or not all(isinstance(n, str) for n in parsed):
            raise MetricsInputError(
                f"{where}: audio_filenames must be a list of strings, got {literal[:80]!r}"
            )
        names = [n.strip() for n in parsed]
        if not names:
            raise MetricsInputError(f"{where}: query {query!r} lists no relevant audio")
        key = normalize_query(query)
        if key in first_seen:
            earlier_line, earlier_names = first_seen[key]
            if sorted(earlier_names) != sorted(names):
                raise MetricsInputError(
                    f"{where}: query {query!r} already appeared on line {earlier_line} with different audio"
                )
            continue
        first_seen[key] = (line, names)
        relevance[query] = names
    if not relevance:
        raise MetricsInputError(f"{file}: no relevance rows after the header")
    return relevance


def _parse_cell(cell: str, column: str, where: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise MetricsInputError(f"{where}, column {column!r}: not a number: {cell!r}") from None


def read_score_csv(
    path: str | PathLike[str], encoding: str = "utf-8-sig"
) -> tuple[list[str], list[str], np.ndarray]:
    """Read a score file: a header with a ``query`` column and one column per audio file, one row per query.

    Returns ``(queries, audio_filenames, scores)`` with ``scores`` a float64 ``[Q, A]`` matrix in file order.
    Cells must be finite or infinite numbers; NaN is rejected because it cannot be ranked.
    """
    file = Path(path)
    rows = _read_rows(file, encoding)
    if not rows:
        raise MetricsInputError(f"{file}: empty score file")
    header_line, header = rows[0]
    names = [cell.strip() for cell in header]
    if names.count("query") != 1:
        found = "no" if "query" not in names else "more than one"
        raise MetricsInputError(f"{file}, line {header_line}: header has {found} 'query' column")
    query_col = names.index("query")
    audio_cols = [i for i in range(len(names)) if i != query_col]
    audio_names = [names[i] for i in audio_cols]
    if not audio_names:
        raise MetricsInputError(f"{file}, line {header_line}: header has no audio columns")
    if "" in audio_names:
        column = names.index("") + 1
        raise MetricsInputError(f"{file}, line {header_line}: column {column} has an empty audio file name")
    if len(set(audio_names)) != len(audio_names):
        duplicate = next(n for n in audio_names if audio_names.count(n) > 1)
        raise MetricsInputError(f"{file}, line {header_line}: audio column {duplicate!r} appears twice")
    if len(rows) == 1:
        raise MetricsInputError(f"{file}: header only, no query rows")

    queries: list[str] = []
    matrix = np.empty((len(rows) - 1, len(audio_names)), dtype=np.float64)
    for index, (line, row) in enumerate(rows[1:]):
        where = f"{file}, line {line}"
        if len(row) != len(names):
            raise MetricsInputError(f"{where}: expected {len(names)} cells like the header, found {len(row)}")
        query = row[query_col].strip()
        if not query:
            raise MetricsInputError(f"{where}: empty query cell")
        queries.append(query)
        cells = [row[i] for i in audio_cols]
        try:
            # One vectorised parse per row; the per-cell pass only runs to locate or forgive a failure.
            values = np.array(cells, dtype=np.float64)
        except ValueError:
            values = np.array(
                [_parse_cell(cell, name, where) for name, cell in zip(audio_names, cells, strict=True)]
            )
        if np.isnan(values).any():
            column = int(np.flatnonzero(np.isnan(values))[0])
            raise MetricsInputError(f"{where}, column {audio_names[column]!r}: NaN cannot be ranked")
        matrix[index] = values
    return queries, audio_names, matrix


def _query_lookup(mapping: Mapping[str, _V], what: str) -> dict[str, _V]:
    lookup: dict[str, _V] = {}
    for query, value in mapping.items():
        key = normalize_query(query)
        if key in lookup and lookup[key] != value:
            raise MetricsInputError(f"{what}: query {query!r} appears twice (after whitespace normalisation)")
        lookup[key] = value
    return lookup


def _column_of(audio_index: Mapping[str, int], name: str, query: str, what: str) -> int:
    column = audio_index.get(name.strip())
    if column is None:
        raise MetricsInputError(f"{what}: audio {name!r} for query {query!r} is not a column of the scores")
    return column


def evaluate_scores(
    scores: np.ndarray,
    queries: list[str],
    audio_names: list[str],
    targets: Mapping[str, str] | Sequence[str],
    relevance: Mapping[str, Sequence[str]] | None = None,
    strict: bool = True,
) -> dict[str, float]:
    """Evaluate a ``[Q, A]`` score matrix whose rows are ``queries`` and columns ``audio_names``.

    ``targets`` gives each query's single matching audio: either a list aligned with ``queries`` (needed
    when one caption text belongs to several clips) or a mapping from query text to audio name. It yields
    R@1, R@5, R@10 and mAP@10. With ``relevance`` (as returned by ``read_relevance``), "mAP@16" and
    "mAP@10_rel" are added, both many-to-many over the relevant lists exactly as given (the single target is
    not added to them). Queries are matched by ``normalize_query``; audio names by exact text, stripped.
    Every score row must find its target, or ``MetricsInputError``; relevance mismatches raise too with
    ``strict`` (the default here), else they are reported as ``relevance_metrics`` describes.
    """
    matrix = _score_matrix(scores)
    if matrix.shape != (len(queries), len(audio_names)):
        raise MetricsInputError(
            f"scores have shape {matrix.shape} but there are {len(queries)} queries and "
            f"{len(audio_names)} audio names"
        )
    audio_index = {name.strip(): i for i, name in enumerate(audio_names)}
    if len(audio_index) != len(audio_names):
        raise MetricsInputError("audio_names contain duplicates (after stripping whitespace)")

    if isinstance(targets, Mapping):
        target_lookup = _query_lookup(targets, "targets")
        target_names: list[str] = []
        for query in queries:
            name = target_lookup.get(normalize_query(query))
            if name is None:
                raise MetricsInputError(f"targets: no target audio for query {query!r}")
            target_names.append(str(name))
    else:
        if isinstance(targets, str) or len(targets) != len(queries):
            raise MetricsInputError(
                f"targets: a list must hold one audio name per query ({len(queries)}), "
                f"got {1 if isinstance(targets, str) else len(targets)}"
            )
        target_names = list(targets)
    target_idx = np.array(
        [_column_of(audio_index, n, q, "targets") for q, n in zip(queries, target_names, strict=True)],
        dtype=np.int64,
    )
    metrics = retrieval_metrics(matrix, target_idx)

    if relevance is not None:
        found, _ = relevance_metrics(matrix, queries, audio_names, relevance, strict=strict)
        metrics.update(found)
    return metrics


@dataclass
class RelevanceReport:
    """What a relevance file and a split did not share (each list is of query texts or file names)."""

    unmatched_queries: list[str] = field(default_factory=list)  # split queries the file lists nothing for
    unknown_queries: list[str] = field(default_factory=list)  # file queries that are not in the split
    missing_files: list[str] = field(default_factory=list)  # relevant files that are not columns of the split

    @property
    def clean(self) -> bool:
        return not (self.unmatched_queries or self.unknown_queries or self.missing_files)

    def describe(self) -> str:
        parts = []
        for label, items in (("split queries without relevance", self.unmatched_queries),
                             ("relevance queries not in the split", self.unknown_queries),
                             ("relevant files not in the split", self.missing_files)):
            if items:
                shown = ", ".join(repr(i[:60]) for i in items[:3]) + (", ..." if len(items) > 3 else "")
                parts.append(f"{len(items)} {label} ({shown})")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, int]:
        return {"unmatched_queries": len(self.unmatched_queries), "unknown_queries": len(self.unknown_queries),
                "missing_files": len(self.missing_files)}


def relevance_metrics(scores: np.ndarray, queries: Sequence[str], audio_names: Sequence[str],
                      relevance: Mapping[str, Sequence[str]], strict: bool = False,
                      ) -> tuple[dict[str, float], RelevanceReport]:
    """mAP@16 and mAP@10 over many-to-many relevance: the one relevance evaluator.

    Queries are matched by ``normalize_query``, files by exact (stripped) name. What does not match is
    reported, never dropped in silence: with ``strict`` any mismatch raises ``MetricsInputError``;
    otherwise it is logged, split queries without an entry are left out of the mean (AP is undefined for
    them), and relevant files absent from the split stay in each query's divisor as never retrieved (so a
    partial split cannot inflate the score).
    """
    matrix = _score_matrix(scores)
    audio_index = {name.strip(): i for i, name in enumerate(audio_names)}
    lookup = _query_lookup(relevance, "relevance")
    report = RelevanceReport()
    split_keys = {normalize_query(q) for q in queries}
    report.unknown_queries = sorted(q for q in relevance if normalize_query(q) not in split_keys)
    rows: list[int] = []
    columns: list[set[int]] = []
    totals: list[int] = []
    missing: set[str] = set()
    for row, query in enumerate(queries):
        names = lookup.get(normalize_query(query))
        if not names:
            report.unmatched_queries.append(query)
            continue
        wanted = {str(n).strip() for n in names}
        absent = {n for n in wanted if n not in audio_index}
        missing |= absent
        present = {audio_index[n] for n in wanted - absent}
        if not present:
            report.unmatched_queries.append(query)
            continue
        rows.append(row)
        columns.append(present)
        totals.append(len(wanted))
    report.missing_files = sorted(missing)
    if strict and not report.clean:
        raise MetricsInputError(f"relevance does not match the split: {report.describe()}")
    if not rows:
        raise MetricsInputError("the relevance file shares no query with the evaluated split")
    if not report.clean:
        log.warning("relevance: %s", report.describe())
    sub = matrix[rows]
    return ({"mAP@16": map_at_k(sub, columns, 16, totals), "mAP@10_rel": map_at_k(sub, columns, 10, totals)},
            report)


def score_file_targets(queries: Sequence[str], captions_by_audio: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """The target audio of each score-file row, from (audio name, its captions) pairs of the split.

    Captions repeat across clips (and across a clip's own captions), so the k-th row with a given text is
    matched to the k-th caption with that text in the split.
    """
    owners: dict[str, list[str]] = {}
    for name, captions in captions_by_audio:
        for caption in captions:
            owners.setdefault(normalize_query(caption), []).append(name)
    seen: dict[str, int] = {}
    targets = []
    for row, query in enumerate(queries, start=2):
        key = normalize_query(query)
        if key not in owners:
            raise MetricsInputError(f"score file row {row}: query {query[:60]!r} is not a caption of the split")
        targets.append(owners[key][seen.get(key, 0) % len(owners[key])])
        seen[key] = seen.get(key, 0) + 1
    return targets
