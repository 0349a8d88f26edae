"""Local task files (CSV, JSONL, parquet) read and checked before any tokenisation or model load.

Every problem ends the command with one line naming the file and, where it helps, the
line (CSV, JSONL) or row (parquet) and the column, e.g. ``data.csv line 7: 3 fields, header
has 2``. Bad rows are refused, never dropped: numbers from the part of a file that happened
to parse would describe a task nobody asked for. The rules, checked by a property-based
fuzzer (``tests/test_task_files_fuzz.py``):

* Text is a non-blank string; a label is non-blank. A generation file (``task_type: generation``) has a
  source and a target text column instead (``source_column``, ``target_column``), both non-blank strings. A label that reads as a finite number is
  that number (``1``, ``1.0``, ``1e0`` and ``" 1 "`` are one class); anything else is text, as written.
* Labels that differ only by surrounding whitespace or by case (``pos``, ``pos ``, ``Pos``) are
  refused, naming both lines: which spelling is meant is the author's call, not a guess.
* Duplicates (:mod:`propetl.data`): without a split column a text (or pair) is kept once, and
  not at all when it carries two labels; with one, a text stays only in the last split that
  holds it. ``provenance.json`` records how many rows that dropped (``rows.duplicates_dropped``)
  beside the file's rows and each split's; the log says it too.
* Every split (train, validation, test) keeps at least ``MIN_SPLIT_ROWS`` rows after that:
  a file without a split column needs 15 distinct texts (10% each for validation and test).
* Every class keeps at least one row in train (for the seeded split: with that ``data_seed``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import TASK_TYPES, check_allowed
from .runs import TASK_FILE_SUFFIXES as FILE_SUFFIXES

SPLITS = ("train", "validation", "test")
MIN_SPLIT_ROWS = 2  # a correlation needs two points; one row scores nothing worth selecting a checkpoint on
LINE = "_line"  # where each row came from, for messages


class TaskFileError(ValueError):
    """A task file that cannot be trained on; the message is one line naming the file."""


@dataclass(frozen=True)
class TaskTable:
    """A checked task file: its rows (text columns, label, optional split) and what its labels are."""

    frame: pd.DataFrame
    task_type: str
    label_names: tuple[str, ...]  # classification: the classes, in sorted order; regression: ()


def read_rows(path: str | Path, text_columns: Sequence[str], label_column: str | None, encoding: str = "utf-8",
              require_text: bool = True) -> tuple[pd.DataFrame, str]:
    """The rows of a table file, each with a label (and, with ``require_text``, text), and the unit of its positions.

    The checks every table needs, whatever its labels mean. A local GLUE copy passes
    ``require_text=False``: it must read like the hub's, which keeps GLUE's few empty texts.
    A generation file has no label column (None): its target is a text column.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise TaskFileError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise TaskFileError(f"{name}: the file is empty")
    readers = {".csv": _read_csv, ".jsonl": _read_jsonl, ".parquet": _read_parquet}
    if path.suffix not in readers:
        raise TaskFileError(f"{name}: unsupported file type {path.suffix!r}; expected .csv, .jsonl or .parquet")
    frame, unit = readers[path.suffix](path, encoding)
    if frame.empty:
        raise TaskFileError(f"{name}: no rows")
    wanted = (*text_columns, *([label_column] if label_column is not None else []))
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        asked = f"text_columns={list(text_columns)}, label_column={label_column!r}" if label_column is not None else \
            f"source_column={text_columns[0]!r}, target_column={text_columns[1]!r}"
        raise TaskFileError(f"{name}: columns {missing} not found; the file has {[c for c in frame.columns if c != LINE]} ({asked})")
    where = lambda row: f"{name} {unit} {row[LINE]}"  # noqa: E731
    for column in text_columns if require_text else ():
        bad = frame[frame[column].map(lambda v: not isinstance(v, str) or _is_blank(v))]
        if not bad.empty:
            value = bad[column].iloc[0]
            problem = (f"empty or missing text in column {column!r}" if _is_blank(value)
                       else f"{value!r} in column {column!r} is a {type(value).__name__}, not text")
            raise TaskFileError(f"{where(bad.iloc[0])}: {problem}"
                                + (f" ({len(bad) - 1} more rows like it)" if len(bad) > 1 else ""))
    unlabelled = frame[frame[label_column].map(_is_blank)] if label_column is not None else frame.iloc[:0]
    if not unlabelled.empty:
        raise TaskFileError(f"{where(unlabelled.iloc[0])}: no label in column {label_column!r}")
    return frame, unit


def read_task_file(path: str | Path, text_columns: Sequence[str] = ("text",), label_column: str = "label",
                   task_type: str | None = None, encoding: str = "utf-8") -> TaskTable:
    """Read and check a task file; raises :class:`TaskFileError` on the first problem found."""
    if task_type is not None:
        check_allowed("task_type", task_type, TASK_TYPES)
    frame, unit = read_rows(path, text_columns, label_column, encoding)
    name = Path(path).name
    where = lambda row: f"{name} {unit} {row[LINE]}"  # noqa: E731
    labels = frame[label_column].map(_as_label)
    kinds = labels.map(lambda v: "number" if isinstance(v, numbers.Number) else "text")
    if kinds.nunique() > 1:
        text_row, number_row = frame[kinds == "text"].iloc[0], frame[kinds == "number"].iloc[0]
        raise TaskFileError(f"{where(text_row)}: label {text_row[label_column]!r} is text but {unit} {number_row[LINE]} has "
                            f"the number {number_row[label_column]!r}; a label column holds one type")
    task_type = task_type or _infer_task_type(name, label_column, labels)
    if task_type == "regression" and kinds.iloc[0] == "text":
        raise TaskFileError(f"{where(frame.iloc[0])}: label {frame[label_column].iloc[0]!r} is not a number (task_type regression)")
    frame = frame.assign(**{label_column: labels})
    if kinds.iloc[0] == "text":
        _check_spellings(name, unit, frame, label_column)
    if "split" in frame.columns:
        _check_splits(name, unit, frame, label_column, task_type)
    label_names = () if task_type == "regression" else tuple(str(v) for v in sorted(labels.unique()))
    if task_type == "classification" and len(label_names) < 2:
        raise TaskFileError(f"{name}: column {label_column!r} has one class ({label_names[0]!r}); a classifier needs at "
                            f"least two (task_type regression for a score)")
    return TaskTable(frame=frame, task_type=task_type, label_names=label_names)


def read_generation_file(path: str | Path, source_column: str = "source", target_column: str = "target",
                         encoding: str = "utf-8") -> TaskTable:
    """Read and check a generation file: every row a non-blank source and target text (a split column as for classification)."""
    frame, unit = read_rows(path, (source_column, target_column), None, encoding)
    if "split" in frame.columns:
        _check_splits(Path(path).name, unit, frame, target_column, "generation")
    return TaskTable(frame=frame, task_type="generation", label_names=())


def _is_blank(value) -> bool:
    """Missing (None, NaN) or a string of whitespace only."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (pd.api.types.is_scalar(value) and pd.isna(value))


def _as_label(value):
    """A label as a finite number when it reads as one (CSV cells are text; ``2.0`` is ``2``), else as text."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return str(value)
    if not math.isfinite(number):  # "nan", "inf" or JSON's Infinity: a word, or a score nothing can learn
        return str(value)
    return int(number) if number.is_integer() else number


def _check_spellings(name: str, unit: str, frame: pd.DataFrame, label_column: str) -> None:
    """Refuse one class spelt two ways (``pos`` / ``pos `` / ``Pos``): spreadsheets leave such twins, and
    training them as separate classes would be silently wrong, merging them a guess."""
    seen: dict[str, tuple[str, int]] = {}
    for label, line in frame.drop_duplicates(label_column)[[label_column, LINE]].itertuples(index=False):
        key = label.strip().casefold()
        if key in seen:
            other, other_line = seen[key]
            how = "by surrounding whitespace" if label.strip() == other.strip() else "in case"
            raise TaskFileError(f"{name} {unit} {line}: label {label!r} differs from {other!r} ({unit} {other_line}) "
                                f"only {how}; spell each class one way")
        seen[key] = (label, line)


def _infer_task_type(name: str, column: str, labels: pd.Series) -> str:
    """Text labels are classes, non-integer numbers scores, two integers classes; anything else must be said."""
    values = labels.unique()
    if isinstance(values[0], str):
        return "classification"
    if any(not float(v).is_integer() for v in values):
        return "regression"
    if len(values) <= 2:
        return "classification"
    shown = ", ".join(map(str, sorted(values)[:5])) + (", ..." if len(values) > 5 else "")
    raise TaskFileError(f"{name}: labels in column {column!r} are {len(values)} integers ({shown}): classes or scores? "
                        f"set the task option task_type to classification or regression")


def _check_splits(name: str, unit: str, frame: pd.DataFrame, label_column: str, task_type: str) -> None:
    splits = frame["split"].map(str)
    unknown = frame[~splits.isin(SPLITS)]
    if not unknown.empty:
        raise TaskFileError(f"{name} {unit} {unknown[LINE].iloc[0]}: unknown values {sorted(set(splits[~splits.isin(SPLITS)]))} "
                            f"in column 'split'; expected {', '.join(SPLITS)}")
    for split in SPLITS:
        if not (splits == split).any():
            raise TaskFileError(f"{name}: split {split!r} has no rows; a split column needs train, validation and test rows")
    if task_type == "classification":
        seen = set(frame.loc[splits == "train", label_column])
        unseen = frame[(splits != "train") & ~frame[label_column].isin(seen)]
        if not unseen.empty:
            row = unseen.iloc[0]
            raise TaskFileError(f"{name} {unit} {row[LINE]}: label {row[label_column]!r} in the {row['split']} split "
                                f"never occurs in train")


def _decode(path: Path, encoding: str) -> str:
    """A text file's contents less a byte-order mark (UTF-8's, or the one a spreadsheet's UTF-16 "Unicode text"
    starts with), which must not become part of a column name."""
    try:
        return path.read_bytes().decode(encoding).removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise TaskFileError(f"{path.name}: not {encoding} text (byte {error.object[error.start]:#04x} at offset "
                            f"{error.start}); pass the file's encoding as the task option encoding, e.g. latin-1") from None
    except LookupError:
        raise TaskFileError(f"encoding={encoding!r} is not an encoding Python knows") from None


def _read_csv(path: Path, encoding: str) -> tuple[pd.DataFrame, str]:
    text = _decode(path, encoding)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise TaskFileError(f"{path.name}: no header") from None
    except csv.Error as error:
        raise TaskFileError(f"{path.name} line 1: {error}") from None
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise TaskFileError(f"{path.name}: duplicate column names {duplicates}")
    rows, lines = [], []
    try:
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise TaskFileError(f"{path.name} line {reader.line_num}: {len(row)} fields, header has {len(header)}")
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as error:
        raise TaskFileError(f"{path.name} line {reader.line_num}: {error}") from None
    return pd.DataFrame(rows, columns=header, dtype=object).assign(**{LINE: lines}), "line"


def _read_jsonl(path: Path, encoding: str) -> tuple[pd.DataFrame, str]:
    records, lines = [], []
    # "\n" only: str.splitlines also breaks at U+2028 and other separators JSON strings may hold
    for number, line in enumerate(_decode(path, encoding).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise TaskFileError(f"{path.name} line {number}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(record, dict):
            raise TaskFileError(f"{path.name} line {number}: a JSON object per line expected, got {type(record).__name__}")
        records.append(record)
        lines.append(number)
    return pd.DataFrame.from_records(records).assign(**{LINE: lines}), "line"


def _read_parquet(path: Path, encoding: str) -> tuple[pd.DataFrame, str]:
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TaskFileError(f"{path.name}: not a readable parquet file ({reason})") from None
    duplicates = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if duplicates:
        raise TaskFileError(f"{path.name}: duplicate column names {duplicates}")
    return frame.reset_index(drop=True).assign(**{LINE: range(1, len(frame) + 1)}), "row"
