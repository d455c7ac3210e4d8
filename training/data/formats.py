"""Parsers for the audio-caption datasets we train and evaluate on (plain Python, no torch).

Each loader turns a dataset's released layout into a list of `Example`s: one per audio file, with all of
its captions. Problems with the annotation files themselves (missing, unparsable, wrong columns) raise
`DatasetError` naming the file and, where known, the line. Audio files that an annotation file lists but
that are not on disk are common in practice (YouTube takedowns, partial downloads): they are reported in
one warning per annotation file and skipped.

Layouts (as released):
- Clotho v2: `clotho_captions_<split>.csv` (file_name, caption_1..caption_5) and audio in `<split>/`;
  splits development / validation / evaluation.
- AudioCaps: `<split>.csv` (audiocap_id, youtube_id, start_time, caption), one row per caption; audio
  named by YouTube id (optionally `Y`-prefixed or with `_<start>`) or by audiocap_id, any extension.
- WavCaps: JSON files `{"data": [{"id", "caption", "duration", ...}]}` (usually `json_files/<Source>/`),
  audio looked up by id with any extension. Freesound clips that overlap Clotho are excluded through the
  DCASE exclusion list when one is present.
- TACOS (Primus et al. 2025; Zenodo record 15379789): `annotations_weak.csv` (filename, text: one
  clip-level caption), `annotations_strong.csv` (filename, text, onset, offset: captions of temporal
  regions), `metadata.csv`, `development_split.csv` / `test_split.csv` (filename) and `audio/`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hark.errors import HarkError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".mp4", ".aif", ".aiff", ".wma"}
)

# Canonical split names ("train", "val", "test") and the spellings each dataset uses for them.
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "development": "train",
    "dev": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "eval": "test",
    "evaluation": "test",
}
_CLOTHO_SPLITS = {"train": "development", "val": "validation", "test": "evaluation"}
_TACOS_SPLIT_FILES = {"train": "development_split.csv", "test": "test_split.csv"}

# Name of the DCASE list of Freesound ids that overlap Clotho; any file matching this pattern is used.
_EXCLUSION_PATTERN = re.compile(r"exclu", re.IGNORECASE)
_ID_LIST_SUFFIXES = (".csv", ".txt", ".json")
_MISSING_LISTED = 20
_ID_KEYS = ("ids", "id", "sound_ids", "freesound_ids", "excluded", "excluded_ids")


class DatasetError(HarkError, ValueError):
    """An annotation file or dataset folder that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Example:
    """One audio file and every caption it has."""

    audio_path: Path
    captions: tuple[str, ...]
    audio_id: str  # unique within its dataset; Clotho uses the file name (as the relevance file does)
    source: str  # dataset name: "clotho", "audiocaps", "wavcaps", "tacos"


def canonical_split(split: str) -> str:
    """Map any accepted split spelling to "train", "val" or "test"."""
    key = split.strip().lower()
    if key not in _SPLIT_ALIASES:
        raise DatasetError(f"unknown split {split!r}; use one of {sorted(_SPLIT_ALIASES)}")
    return _SPLIT_ALIASES[key]


# ---------------------------------------------------------------------------------------------------
# CSV and JSON reading with errors that name the file


def _decode_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 (spreadsheet "Unicode text" exports) with its BOM
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path}: starts with a UTF-16 byte-order mark but is not UTF-16 "
                               f"({exc.reason})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Clotho's metadata (and some caption) CSVs are ISO-8859-1; every byte string decodes as it.
        return raw.decode("iso-8859-1")


def read_csv(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as (line number, {column: value}); header must hold the `required` columns."""
    text = _decode_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{path}: empty file, expected a header with {', '.join(required)}")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetError(
                f"{path}: line 1: header lacks column(s) {', '.join(missing)} (found: {', '.join(header)})"
            )
        rows = []
        for record in reader:
            if not record or all(not v.strip() for v in record):
                continue
            if len(record) != len(header):
                raise DatasetError(
                    f"{path}: line {reader.line_num}: expected {len(header)} fields, found {len(record)}"
                )
            rows.append((reader.line_num, dict(zip(header, record, strict=True))))
    except csv.Error as exc:
        raise DatasetError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
    return rows


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError:
        return []
    first = head.decode("utf-8-sig", errors="replace").splitlines()[:1]
    try:
        return [h.strip() for h in next(csv.reader(first), [])]
    except csv.Error:
        return []


def _read_json(path: Path) -> object:
    text = _decode_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: line {exc.lineno}, column {exc.colno}: malformed JSON ({exc.msg})") from None
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply to read") from None
    except ValueError as exc:  # a number of more than 4300 digits
        raise DatasetError(f"{path}: unreadable JSON ({exc})") from None


# ---------------------------------------------------------------------------------------------------
# Audio lookup


def _walk(directory: Path) -> Iterable[tuple[str, list[str]]]:
    """(folder, file names) under `directory`, following symlinked folders (datasets are often assembled from
    links to other disks) but entering each real folder once, so a link loop ends."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        yield dirpath, filenames


def _audio_index(directories: Iterable[Path]) -> dict[str, list[Path]]:
    """Audio files under the given folders (recursively, through symlinked folders), by file name and by stem."""
    index: dict[str, list[Path]] = {}
    for directory in directories:
        for dirpath, filenames in _walk(directory):
            for filename in filenames:
                path = Path(dirpath) / filename
                if path.suffix.lower() in AUDIO_EXTENSIONS:
                    index.setdefault(filename, []).append(path)
                    index.setdefault(path.stem, []).append(path)
    return index


def _strip_audio_suffix(name: str) -> str:
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in AUDIO_EXTENSIONS else name


def _warn_skipped(annotation: Path, names: Sequence[str], what: str) -> None:
    """One warning per annotation file for the clips it names that were skipped, the first few by name."""
    if not names:
        return
    shown = ", ".join(names[:_MISSING_LISTED])
    more = f" and {len(names) - _MISSING_LISTED} more" if len(names) > _MISSING_LISTED else ""
    log.warning("%s: %d %s, skipped: %s%s", annotation, len(names), what, shown, more)


def _warn_missing(annotation: Path, names: Sequence[str]) -> None:
    _warn_skipped(annotation, names, "listed audio file(s) not found")


def _warn_uncaptioned(annotation: Path, names: Sequence[str]) -> None:
    _warn_skipped(annotation, names, "clip(s) have only empty captions")


def _first_existing(candidates: Iterable[Path]) -> list[Path]:
    return [c for c in candidates if c.is_dir()]


# ---------------------------------------------------------------------------------------------------
# Exclusion lists (Clotho-overlapping Freesound ids)


def _normalise_id(value: object) -> str:
    text = _strip_audio_suffix(str(value).strip())
    # Spreadsheets write integer ids as floats ("507588.0").
    if re.fullmatch(r"\d+\.0+", text):
        text = text.split(".", 1)[0]
    # Leading zeros dropped from ASCII numbers without int(), which refuses "²" (a digit to isdigit) and 4300+ digits.
    return (text.lstrip("0") or "0") if text.isascii() and text.isdigit() else text


def read_id_list(path: Path) -> set[str]:
    """Ids from a CSV (a sound_id / id / freesound_id / file_name column, or a single bare column), a
    JSON list (or an object with such a list) or a text file with one id per line."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = _read_json(path)
        if isinstance(data, dict):
            named = [data[k] for k in data if str(k).lower() in _ID_KEYS and isinstance(data[k], list)]
            lists = named or [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise DatasetError(f"{path}: expected a JSON list of ids, or an object with one list of them "
                                   f"(or an 'ids' key); found keys {', '.join(map(str, data))[:200]}")
            data = lists[0]
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON list of ids")
        if any(isinstance(v, dict | list) for v in data):
            raise DatasetError(f"{path}: ids must be numbers or strings, not objects or lists")
        return {_normalise_id(v) for v in data if str(v).strip()}
    text = _decode_text(path)
    if suffix == ".csv":
        try:
            rows = list(csv.reader(io.StringIO(text, newline="")))
        except csv.Error as exc:
            raise DatasetError(f"{path}: malformed CSV ({exc})") from None
        if not rows:
            return set()
        header = [h.strip().lower() for h in rows[0]]
        for column in ("sound_id", "freesound_id", "id", "file_name", "filename", "fname"):
            if column in header:
                col = header.index(column)
                return {_normalise_id(r[col]) for r in rows[1:] if len(r) > col and r[col].strip()}
        start = 0 if rows[0] and rows[0][0].strip().isdigit() else 1
        return {_normalise_id(r[0]) for r in rows[start:] if r and r[0].strip()}
    return {_normalise_id(tok) for tok in re.split(r"[\s,;]+", text) if tok.strip()}


def _exclusion_ids(root: Path, exclude_ids: Iterable[str | int] | str | Path | None) -> set[str]:
    if isinstance(exclude_ids, str | Path):
        return read_id_list(Path(exclude_ids))
    if exclude_ids is not None:
        return {_normalise_id(i) for i in exclude_ids}
    found: set[str] = set()
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.is_file() and _EXCLUSION_PATTERN.search(path.name) and path.suffix.lower() in _ID_LIST_SUFFIXES:
            ids = read_id_list(path)
            log.info("%s: excluding %d Clotho-overlapping ids", path, len(ids))
            found |= ids
    return found


# ---------------------------------------------------------------------------------------------------
# Clotho


def load_clotho(root: str | Path, split: str) -> list[Example]:
    """Clotho v2: `clotho_captions_<split>.csv` and audio in `<split>/` (development, validation,
    evaluation; train/val/test are accepted as aliases)."""
    root = Path(root)
    name = _CLOTHO_SPLITS[canonical_split(split)]
    csv_path = root / f"clotho_captions_{name}.csv"
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: file not found (Clotho captions for split {name!r})")
    audio_dirs = _first_existing([root / name, root / f"clotho_audio_{name}", root / "audio" / name])
    if not audio_dirs:
        raise DatasetError(f"{root / name}: audio folder for Clotho split {name!r} not found")
    audio_dir = audio_dirs[0]
    rows = read_csv(csv_path, ["file_name"])
    header = _csv_header(csv_path)
    if not any(h.startswith("caption") for h in header):
        raise DatasetError(f"{csv_path}: line 1: header has no caption columns (caption_1 ... caption_5; found: "
                           f"{', '.join(header)})")
    present = set(os.listdir(audio_dir))
    by_file: dict[str, list[str]] = {}
    for line, row in rows:
        file_name = row["file_name"].strip()
        if not file_name:
            raise DatasetError(f"{csv_path}: line {line}: empty file_name")
        captions = [v.strip() for k, v in row.items() if k.startswith("caption") and v.strip()]
        by_file.setdefault(file_name, []).extend(captions)
    examples, missing = [], []
    for file_name, captions in by_file.items():
        if file_name not in present:
            missing.append(file_name)
        elif captions:
            examples.append(Example(audio_dir / file_name, tuple(captions), file_name, "clotho"))
        else:
            log.warning("%s: %s has no captions, skipped", csv_path, file_name)
    _warn_missing(csv_path, missing)
    return examples


# ---------------------------------------------------------------------------------------------------
# AudioCaps

_AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")


def _audiocaps_csv(root: Path, split: str) -> Path | None:
    names = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}[split]
    for folder in (root, root / "dataset", root / "csv_files"):
        for stem in names:
            for candidate in (folder / f"{stem}.csv", folder / f"audiocaps_{stem}.csv"):
                if candidate.is_file():
                    return candidate
    return None


def load_audiocaps(root: str | Path, split: str) -> list[Example]:
    """AudioCaps: `<split>.csv` with one row per caption; captions grouped per YouTube clip."""
    root = Path(root)
    canonical = canonical_split(split)
    csv_path = _audiocaps_csv(root, canonical)
    if csv_path is None:
        raise DatasetError(f"{root / (canonical + '.csv')}: file not found (AudioCaps captions)")
    rows = read_csv(csv_path, _AUDIOCAPS_COLUMNS)
    spellings = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}[canonical]
    audio_dirs = _first_existing(
        [root / s for s in spellings] + [root / "audio" / s for s in spellings] + [root / "audio"]
    )
    if not audio_dirs:
        raise DatasetError(f"{root}: no AudioCaps audio folder ({canonical}/ or audio/) found")
    # audio/<split>/ and audio/ overlap; index the most specific folder that exists.
    index = _audio_index(audio_dirs[:1])
    grouped: dict[str, dict] = {}
    for line, row in rows:
        ytid = row["youtube_id"].strip()
        caption = row["caption"].strip()
        if not ytid:
            raise DatasetError(f"{csv_path}: line {line}: empty youtube_id")
        entry = grouped.setdefault(ytid, {"captions": [], "ids": [], "start": row["start_time"].strip()})
        if caption:
            entry["captions"].append(caption)
        entry["ids"].append(row["audiocap_id"].strip())
    examples, missing, uncaptioned = [], [], []
    for ytid, entry in grouped.items():
        start = entry["start"]
        try:
            start_int = str(int(float(start)))
        except (ValueError, OverflowError):  # not a number, or inf
            start_int = start
        stems = [ytid, f"Y{ytid}", f"{ytid}_{start}", f"{ytid}_{start_int}", f"Y{ytid}_{start_int}"]
        stems += entry["ids"]
        path = next((index[s][0] for s in stems if s in index), None)
        if path is None:
            missing.append(ytid)
        elif entry["captions"]:
            examples.append(Example(path, tuple(entry["captions"]), ytid, "audiocaps"))
        else:
            uncaptioned.append(ytid)
    _warn_missing(csv_path, missing)
    _warn_uncaptioned(csv_path, uncaptioned)
    return examples


# ---------------------------------------------------------------------------------------------------
# WavCaps

_NON_FREESOUND = ("bbc", "soundbible", "sb_final", "audioset", "as_final")


def _wavcaps_jsons(root: Path) -> list[Path]:
    found = sorted(p for p in root.glob("*.json") if p.is_file())
    json_dir = root / "json_files"
    if json_dir.is_dir():
        found += sorted(Path(d) / f for d, files in _walk(json_dir) for f in files
                        if f.lower().endswith(".json") and (Path(d) / f).is_file())
    return found


def load_wavcaps(root: str | Path, exclude_ids: Iterable[str | int] | str | Path | None = None) -> list[Example]:
    """WavCaps: every `{"data": [...]}` JSON under `root` (and `root/json_files/`).

    `exclude_ids` is a collection of Freesound ids or a path to an id list; when None, any file in `root`
    whose name contains "exclu" (such as DCASE's `dcase2025_task6_excluded_freesound_ids.csv`) is used.
    Exclusion applies to Freesound-derived entries only: the other sources have unrelated id spaces.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: WavCaps folder not found")
    excluded = _exclusion_ids(root, exclude_ids)
    index = _audio_index([root])
    examples: list[Example] = []
    dropped = 0
    loaded_any = False
    for json_path in _wavcaps_jsons(root):
        data = _read_json(json_path)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            # Some other JSON (a config, the exclusion list) may sit beside the data; say so, since a data file
            # with a misspelt key would otherwise vanish from training.
            if not _EXCLUSION_PATTERN.search(json_path.name):
                log.warning("%s: not WavCaps data (no top-level 'data' list), skipped", json_path)
            continue
        loaded_any = True
        source_name = json_path.parent.name if json_path.parent != root else json_path.stem
        freesound = not any(tag in str(json_path.relative_to(root)).lower() for tag in _NON_FREESOUND)
        missing, uncaptioned, odd_captions, outside = [], [], 0, 0
        for position, entry in enumerate(data["data"]):
            if not isinstance(entry, dict) or "id" not in entry or "caption" not in entry:
                raise DatasetError(f"{json_path}: data[{position}]: entry needs 'id' and 'caption'")
            clip_id = _strip_audio_suffix(str(entry["id"]).strip())
            if freesound and _normalise_id(clip_id) in excluded:
                dropped += 1
                continue
            raw = entry["caption"]
            values = raw if isinstance(raw, list) else [raw]
            # Captions are strings; a number, a mapping or a nested list would train on its Python repr.
            odd_captions += sum(c is not None and not isinstance(c, str) for c in values)
            captions = tuple(t for t in (c.strip() for c in values if isinstance(c, str)) if t)
            path, escaped = _wavcaps_audio(root, entry, clip_id, source_name, index)
            outside += escaped
            if path is None:
                missing.append(clip_id)
            elif captions:
                examples.append(Example(path, captions, f"{source_name}/{clip_id}", "wavcaps"))
            else:
                uncaptioned.append(clip_id)
        _warn_missing(json_path, missing)
        _warn_uncaptioned(json_path, uncaptioned)
        if odd_captions:
            log.warning("%s: %d caption(s) that are not text (numbers, objects, nested lists) ignored", json_path,
                        odd_captions)
        if outside:
            log.warning("%s: %d 'audio' path(s) leading outside the dataset folder ignored", json_path, outside)
    if not loaded_any:
        raise DatasetError(f"{root}: no WavCaps JSON (an object with a 'data' list) found")
    if dropped:
        log.info("%s: dropped %d WavCaps clips that overlap Clotho", root, dropped)
    return examples


def _wavcaps_audio(
    root: Path, entry: dict, clip_id: str, source_name: str, index: dict[str, list[Path]]
) -> tuple[Path | None, bool]:
    """The clip's audio file, and whether the entry's own `audio` path was refused (an absolute path or "../" must
    not make training read any file on the machine)."""
    declared = entry.get("audio")
    escaped = False
    if isinstance(declared, str) and declared:
        # Judged by the name, not the resolved path: folders linked into the dataset from other disks are fine.
        # WavCaps' own files hold a placeholder ("wav_path"): a name that is not audio falls back to the id.
        relative = Path(declared)
        if relative.is_absolute() or ".." in relative.parts:
            escaped = True
        elif relative.suffix.lower() in AUDIO_EXTENSIONS and (root / relative).is_file():
            return root / relative, False
    candidates = index.get(clip_id, [])
    if len(candidates) > 1:
        # The same numeric id can exist in two sources; prefer the folder named like the JSON's source.
        same_source = [p for p in candidates if source_name.lower() in (q.lower() for q in p.parts)]
        candidates = same_source or candidates
    return (sorted(candidates)[0] if candidates else None), escaped


# ---------------------------------------------------------------------------------------------------
# TACOS


def _tacos_root(root: Path) -> Path:
    for candidate in (root, root / "tacos"):
        if (candidate / "annotations_weak.csv").is_file() or (candidate / "annotations_strong.csv").is_file():
            return candidate
    raise DatasetError(f"{root / 'annotations_weak.csv'}: file not found (TACOS annotations)")


def load_tacos(
    root: str | Path,
    split: str,
    captions: str = "weak",
    exclude_ids: Iterable[str | int] | str | Path | None = None,
) -> list[Example]:
    """TACOS as released on Zenodo: clip-level (weak) captions from `annotations_weak.csv`.

    `captions="strong"` uses the region captions of `annotations_strong.csv` instead, "both" uses both.
    The release has a development and a test split (`development_split.csv`, `test_split.csv`); it has
    no validation split, so "val" yields no examples. Without split files every clip is development.
    Freesound ids overlapping Clotho are dropped as for WavCaps.
    """
    if captions not in ("weak", "strong", "both"):
        raise ValueError(f"captions must be 'weak', 'strong' or 'both', got {captions!r}")
    root = _tacos_root(Path(root))
    canonical = canonical_split(split)
    weak_path, strong_path = root / "annotations_weak.csv", root / "annotations_strong.csv"
    by_file: dict[str, list[str]] = {}
    order: list[str] = []

    def add(path: Path, text_columns: Sequence[str]) -> None:
        header = _csv_header(path)
        column = next((c for c in text_columns if c in header), text_columns[0])
        for _line, row in read_csv(path, ["filename", column]):
            name = row["filename"].strip()
            if name not in by_file:
                by_file[name] = []
                order.append(name)
            text = row[column].strip()
            if text and text not in by_file[name]:
                by_file[name].append(text)

    use_weak = captions in ("weak", "both") and weak_path.is_file()
    if use_weak:
        add(weak_path, ("text", "caption"))
    if captions in ("strong", "both") or not use_weak:
        if not strong_path.is_file():
            raise DatasetError(f"{strong_path}: file not found (TACOS strong annotations)")
        add(strong_path, ("text", "caption"))

    split_file = _TACOS_SPLIT_FILES.get(canonical)
    if split_file is None:
        log.info("%s: TACOS has no %s split", root, canonical)
        return []
    if (root / split_file).is_file():
        wanted = {row["filename"].strip() for _line, row in read_csv(root / split_file, ["filename"])}
    elif not any((root / f).is_file() for f in _TACOS_SPLIT_FILES.values()):
        wanted = set(by_file) if canonical == "train" else set()
    else:
        raise DatasetError(f"{root / split_file}: file not found (TACOS {canonical} split)")

    excluded = _exclusion_ids(root, exclude_ids)
    audio_dir = root / "audio"
    if not audio_dir.is_dir():
        raise DatasetError(f"{audio_dir}: TACOS audio folder not found")
    present = set(os.listdir(audio_dir))
    unknown = sorted(wanted - set(by_file))
    if unknown:
        log.warning("%s: %d name(s) of the %s split match no annotated file (the annotations name files like "
                    "%r), skipped: %s", root / (split_file or ""), len(unknown), canonical, order[0] if order else "",
                    ", ".join(unknown[:_MISSING_LISTED]))
    index: dict[str, list[Path]] | None = None
    examples, missing, uncaptioned = [], [], []
    for name in order:
        if name not in wanted or _normalise_id(name) in excluded:
            continue
        if name in present:
            path: Path | None = audio_dir / name
        else:
            # The release names clips <freesound id>.mp3; accept any extension after a re-encode.
            index = index if index is not None else _audio_index([audio_dir])
            hits = index.get(_strip_audio_suffix(name), [])
            path = sorted(hits)[0] if hits else None
        if path is None:
            missing.append(name)
        elif by_file[name]:
            examples.append(Example(path, tuple(by_file[name]), _strip_audio_suffix(name), "tacos"))
        else:
            uncaptioned.append(name)
    _warn_missing(weak_path if use_weak else strong_path, missing)
    _warn_uncaptioned(weak_path if use_weak else strong_path, uncaptioned)
    return examples


# ---------------------------------------------------------------------------------------------------
# DCASE 2025 relevance judgements


# ---------------------------------------------------------------------------------------------------
# Discovery


def _detect(root: Path) -> list[str]:
    found = []
    if any(root.glob("clotho_captions_*.csv")):
        found.append("clotho")
    for split in ("train", "val", "test"):
        path = _audiocaps_csv(root, split)
        if path is not None and "audiocap_id" in _csv_header(path):
            found.append("audiocaps")
            break
    if (root / "annotations_weak.csv").is_file() or (root / "annotations_strong.csv").is_file():
        found.append("tacos")
    if (root / "json_files").is_dir() or any(root.glob("*.json")):
        found.append("wavcaps")
    return found


def discover(data_dir: str | Path, split: str) -> list[Example]:
    """Load every dataset found in `data_dir` or its immediate subfolders for `split`.

    Recognises Clotho (`clotho_captions_*.csv`), AudioCaps (`train/val/test.csv` with audiocap_id),
    TACOS (`annotations_weak.csv` / `annotations_strong.csv`) and WavCaps (`json_files/` or `*.json`).
    WavCaps has no splits and only feeds "train"; TACOS has no validation split.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: data folder not found")
    canonical = canonical_split(split)
    subdirs = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    candidates = [data_dir, *subdirs]
    accepted: dict[str, list[Path]] = {}
    examples: list[Example] = []
    # An exclusion list beside the dataset folders applies to all of them.
    shared_exclusion = _exclusion_ids(data_dir, None)
    for root in candidates:
        for fmt in _detect(root):
            if any(root.is_relative_to(prev) and root != prev for prev in accepted.get(fmt, [])):
                continue
            if fmt == "wavcaps":
                # A folder holding only non-WavCaps JSON is not a WavCaps folder.
                try:
                    excluded = shared_exclusion | _exclusion_ids(root, None)
                    loaded = load_wavcaps(root, excluded) if canonical == "train" else []
                except DatasetError as exc:
                    if "no WavCaps JSON" in str(exc):
                        continue
                    raise
            elif fmt == "clotho":
                csv_name = f"clotho_captions_{_CLOTHO_SPLITS[canonical]}.csv"
                loaded = load_clotho(root, canonical) if (root / csv_name).is_file() else []
            elif fmt == "audiocaps":
                loaded = load_audiocaps(root, canonical) if _audiocaps_csv(root, canonical) else []
            else:
                loaded = load_tacos(root, canonical, exclude_ids=shared_exclusion | _exclusion_ids(root, None))
            accepted.setdefault(fmt, []).append(root)
            log.info("%s: %s, %d %s examples", root, fmt, len(loaded), canonical)
            examples.extend(loaded)
    if not accepted:
        raise DatasetError(
            f"{data_dir}: no known dataset layout found (looked for clotho_captions_<split>.csv, AudioCaps "
            "train/val/test.csv, WavCaps JSON files and TACOS annotations_*.csv)"
        )
    if not examples:
        found = ", ".join(f"{fmt} in {', '.join(map(str, roots))}" for fmt, roots in accepted.items())
        raise DatasetError(f"{data_dir}: no examples for split {split!r} (found {found})")
    return examples


def load_split(data_dirs: Sequence[str | os.PathLike], split: str) -> list[Example]:
    """Every example of `split` in every data folder (any mix of the supported formats)."""
    examples: list[Example] = []
    for folder in data_dirs:
        examples.extend(discover(Path(folder), split))
    return examples
