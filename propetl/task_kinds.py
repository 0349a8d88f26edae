"""The task seam: what differs between a task answered by a classifier head and one answered in text.

A run's tasks are all of one *kind*, which owns everything that depends on it:

* :data:`CLASSIFIER` (classification and regression tasks): a new sequence-classification head on the
  backbone, targets are class ids or scores, batches padded by ``DataCollatorWithPadding``, metrics
  on the logits (:func:`propetl.metrics.compute_metrics`). This is the code path every committed
  number was computed on, unchanged.
* :data:`GENERATOR` (generation tasks, and classification tasks in ``task_format: text-to-text``):
  the backbone's own language model, frozen with it (a T5 encoder-decoder, or a decoder), so no
  head is trained or stored. A seq2seq model reads the source and learns the target (its labels);
  a decoder reads prompt + target and learns the target tokens only (the prompt's labels are -100).
  Batches are padded by ``DataCollatorForSeq2Seq`` (on the right, as training needs); evaluation
  generates with the KV cache (:meth:`propetl.trainer.PETLTrainer.prediction_step`, a decoder's
  prompts padded on the left there) and scores the decoded texts with rouge-score / sacrebleu
  (:func:`propetl.metrics.generation_metrics`), or, for a text-to-text classification task, maps the
  generated label word back to its class and scores it with the task's own metrics (accuracy =
  exact match of the label word).

Text-to-text classification follows the official T5 preprocessing (``t5.data.preprocessors.glue``,
and ProPETL's ``propetl-t5/data/abstract_task.py:151-156``): the source is the task's name, then each
text field as ``field: text``; the target is the class's label word (``rt-polarity text: a gem``
-> ``fresh``).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import TASK_FORMATS, TrainConfig, check_allowed
from .data import T5Template
from .runs import task_slug

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

    from .data import TaskSpec

IGNORE_INDEX = -100  # labels the loss skips (transformers' convention)


@dataclass
class Scorer:
    """A task's ``compute_metrics``: its kind turns the evaluation loop's output into one value per example (a class
    id, a score or a text), the task's metrics score those. The last call's values stay (``last``), so that a run
    keeps its test predictions for the paired bootstrap (:mod:`propetl.comparison`)."""

    metric_names: list[str]
    examples: Callable[[Any], tuple[Any, Any]]
    last: tuple[Any, Any] | None = None

    def __call__(self, prediction: Any) -> dict[str, float]:
        from .metrics import score

        self.last = self.examples(prediction)
        return score(self.metric_names, *self.last)


@dataclass(frozen=True)
class TaskKind:
    """One kind's answers to every question that differs between kinds; :data:`CLASSIFIER` and :data:`GENERATOR`."""

    name: str

    def request(self, spec: TaskSpec, task_format: str, max_new_tokens: int) -> dict[str, Any]:
        """What the tokenised data depends on beyond task, tokenizer, split and length (part of ``prepared.json``)."""
        return {}

    def tokenize(self, dsdict: DatasetDict, spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_length: int, *,
                 model: str, max_new_tokens: int, task_format: str) -> DatasetDict:
        raise NotImplementedError

    def load_models(self, cfg: TrainConfig, infos: Mapping[str, dict[str, Any]]) -> dict[str, PreTrainedModel]:
        """The model of each task, by slug (several tasks: one body is kept, see ``apply_multitask_petl``)."""
        raise NotImplementedError

    def collator(self, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> Callable[[list[dict]], dict]:
        raise NotImplementedError

    def metrics(self, info: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> Scorer:
        """The Trainer's ``compute_metrics`` for one task."""
        return Scorer(list(info["metrics"]), self.examples(info, tokenizer))

    def examples(self, info: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> Callable[[Any], tuple[Any, Any]]:
        """The evaluation loop's output as (predicted, reference) values per example, as the task's metrics read them."""
        raise NotImplementedError

    def generation_config(self, model: PreTrainedModel, cfg: TrainConfig) -> GenerationConfig | None:
        """How evaluation generates (None: it does not, it reads logits)."""
        return None

    def label_smoothing(self, cfg: TrainConfig) -> float:
        return 0.0


class _Classifier(TaskKind):
    def tokenize(self, dsdict, spec, tokenizer, max_length, *, model, max_new_tokens, task_format):
        from .data import tokenize_task

        return tokenize_task(dsdict, tokenizer, max_length)

    def load_models(self, cfg, infos):
        from .backbones import load_model

        return {slug: load_model(cfg.model, info["num_labels"], regression=info["num_labels"] == 1, seed=cfg.seed)
                for slug, info in infos.items()}

    def collator(self, tokenizer, model):
        from transformers import DataCollatorWithPadding

        return _without_length(DataCollatorWithPadding(tokenizer))

    def examples(self, info, tokenizer):
        def examples(prediction) -> tuple[np.ndarray, np.ndarray]:  # the class of the largest logit, or the score
            logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
            predicted = np.squeeze(logits, -1) if info["num_labels"] == 1 else np.asarray(logits).argmax(axis=-1)
            return predicted, prediction.label_ids  # arrays as the loop gave them: float32 scores stay float32

        return examples


class _Generator(TaskKind):
    def request(self, spec, task_format, max_new_tokens):
        return {"max_new_tokens": max_new_tokens, **({} if spec.is_generation else {"task_format": task_format})}

    def tokenize(self, dsdict, spec, tokenizer, max_length, *, model, max_new_tokens, task_format):
        from .backbones import generator_kind

        lm = generator_kind(model)
        if lm is None:
            raise ValueError(f"{task_slug(spec.name)} is a generation task; model {model!r} is an encoder: give an "
                             f"encoder-decoder (t5) or a decoder")
        if not spec.is_generation:
            dsdict = text_to_text(dsdict, spec, task_format)
        return _tokenize_splits(dsdict, tokenizer, max_length, max_new_tokens, causal=lm == "causal")

    def load_models(self, cfg, infos):
        from .backbones import load_generator

        model = load_generator(cfg.model, seed=cfg.seed)
        return dict.fromkeys(infos, model)  # one language model answers every task: there is no head per task

    def collator(self, tokenizer, model):
        from transformers import DataCollatorForSeq2Seq

        right = copy.copy(tokenizer)
        right.padding_side = "right"  # training positions count from 0; generation re-pads a decoder's prompts on the left
        return _without_length(DataCollatorForSeq2Seq(right, model=model if model.config.is_encoder_decoder else None,
                                                      label_pad_token_id=IGNORE_INDEX))

    def examples(self, info, tokenizer):
        words = [_as_written(tokenizer, name) for name in info["label_names"]] if info.get("task_format") else None

        def examples(prediction) -> tuple[list, list]:  # texts; text-to-text classification: class ids (-1: no label word)
            predicted, references = (_decode(tokenizer, ids) for ids in (prediction.predictions, prediction.label_ids))
            if words is None:
                return predicted, references
            if info["num_labels"] == 1:
                return [_score_of(t) for t in predicted], [_score_of(t) for t in references]
            classes = lambda texts: [words.index(t) if t in words else -1 for t in texts]  # noqa: E731
            return classes(predicted), classes(references)

        return examples

    def generation_config(self, model, cfg):
        generation = copy.deepcopy(model.generation_config)
        generation.update(max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams, do_sample=False, use_cache=True)
        return generation

    def label_smoothing(self, cfg):
        return cfg.label_smoothing


CLASSIFIER = _Classifier("classifier")
GENERATOR = _Generator("generator")
KINDS = {kind.name: kind for kind in (CLASSIFIER, GENERATOR)}


def kind_of(spec: TaskSpec, task_format: str = "classifier") -> TaskKind:
    """A task's kind: generation tasks and text-to-text classification are generated, the rest classified."""
    check_allowed("task_format", task_format, TASK_FORMATS)
    if spec.is_generation:
        return GENERATOR
    return CLASSIFIER if task_format == "classifier" else GENERATOR


def run_kind(infos: Mapping[str, dict[str, Any]]) -> TaskKind:
    """The one kind of a run's prepared tasks (tokenised data from before kinds existed is a classifier's)."""
    kinds = {KINDS[info.get("task_kind", CLASSIFIER.name)] for info in infos.values()}
    if len(kinds) > 1:
        raise ValueError(f"tasks {', '.join(infos)} mix classifier and generated tasks; one network answers all its tasks one way "
                         f"(task_format text-to-text makes classification tasks generated)")
    return kinds.pop()


def text_to_text(dsdict: DatasetDict, spec: TaskSpec, task_format: str = "text-to-text") -> DatasetDict:
    """A classification or regression task as source/target texts: ``{task} {field}: {text} ...`` (or the task's
    official T5 template; ``text-to-text-no-prefix``: without the task name) -> its label word, or its score
    rounded to one decimal as the official STS-B (``propetl-t5/data/tasks.py:399``, ``data/utils.py:20``)."""
    template = spec.template or T5Template(task_slug(spec.name), tuple(f"{field}:" for field in spec.text_fields))
    prefix = task_format == "text-to-text"

    def convert(batch: dict[str, list]) -> dict[str, list]:
        texts = zip(*(batch[column] for column in spec.columns))
        return {"source": [template.source(row, prefix) for row in texts],
                "target": [_score_text(label) if spec.is_regression else spec.label_names[label] for label in batch["label"]]}

    return dsdict.map(convert, batched=True, remove_columns=dsdict["train"].column_names)


def _score_text(score: float) -> str:
    return str(np.round(np.float32(score), decimals=1))


def _score_of(text: str) -> float:
    """A generated score; -1 where it is no number (the official ``string_to_float``, ``data/postprocessors.py``).

    Spaces are ignored: some tokenizers (the tiny test T5's) decode ``3.8`` as ``3. 8``; t5-base's does not."""
    try:
        return float("".join(text.split()))
    except ValueError:
        return -1.0


def _tokenize_splits(dsdict: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int, max_new_tokens: int, *,
                     causal: bool) -> DatasetDict:
    """Sources (``max_length`` tokens) and targets (``max_new_tokens``) as a model of its kind trains and generates.

    Seq2seq: input = source, labels = target, in every split. A decoder trains on prompt + target with
    the loss on the target only; validation and test rows hold the prompt alone, and the target as
    labels, for generation. The prompt ends in the end-of-sequence token (where the tiny decoders'
    template puts it anyway), so where the source stops is unambiguous, and the target ends in it
    too, which is where generation stops.
    """
    from datasets import DatasetDict

    def encode(batch: dict[str, list], train: bool) -> dict[str, list]:
        sources = tokenizer(batch["source"], truncation=True, max_length=max_length)["input_ids"]
        if not causal:
            targets = tokenizer(text_target=batch["target"], truncation=True, max_length=max_new_tokens)["input_ids"]
            rows = {"input_ids": sources, "labels": targets}
        else:
            eos = [tokenizer.eos_token_id]
            prompts = [ids if ids[-1:] == eos else ids + eos for ids in sources]
            targets = [ids[:max_new_tokens - 1] + eos for ids in tokenizer(batch["target"], add_special_tokens=False)["input_ids"]]
            rows = ({"input_ids": [p + t for p, t in zip(prompts, targets)],
                     "labels": [[IGNORE_INDEX] * len(p) + t for p, t in zip(prompts, targets)]} if train
                    else {"input_ids": prompts, "labels": targets})
        rows["attention_mask"] = [[1] * len(ids) for ids in rows["input_ids"]]
        rows["length"] = [len(ids) for ids in rows["input_ids"]]
        return rows

    return DatasetDict({split: data.map(functools.partial(encode, train=split == "train"), batched=True,
                                        remove_columns=["source", "target"]) for split, data in dsdict.items()})


def _without_length(pad: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
    """A collator padding tokenised rows without their ``length`` column (it is for sorting only)."""
    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        return pad([{k: v for k, v in f.items() if k != "length"} for f in features])

    return collate


def _as_written(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """A text as the model can write it back (a lowercasing tokenizer lowercases label words too)."""
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True).strip()


def _decode(tokenizer: PreTrainedTokenizerBase, ids: np.ndarray) -> list[str]:
    """Token ids padded with -100 (by the evaluation loop, or in labels) as texts."""
    ids = np.where(np.asarray(ids) == IGNORE_INDEX, tokenizer.pad_token_id, ids)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]
