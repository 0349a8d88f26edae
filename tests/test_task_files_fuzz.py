"""Task files under a fuzzer: every file trains on exactly the rows it holds, or is refused in one line naming it.

The generator writes CSV, JSONL and parquet files for classification and regression (single
texts and pairs) and for generation (a source and a target text, under the default or given
column names), with or without a ``split`` column: valid ones with quoted newlines and commas,
a byte-order mark, CRLF, UTF-16 read with the ``encoding`` option, unicode (U+2028 too), long
texts, repeated rows, labels spelt as numbers several ways and a text given two labels (a
source given two targets: dropped); ones with a defect, each of which must be refused (a blank,
null or missing cell, a renamed column, a number as text or target, the wrong encoding, a
ragged row, too few rows, repeats or sources with two targets that leave a split too small,
...); and valid ones cut short, which train on the rows before the cut or are refused.
The default run takes the seeded CI profile (a few hundred examples, well under a minute);
``pytest -m fuzz`` runs the nightly one, thousands of fresh examples.

Every failure the fuzzer found is a named test in ``test_task_files.py``.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from propetl.cli import main
from propetl.data import get_task_spec, load_task
from propetl.task_files import MIN_SPLIT_ROWS, SPLITS

ROOT = Path(__file__).resolve().parents[1]
CI = settings(max_examples=500, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NIGHTLY = settings(CI, max_examples=5000, derandomize=False)

def _reads_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# text that CSV must quote and JSON must escape, and unicode beyond the basic plane; no NUL (it joins pairs)
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00") | st.sampled_from(',"\n\r\u2028\t\ufeff é'),
               max_size=30)
WORD_LABELS = st.lists(st.text(st.characters(categories=("L", "N", "P", "Zs")), min_size=1, max_size=8)
                       .filter(lambda s: s == s.strip() and not _reads_as_number(s)),
                       min_size=2, max_size=3, unique_by=str.casefold)


MISSING = object()  # a cell left out: a JSONL key not written, an empty CSV cell, a parquet null

GENERATION_COLUMNS = [("source", "target"), ("document", "summary")]  # the defaults, and names given as options


@dataclass(frozen=True)
class Row:
    key: int  # rows with one key hold the same text(s)
    texts: tuple[str, ...]  # a generation file's: its source
    label: object  # as written to the file; a generation file's: its target text
    split: str | None = None


@dataclass(frozen=True)
class Case:
    """A task file to write, the task options to read it with, and what must come of it."""

    fmt: str
    columns: tuple[str, ...]  # text columns (or source), then the label (or target) column, then "split" where rows say where
    rows: tuple[Row, ...]
    options: dict = field(default_factory=dict)
    classes: tuple[str, ...] = ()  # the label names a classifier must end up with; () for regression and generation
    refusal: str | None = None  # a valid file trains; a defect must be refused with a message holding this
    exact: bool = True  # whether an accepted file must hold exactly ``rows`` (False: truncated, so fewer)
    bom: bool = False
    newline: str = "\n"
    encoding: str = "utf-8"
    truncate_at: float | None = None  # a fraction of the file's bytes
    ragged: bool = False
    quote_all: bool = False

    @property
    def generation(self) -> bool:
        return self.options.get("task_type") == "generation"

    @property
    def regression(self) -> bool:
        return not self.classes and not self.generation

    @property
    def kind(self) -> str:
        return "generation" if self.generation else "regression" if self.regression else "classification"

    @property
    def label_column(self) -> str:
        return self.columns[len(self.rows[0].texts)]

    @property
    def with_split(self) -> bool:
        return self.columns[-1] == "split"


# ---------------------------------------------------------------- valid files


def _another_target(row: Row) -> str:
    """A target that differs from the row's however it is stripped: its source now has two targets."""
    return f"{row.label} (or so)"


@st.composite
def valid_cases(draw) -> Case:
    """A file that satisfies every rule: at least 15 distinct texts (or 2 per given split), classes dealt in turn,
    or (generation) a target text per source."""
    fmt = draw(st.sampled_from(["csv", "jsonl", "parquet"]))
    kind = draw(st.sampled_from(["classification", "regression", "generation"]))
    regression, generation = kind == "regression", kind == "generation"
    pair = not generation and draw(st.booleans())
    with_split = draw(st.booleans())
    if with_split:
        splits = [s for s, low, high in (("train", 3, 20), ("validation", 2, 6), ("test", 2, 6))
                  for _ in range(draw(st.integers(low, high)))]
    else:
        splits = [None] * draw(st.integers(15, 60))
    long = draw(st.sets(st.integers(0, len(splits) - 1), max_size=2))
    if generation:  # any text, never blank; distinct sources may share a target
        labels = [draw(TEXT) * (200 if i in long else 1) + draw(st.sampled_from(".!é")) + draw(TEXT) for i in range(len(splits))]
        classes = ()
        source_column, target_column = draw(st.sampled_from(GENERATION_COLUMNS))
        options = {"task_type": "generation"}
        if (source_column, target_column) != GENERATION_COLUMNS[0] or draw(st.booleans()):
            options |= {"source_column": source_column, "target_column": target_column}
    elif regression:
        numbers = draw(st.lists(st.floats(-5, 5, allow_nan=False), min_size=len(splits), max_size=len(splits)))
        labels = [x + 0.5 if x.is_integer() else x for x in numbers]  # never all integers: inferred as scores
        classes, options = (), {"task_type": "regression"} if draw(st.booleans()) else {}
    else:
        names = draw(st.sampled_from(["words", "integers"]))
        if names == "integers":  # 0/1 written as 1, 1.0, " 1" or "1.0": one class however spelt
            classes = ("0", "1")
            spellings = st.sampled_from([int, float, str, lambda v: f" {v} ", lambda v: f"{v}.0"])
            one = draw(spellings)  # a parquet column holds one type

            def spell(i: int):
                return (one if fmt == "parquet" else draw(spellings))(i % 2)
        else:
            classes = tuple(sorted(draw(WORD_LABELS)))

            def spell(i: int):
                return classes[i % len(classes)]
        labels = [spell(i) for i in range(len(splits))]
        options = {}
    rows = []
    for i, (split, label) in enumerate(zip(splits, labels)):
        texts = tuple(draw(TEXT) * (200 if i in long else 1) + f"#{i}" for _ in range(2 if pair else 1))
        rows.append(Row(i, texts, label, split))
    for original in draw(st.lists(st.sampled_from(rows), max_size=5)):  # repeated rows, merged or kept by the rules
        rows.insert(draw(st.integers(0, len(rows))), original)
    if not with_split and len(splits) >= 24 and draw(st.booleans()):  # a text with two labels: dropped, 23 remain
        original = draw(st.sampled_from(rows))
        other = original.label + 1 if regression else _another_target(original) if generation else spell(original.key + 1)
        rows.insert(draw(st.integers(0, len(rows))), replace(original, label=other))
    if generation:
        text_columns, label_column = (source_column,), target_column
    else:
        text_columns = ("premise", "hypothesis") if pair else ("text",)
        if pair or draw(st.booleans()):
            options["text_columns"] = list(text_columns)
        label_column = draw(st.sampled_from(["label", "score" if regression else "sentiment"]))
        if label_column != "label":
            options["label_column"] = label_column
    columns = (*text_columns, label_column, *(["split"] if with_split else []))
    encoding = "utf-8" if fmt == "parquet" else draw(st.sampled_from(["utf-8", "utf-8", "utf-16-le"]))  # a spreadsheet's
    if encoding != "utf-8":  # "Unicode text", read with the task option encoding
        options["encoding"] = encoding
    return Case(fmt, columns, tuple(rows), options, classes, encoding=encoding,
                bom=fmt != "parquet" and draw(st.booleans()),
                newline=draw(st.sampled_from(["\n", "\r\n"])) if fmt != "parquet" else "\n",
                quote_all=draw(st.booleans()))


# ---------------------------------------------------------------- defects


def _with(case: Case, index: int, **change) -> Case:
    rows = list(case.rows)
    rows[index] = replace(rows[index], **change)
    return replace(case, rows=tuple(rows))


def _spelt_apart(label: str, draw) -> str:
    """The label with a space or tab around it, or in another case (as Unicode case folding sees it)."""
    cased = [v for v in (label.upper(), label.lower(), label.swapcase()) if v != label and v.casefold() == label.casefold()]
    return draw(st.sampled_from([f"{label} ", f" {label}", f"{label}\t", *cased]))


@st.composite
def defective_cases(draw) -> Case:
    """A valid file given one defect that no run may train on, and the words its refusal must hold."""
    case = draw(valid_cases())
    rows, has_split = case.rows, case.with_split
    words = bool(case.classes) and not _reads_as_number(rows[0].label)
    defects = ["too few rows", "duplicates collapse the splits", "null cell", "blank cell", "column renamed"]
    defects += ["unknown split"] if has_split else []
    defects += ["wrong encoding"] if case.fmt != "parquet" and "encoding" not in case.options else []
    defects += ["ragged row"] if case.fmt == "csv" else []
    defects += ["mixed label types"] if case.fmt != "parquet" and not case.generation else []  # pyarrow: one type a column
    defects += ["text is not a string"] if case.fmt == "jsonl" else []
    defects += ["target is not a string"] if case.fmt != "csv" and case.generation else []  # in CSV "5" is a text
    defects += ["sources given two targets collapse the splits"] if case.generation and not has_split else []
    defects += ["label spelt two ways", "one class"] if words else []
    defects += ["label unseen in train"] if words and has_split else []
    defect = draw(st.sampled_from(defects))
    index = draw(st.integers(0, len(rows) - 1))
    if defect == "too few rows":
        if has_split:  # one split of a single row (nothing else repeats its text); train keeps every class
            short = draw(st.sampled_from(SPLITS[1:] if case.classes else SPLITS))
            kept = [r for r in rows if r.split == short][:1]
            rows = tuple(r for r in rows if r.split != short and r.key not in {k.key for k in kept}) + tuple(kept)
        else:
            distinct = sorted({r.key for r in rows})[:draw(st.integers(2, 14))]  # keys 0 and 1: two classes
            rows = tuple(r for r in rows if r.key in distinct)
        return replace(case, rows=rows, refusal=f"every split needs at least {MIN_SPLIT_ROWS} rows")
    if defect == "duplicates collapse the splits":
        if has_split:  # every validation text again in test: validation is left empty
            return replace(case, rows=rows + tuple(replace(r, split="test") for r in rows if r.split == "validation"),
                           refusal="validation 0")
        few = [r for r in rows if r.key in sorted({r.key for r in rows})[:draw(st.integers(2, 14))]]
        many = tuple(few[i % len(few)] for i in range(draw(st.integers(15, 60))))
        return replace(case, rows=many, refusal="duplicate rows); every split needs")
    if defect == "sources given two targets collapse the splits":  # 2 to 14 sources keep one target, the rest two
        consistent = sorted({r.key for r in rows})[:draw(st.integers(2, 14))]
        return replace(case, rows=rows + tuple(replace(r, label=_another_target(r)) for r in rows if r.key not in consistent),
                       refusal="duplicate rows); every split needs")
    if defect in ("null cell", "blank cell"):
        blank = draw(st.sampled_from([None, MISSING])) if defect == "null cell" else draw(st.sampled_from(["", " ", "\t"]))
        string_label = case.fmt != "parquet" or isinstance(rows[0].label, str)  # pyarrow: no "" among numbers
        column = draw(st.sampled_from(["text", *(["label"] if blank is None or string_label else []),
                                       *(["split"] if has_split else [])]))
        if column == "text":
            texts = list(rows[index].texts)
            texts[draw(st.integers(0, len(texts) - 1))] = blank
            return replace(_with(case, index, texts=tuple(texts)), refusal="empty or missing text")
        if column == "label":
            return replace(_with(case, index, label=blank), refusal=f"empty or missing text in column '{case.label_column}'"
                           if case.generation else "no label")
        return replace(_with(case, index, split=blank), refusal="in column 'split'")
    if defect == "column renamed":  # or missing: the file lacks a column the task options name
        renamed = draw(st.integers(0, case.columns.index(case.label_column)))
        columns = tuple(f"{c} " if i == renamed else c for i, c in enumerate(case.columns))
        return replace(case, columns=columns, refusal=f"columns ['{case.columns[renamed]}'] not found")
    if defect == "unknown split":
        return replace(_with(case, index, split=draw(st.sampled_from(["dev", "Train", " test", "valid"]))),
                       refusal="in column 'split'")
    if defect == "wrong encoding":
        texts = (f"café {rows[index].texts[0]}", *rows[index].texts[1:])
        return replace(_with(case, index, texts=texts), encoding=draw(st.sampled_from(["latin-1", "cp1252", "utf-16"])),
                       refusal="not utf-8 text")
    if defect == "ragged row":
        return replace(case, ragged=True, refusal="fields, header has")
    if defect == "mixed label types":
        other = 7 if words else "seven"
        return replace(_with(case, index, label=other), refusal="label")
    if defect == "text is not a string":
        texts = (draw(st.integers() | st.floats(allow_nan=False) | st.booleans()), *rows[index].texts[1:])
        return replace(_with(case, index, texts=texts), refusal=f"in column '{case.columns[0]}' is a")
    if defect == "target is not a string":  # a parquet column holds one type: every target a number there
        number = st.integers() | st.floats(allow_nan=False) | st.booleans()
        rows = (tuple(replace(r, label=i) for i, r in enumerate(rows)) if case.fmt == "parquet"
                else _with(case, index, label=draw(number)).rows)
        return replace(case, rows=rows, refusal=f"in column '{case.label_column}' is a")
    if defect == "label spelt two ways":
        variant = _spelt_apart(rows[index].label, draw)
        return replace(_with(case, index, label=variant), refusal="only")
    if defect == "one class":
        return replace(case, rows=tuple(replace(r, label=rows[0].label) for r in rows), refusal="has one class")
    if defect == "label unseen in train":
        held_out = [i for i, r in enumerate(rows) if r.split != "train"]
        return replace(_with(case, draw(st.sampled_from(held_out)), label="unseen-class"), refusal="never occurs in train")
    raise AssertionError(defect)


@st.composite
def truncated_cases(draw) -> Case:
    """A valid file cut short: refused, or (CSV, JSONL cut at a row's end) trained on the rows before the cut."""
    case = draw(valid_cases())
    return replace(case, truncate_at=draw(st.floats(0.05, 0.999)), exact=False,
                   refusal="not a readable parquet file" if case.fmt == "parquet" else None)


TASK_FILES = valid_cases() | defective_cases() | truncated_cases()


# ---------------------------------------------------------------- writing a case


def write(case: Case, folder: Path) -> Path:
    path = folder / f"task-data.{case.fmt}"
    header = list(case.columns)
    records = [{c: v for c, v in zip(header, [*row.texts, row.label, row.split]) if v is not MISSING} for row in case.rows]
    if case.fmt == "parquet":
        pd.DataFrame(records, columns=header).to_parquet(path)
        data = path.read_bytes()
    else:
        if case.fmt == "csv":
            out = io.StringIO()
            # a lone "\r" must be quoted, which the csv module does only when the line ends in one
            quote_all = case.quote_all or (case.newline == "\n" and any("\r" in str(v) for r in records for v in r.values()))
            writer = csv.writer(out, lineterminator=case.newline, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
            writer.writerows([header, *([("" if record.get(c) is None else record[c]) for c in header] for record in records)])
            text = out.getvalue() + (",".join(["extra"] * (len(header) + 1)) + case.newline if case.ragged else "")
        else:
            text = "".join(json.dumps(r, ensure_ascii=False) + case.newline for r in records)
        data = (("\ufeff" if case.bom else "") + text).encode(case.encoding, errors="replace")
    if case.truncate_at is not None:
        data = data[:max(1, int(len(data) * case.truncate_at))]
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- what must come of it


def label_of(case: Case, row: Row) -> float | str:
    """The label a row must train with: a score, the name of its class (``1.0`` and `` 1`` are class ``1``),
    or its target text, stripped as its source is."""
    if case.generation:
        return row.label.strip()
    return float(row.label) if case.regression else str(row.label).strip().removesuffix(".0")


def expected_rows(case: Case) -> dict[str, int]:
    """The rules' counts: without a split column one row per text, 10% each to validation and test, and a
    text with two labels (a source with two targets) dropped; with one, a text's rows stay only in the last
    split that holds it."""
    if not case.with_split:
        labels = {}
        for row in case.rows:
            labels.setdefault(row.key, set()).add(label_of(case, row))
        kept = sum(len(found) == 1 for found in labels.values())
        held = round(0.1 * kept)
        sizes = {"train": kept - 2 * held, "validation": held, "test": held}
    else:
        last = {}
        for row in case.rows:
            last[row.key] = max(last.get(row.key, 0), SPLITS.index(row.split))
        counts = Counter(r.split for r in case.rows if SPLITS.index(r.split) == last[r.key])
        sizes = {split: counts[split] for split in SPLITS}
    return {"file": len(case.rows), "duplicates_dropped": len(case.rows) - sum(sizes.values()), **sizes}


def _is_one_line_naming(message: str, path: Path) -> bool:
    return "\n" not in message and "Traceback" not in message and message.startswith(path.name)


def check(case: Case) -> None:
    """The property: the file is refused in one line naming it, or its rows are exactly the ones trained on."""
    data_seed = len(case.rows) % 3
    with tempfile.TemporaryDirectory() as folder:
        path = write(case, Path(folder))
        try:
            spec = get_task_spec(str(path), **case.options)
            dsdict = load_task(str(path), data_seed, **case.options)
        except ValueError as error:  # TaskFileError, the one type a task file is refused with
            message = str(error)
            assert _is_one_line_naming(message, path), message
            assert case.refusal is None or case.refusal in message, message
            assert case.refusal is not None or not case.exact, f"a valid file was refused: {message}"
            event(f"{case.kind} {case.fmt}: refused")
            return
    event(f"{case.kind} {case.fmt}: trained{'' if case.exact else ' (truncated)'}")
    assert case.refusal is None, f"a file with a defect was accepted ({case.refusal!r} expected)"
    rows = spec.rows
    sizes = {split: len(dsdict[split]) for split in SPLITS}
    assert sizes == {split: rows[split] for split in SPLITS}
    assert rows["file"] == rows["duplicates_dropped"] + sum(sizes.values())
    assert min(sizes.values()) >= MIN_SPLIT_ROWS
    if spec.task_type == "classification":
        assert set(dsdict["train"]["label"]) == set(range(spec.num_labels))
    if not case.exact:
        assert rows["file"] <= len(case.rows)
        return
    assert rows == expected_rows(case)
    assert spec.label_names == case.classes
    written = {tuple(t.strip() for t in r.texts): label_of(case, r) for r in case.rows}
    for split in SPLITS:
        for row in dsdict[split]:
            answer = row[spec.answer]
            label = (answer if case.generation else pytest.approx(answer, rel=1e-6) if case.regression
                     else spec.label_names[answer])
            assert written[tuple(row[c] for c in spec.columns)] == label


@CI
@given(TASK_FILES)
def test_every_task_file_trains_on_exactly_its_rows_or_is_refused_in_one_line(case):
    check(case)


@pytest.mark.fuzz
def test_every_task_file_trains_on_exactly_its_rows_or_is_refused_in_one_line_nightly(request):
    if "fuzz" not in request.config.option.markexpr:
        pytest.skip("the nightly profile: pytest -m fuzz")
    NIGHTLY(given(TASK_FILES)(check))()


# ---------------------------------------------------------------- end to end: the command line


def test_propetl_train_refuses_a_file_too_small_to_split_in_one_line_without_a_traceback(tmp_path):
    path = tmp_path / "five.csv"
    path.write_text("text,label\n" + "".join(f"review {i},{'pos' if i % 2 else 'neg'}\n" for i in range(5)))
    result = subprocess.run([sys.executable, "-c", "from propetl.cli import main; main()", "train", "--model", "tiny-bert",
                             "--task", str(path), "--method", "adapter", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == ("propetl train: error: five.csv: 5 rows give train 5, validation 0, test 0 (10% each of 5 distinct "
                             "texts for validation and test); every split needs at least 2 rows\n")
    assert not (tmp_path / "run").exists()


def test_propetl_train_refuses_a_class_its_split_keeps_out_of_train_before_tokenising(tmp_path):
    path = tmp_path / "rare.csv"
    path.write_text("text,label\n" + "".join(f"review {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20)) + "review 20,meh\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "tiny-bert", "--task", str(path), "--method", "adapter", "--data-seed", "1",
              "--out", str(tmp_path / "run")])
    assert str(exit_info.value.code) == ("propetl train: error: rare.csv: label 'meh' has no row in train (1 in validation "
                                         "with data_seed 1); every class needs one there")
    assert not (tmp_path / "run" / "data").exists()


def test_propetl_train_records_the_rows_it_trained_on_in_provenance(tmp_path):
    """A spreadsheet's export (BOM, CRLF, quoted commas and newlines) with repeats and one text given two labels."""
    rows = [(f'review {i}, "quoted"\nover two lines', "pos" if i % 2 else "neg") for i in range(30)]
    rows += [rows[0], rows[1], rows[5], (rows[7][0], "neg")]  # three repeats; review 7 is now pos and neg: dropped
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows([("text", "label"), *rows])
    path = tmp_path / "export.csv"
    path.write_bytes(("\ufeff" + out.getvalue()).encode())
    main(["train", "--model", "tiny-bert", "--task", str(path), "--method", "adapter", "--max-steps", "2", "--eval-every", "2",
          "--batch-size", "8", "--threads", "1", "--out", str(tmp_path / "run")])
    data = json.loads((tmp_path / "run" / "provenance.json").read_text())["config"]["data"]
    assert data["rows"] == {"file": 34, "duplicates_dropped": 5, "train": 23, "validation": 3, "test": 3}
    assert data["split_sizes"] == {"train": 23, "validation": 3, "test": 3} and data["label_names"] == ["neg", "pos"]
