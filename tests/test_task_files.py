"""Local task files: every malformed file is refused before tokenisation, in one line naming file, line and column."""

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from propetl.cli import main
from propetl.data import get_task_spec, load_task, split_sizes
from propetl.task_files import read_task_file

GOOD = "text,label\n" + "".join(f"review {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20))
FIVE_ROWS = "text,label\n" + "".join(f"review {i},{'pos' if i % 2 else 'neg'}\n" for i in range(5))
TWO_TEXTS_60_ROWS = "text,label\n" + "".join(f"review {i % 2},{'pos' if i % 2 else 'neg'}\n" for i in range(60))


def _write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


GENERATION = "".join(json.dumps({"source": f"s {i}", "target": f"t {i}"}) + "\n" for i in range(20))
GENERATE = {"task_type": "generation"}
CASES = {
    # case: (file name, content, task options, what the one line must say)
    "empty file": ("data.csv", "", {}, r"^data\.csv: the file is empty$"),
    "header only": ("data.csv", "text,label\n", {}, r"^data\.csv: no rows$"),
    "missing columns": ("data.csv", "review,stars\ngood,5\n", {}, r"columns \['text', 'label'\] not found; the file has \['review', 'stars'\]"),
    "not utf-8": ("data.csv", "text,label\ncaf\xe9 au lait,pos\nbad,neg\n".encode("latin-1"), {},
                  r"^data\.csv: not utf-8 text \(byte 0xe9 at offset 14\); pass the file's encoding as the task option encoding"),
    "ragged row": ("data.csv", GOOD + "one,two,three\n", {}, r"^data\.csv line 22: 3 fields, header has 2$"),
    "duplicate columns": ("data.csv", "text,text,label\na,b,pos\n", {}, r"^data\.csv: duplicate column names \['text'\]$"),
    "broken json line": ("data.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b", "label": nul}\n', {},
                         r"^data\.jsonl line 2: not valid JSON \(Expecting value at column 24\)$"),
    "json array line": ("data.jsonl", '{"text": "a", "label": "pos"}\n["b", "neg"]\n', {}, r"^data\.jsonl line 2: a JSON object per line expected, got list$"),
    "empty text": ("data.csv", GOOD + " ,pos\n,neg\n", {}, r"^data\.csv line 22: empty or missing text in column 'text' \(1 more rows like it\)$"),
    "missing text field": ("data.jsonl", '{"text": "a", "label": "pos"}\n{"label": "neg"}\n', {}, r"^data\.jsonl line 2: empty or missing text in column 'text'$"),
    "missing label": ("data.csv", GOOD + "review x,\n", {}, r"^data\.csv line 22: no label in column 'label'$"),
    "one class": ("data.csv", "text,label\na,pos\nb,pos\n", {}, r"^data\.csv: column 'label' has one class \('pos'\); a classifier needs at least two"),
    "mixed label types": ("data.csv", "text,label\na,pos\nb,1\nc,neg\n", {}, r"^data\.csv line 2: label 'pos' is text but line 3 has the number '1'; a label column holds one type$"),
    "integer labels, type unsaid": ("data.csv", "text,label\na,1\nb,2\nc,3\n", {}, r"^data\.csv: labels in column 'label' are 3 integers \(1, 2, 3\): classes or scores\? set the task option task_type"),
    "text labels as regression": ("data.csv", GOOD, {"task_type": "regression"}, r"^data\.csv line 2: label 'neg' is not a number \(task_type regression\)$"),
    "unknown split": ("data.csv", "text,label,split\na,pos,train\nb,neg,dev\n", {}, r"^data\.csv line 3: unknown values \['dev'\] in column 'split'"),
    "empty split": ("data.csv", "text,label,split\na,pos,train\nb,neg,train\nc,neg,test\n", {}, r"^data\.csv: split 'validation' has no rows"),
    "label unseen in train": ("data.csv", "text,label,split\na,pos,train\nb,neg,train\nc,neg,validation\nd,meh,test\n", {},
                              r"^data\.csv line 5: label 'meh' in the test split never occurs in train$"),
    "corrupt parquet": ("data.parquet", b"PAR1 this is not parquet PAR1", {}, r"^data\.parquet: not a readable parquet file"),
    "unknown task type": ("data.csv", GOOD, {"task_type": "ranking"}, r"task_type='ranking' is not supported; allowed: classification, regression"),
    # issue #21: these trained into an IndexError from inside datasets, or as three classes
    "too few rows for the splits": ("data.csv", FIVE_ROWS, {}, r"^data\.csv: 5 rows give train 5, validation 0, test 0 "
                                    r"\(10% each of 5 distinct texts for validation and test\); every split needs at least 2 rows$"),
    "duplicates collapse the splits": ("data.csv", TWO_TEXTS_60_ROWS, {}, r"^data\.csv: 60 rows give train 2, validation 0, "
                                       r"test 0 \(10% each of 2 distinct texts for validation and test, after dropping 58 "
                                       r"duplicate rows\); every split needs at least 2 rows$"),
    "label with a trailing space": ("data.csv", GOOD + "review x,pos \n", {},
                                    r"^data\.csv line 22: label 'pos ' differs from 'pos' \(line 3\) only by surrounding whitespace; spell each class one way$"),
    # found by the fuzzer (test_task_files_fuzz.py)
    "label in another case": ("data.csv", GOOD + "review x,Neg\n", {}, r"^data\.csv line 22: label 'Neg' differs from 'neg' \(line 2\) only in case"),
    "blank label": ("data.csv", GOOD + "review x,\t\n", {}, r"^data\.csv line 22: no label in column 'label'$"),
    "number as text": ("data.jsonl", '{"text": "a", "label": "pos"}\n{"text": 5, "label": "neg"}\n', {},
                       r"^data\.jsonl line 2: 5 in column 'text' is a int, not text$"),
    "a split of one row": ("data.csv", "text,label,split\n" + "".join(f"t{i},{i % 2},{s}\n" for i, s in enumerate(["train"] * 4 + ["validation"] * 2 + ["test"])),
                           {}, r"^data\.csv: 7 rows give train 4, validation 2, test 1 \(its split column\); every split needs at least 2 rows$"),
    "a split emptied by texts a later split holds": (
        "data.csv", "text,label,split\n" + "".join(f"t{i},{i % 2},{s}\n" for i, s in enumerate(["train"] * 4 + ["validation"] * 2 + ["test"] * 2))
        + "t4,0,test\nt5,1,test\n", {}, r"^data\.csv: 10 rows give train 4, validation 0, test 4 \(its split column, after dropping 2 duplicate rows\)"),
    # generation files (task_type generation): source and target texts
    "generation: empty target": ("data.jsonl", GENERATION + '{"source": "x", "target": " "}\n', GENERATE,
                                 r"^data\.jsonl line 21: empty or missing text in column 'target'$"),
    "generation: missing target column": ("data.csv", "source,summary\na,b\n", GENERATE,
                                          r"^data\.csv: columns \['target'\] not found; the file has \['source', 'summary'\] "
                                          r"\(source_column='source', target_column='target'\)$"),
    "generation: renamed columns missing": ("data.csv", "source,target\na,b\n", {**GENERATE, "source_column": "document"},
                                            r"columns \['document'\] not found"),
    "generation: not utf-8": ("data.csv", "source,target\ncaf\xe9,b\n".encode("latin-1"), GENERATE, r"^data\.csv: not utf-8 text \(byte 0xe9"),
    "generation: number as target": ("data.jsonl", GENERATION + '{"source": "x", "target": 5}\n', GENERATE,
                                     r"^data\.jsonl line 21: 5 in column 'target' is a int, not text$"),
    "generation: unknown split": ("data.csv", "source,target,split\na,b,train\nc,d,dev\n", GENERATE,
                                  r"^data\.csv line 3: unknown values \['dev'\] in column 'split'"),
    "generation: too few rows": ("data.jsonl", GENERATION[: GENERATION.index('{"source": "s 10"')], GENERATE,
                                 r"^data\.jsonl: 10 rows give train 8, validation 1, test 1"),
    "source column without generation": ("data.csv", GOOD, {"source_column": "text"}, r"source_column / target_column apply to generation files"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_malformed_task_file_is_refused_in_one_line(case, tmp_path):
    name, content, options, message = CASES[case]
    path = _write(tmp_path, name, content)
    with pytest.raises(ValueError) as error:
        get_task_spec(str(path), **options)
    assert re.search(message, str(error.value)), str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_file_is_named_as_missing(tmp_path):
    with pytest.raises(ValueError, match=r"nothere\.csv: no such file"):
        get_task_spec(str(tmp_path / "nothere.csv"))


def test_the_encoding_option_reads_a_latin_1_file(tmp_path):
    path = _write(tmp_path, "data.csv", ("text,label\n" + "".join(f"caf\xe9 {i},{i % 2}\n" for i in range(20))).encode("latin-1"))
    dsdict = load_task(str(path), encoding="latin-1")
    assert any("café" in text for text in dsdict["train"]["text_a"])


def test_labels_are_inferred_only_where_they_leave_no_doubt(tmp_path):
    scores = _write(tmp_path, "scores.csv", "text,label\na,0.5\nb,1.25\nc,3\n")
    binary = _write(tmp_path, "binary.csv", "text,label\na,0\nb,1\nc,1\n")
    stars = _write(tmp_path, "stars.csv", "text,label\na,1\nb,2\nc,3\n")
    assert read_task_file(scores).task_type == "regression"
    assert read_task_file(binary).task_type == "classification" and read_task_file(binary).label_names == ("0", "1")
    assert read_task_file(stars, task_type="classification").label_names == ("1", "2", "3")
    assert read_task_file(stars, task_type="regression").label_names == ()


def test_a_well_formed_file_keeps_its_rows_and_labels(tmp_path):
    table = read_task_file(_write(tmp_path, "data.csv", GOOD))
    assert len(table.frame) == 20 and table.label_names == ("neg", "pos") and table.task_type == "classification"
    pd.testing.assert_series_equal(table.frame["_line"], pd.Series(range(2, 22), name="_line"))


def test_the_cli_stops_on_a_bad_file_before_loading_anything(tmp_path):
    path = _write(tmp_path, "data.csv", GOOD + "one,two,three\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "tiny-bert", "--task", str(path), "--method", "adapter", "--out", str(tmp_path / "run")])
    assert str(exit_info.value.code) == "propetl train: error: data.csv line 22: 3 fields, header has 2"
    assert not (tmp_path / "run").exists()


def test_the_cli_stops_on_a_bad_generation_file_before_loading_anything(tmp_path):
    path = _write(tmp_path, "data.jsonl", GENERATION + '{"source": "x", "target": ""}\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "tiny-t5", "--task", str(path), "--task-type", "generation", "--method", "lora",
              "--out", str(tmp_path / "run")])
    assert str(exit_info.value.code) == "propetl train: error: data.jsonl line 21: empty or missing text in column 'target'"
    assert not (tmp_path / "run").exists()


def test_a_generation_file_keeps_its_rows_and_drops_a_source_given_two_targets(tmp_path):
    path = _write(tmp_path, "data.jsonl", GENERATION + '{"source": "s 0", "target": "other"}\n')
    spec = get_task_spec(str(path), task_type="generation")
    assert spec.rows == {"file": 21, "duplicates_dropped": 2, "train": 15, "validation": 2, "test": 2}
    dsdict = load_task(str(path), task_type="generation")
    assert dsdict["train"].column_names == ["source", "target"]
    assert "s 0" not in [source for split in dsdict.values() for source in split["source"]]


def test_a_local_glue_copy_is_checked_like_a_task_file(tmp_path):
    glue = Path(__file__).parent / "fixtures" / "glue"
    shutil.copytree(glue, tmp_path / "glue")
    train = tmp_path / "glue" / "rte" / "train.jsonl"
    lines = train.read_text().splitlines()
    train.write_text("\n".join([lines[0], lines[1][:-3], *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"^train\.jsonl line 2: not valid JSON"):
        load_task("glue-rte", glue_dir=tmp_path / "glue")


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path):
    path = _write(tmp_path, "data.csv", "\ufeff" + GOOD)
    assert read_task_file(path).label_names == ("neg", "pos")
    lines = "".join(f'{{"text": "review {i}", "label": "{"pos" if i % 2 else "neg"}"}}\n' for i in range(4))
    assert read_task_file(_write(tmp_path, "data.jsonl", "\ufeff" + lines)).label_names == ("neg", "pos")


def test_a_utf_16_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path):
    """Found by the fuzzer: a spreadsheet's "Unicode text" (UTF-16 LE with a BOM), read with encoding utf-16-le."""
    path = _write(tmp_path, "data.csv", ("\ufeff" + GOOD).encode("utf-16-le"))
    assert read_task_file(path, encoding="utf-16-le").label_names == ("neg", "pos")
    path = _write(tmp_path, "data.jsonl", ("\ufeff" + GENERATION).encode("utf-16-le"))
    assert get_task_spec(str(path), encoding="utf-16-le", **GENERATE).rows["file"] == 20


def test_an_unknown_encoding_is_named_for_every_text_format(tmp_path):
    for name in ("data.csv", "data.jsonl"):
        with pytest.raises(ValueError, match=r"^encoding='klingon' is not an encoding Python knows$"):
            read_task_file(_write(tmp_path, name, GOOD), encoding="klingon")


def test_a_class_the_seeded_split_keeps_out_of_train_is_refused_naming_the_seed(tmp_path):
    path = _write(tmp_path, "data.csv", GOOD + "review 20,meh\n")
    assert split_sizes(load_task(str(path), data_seed=0))["train"] == 17  # 'meh' in train: fine
    with pytest.raises(ValueError, match=r"^data\.csv: label 'meh' has no row in train \(1 in validation with data_seed 1\); "
                                         r"every class needs one there$"):
        load_task(str(path), data_seed=1)


def test_a_jsonl_text_may_hold_any_line_separator_json_allows(tmp_path):
    """U+2028 and U+0085 are line breaks to str.splitlines, not to JSON (json.dumps(ensure_ascii=False) leaves them raw)."""
    lines = "".join(f'{{"text": "review\u2028{i}\x85", "label": "{"pos" if i % 2 else "neg"}"}}\n' for i in range(20))
    table = read_task_file(_write(tmp_path, "data.jsonl", lines))
    assert len(table.frame) == 20 and table.frame["text"].iloc[3] == "review\u20283\x85"


def test_a_class_spelt_as_several_numbers_is_one_class(tmp_path):
    spellings = [0, 1, 1.0, "0 ", " 1.0"]
    lines = "".join(json.dumps({"text": f"review {i}", "label": spellings[i % 5]}) + "\n" for i in range(20))
    path = _write(tmp_path, "data.jsonl", lines)
    assert read_task_file(path).label_names == ("0", "1")
    assert sum(split_sizes(load_task(str(path))).values()) == 20


def test_the_row_counts_say_how_many_duplicates_were_dropped(tmp_path):
    rows = GOOD + "review 0,neg\nreview 1,pos\nreview 2,pos\n"  # two repeats, and 'review 2' now has two labels
    spec = get_task_spec(str(_write(tmp_path, "data.csv", rows)))
    assert spec.rows == {"file": 23, "duplicates_dropped": 4, "train": 15, "validation": 2, "test": 2}
