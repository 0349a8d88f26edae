"""A run's tasks assembled for training: each task's tokenised splits checked against the run, then
one training set, validation and test per task, and each task's metrics. A single-task run is the
case of one task; several tasks' rows are tagged with their task and drawn by a batch sampler that
keeps every batch to one task.

Everything a bad task could fail on is checked before any data or model is loaded
(:func:`check_tasks`), and tokenised data made for another run is refused (``--prepared``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Value, concatenate_datasets

from .backbones import generator_kind, model_identity
from .config import PETLConfig, TrainConfig
from .data import get_task_spec, load_prepared, prepare_task
from .runs import RunFiles, task_slug
from .task_kinds import GENERATOR, kind_of, run_kind
from .task_sampler import TemperatureBatchSampler


def check_tasks(cfg: TrainConfig, petl_config: PETLConfig) -> None:
    """What no data or model load should be spent on: unknown tasks, bad files, a multi-task run of a method without
    masks, classifier and generated tasks in one run, a generated task on an encoder."""
    for what, asked in (("several --task", len(cfg.task) > 1), ("--prototype", cfg.prototype)):
        if asked:
            petl_config.require_learned_masks(what)
    slugs = [task_slug(task) for task in cfg.task]
    if len(set(slugs)) < len(slugs):
        raise ValueError(f"tasks {cfg.task} share a name ({', '.join(slugs)}); rename a task file")
    kinds = {task_slug(task): kind_of(get_task_spec(task, **cfg.file_options), cfg.task_format).name for task in cfg.task}
    run_kind({slug: {"task_kind": kind} for slug, kind in kinds.items()})
    if GENERATOR.name in kinds.values() and generator_kind(cfg.model) is None:
        raise ValueError(f"model {cfg.model!r} is an encoder; generated tasks ({', '.join(kinds)}) need an encoder-decoder (t5) "
                         f"or a decoder (llama-style, gpt2)")


def _check_prepared(path: str | Path, info: dict[str, Any], cfg: TrainConfig, task: str) -> None:
    """Refuse tokenised data made for another task, tokenizer, split or length than this run's."""
    expected = {"task": task, "data_seed": cfg.data_seed, "model": model_identity(cfg.model),
                "task_options": cfg.file_options}
    expected |= {k: getattr(cfg, k) for k in ("max_length", "max_train", "max_val", "max_test") if getattr(cfg, k) is not None}
    spec = get_task_spec(task, **cfg.file_options)
    expected |= dict.fromkeys(("task_format", "max_new_tokens")) | kind_of(spec, cfg.task_format).request(spec, cfg.task_format, cfg.max_new_tokens)
    for key, value in expected.items():
        if info.get(key) != value:
            raise ValueError(f"--prepared {path} was made with {key}={info.get(key)!r}, but this run has {key}={value!r}")


def load_tasks(cfg: TrainConfig, files: RunFiles) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Each task's tokenised splits and info, by slug (its own data dir under the run for several tasks)."""
    loaded = {}
    for task, prepared in zip(cfg.task, cfg.prepared_dirs):
        slug = task_slug(task)
        path = prepared or prepare_task(
            task, cfg.model, files.data / slug if len(cfg.task) > 1 else files.data, data_seed=cfg.data_seed,
            max_length=cfg.max_length, max_train=cfg.max_train, max_val=cfg.max_val, max_test=cfg.max_test,
            task_format=cfg.task_format, max_new_tokens=cfg.max_new_tokens, **cfg.file_options,
        )
        data, info = load_prepared(path)
        _check_prepared(path, info, cfg, task)
        for split in ("validation", "test"):  # order is irrelevant to metrics; sorted batches pad least
            data[split] = data[split].sort("length")
        loaded[slug] = (data, info)
    return loaded


@dataclass
class Splits:
    """What the Trainer trains and evaluates on: one training set, and each task's validation and test split,
    info and metrics by slug (one entry for a single task)."""

    train: Any
    validation: dict[str, Any]
    test: dict[str, Any]
    info: dict[str, dict[str, Any]]
    task_metrics: dict[str, Any]
    sampler: TemperatureBatchSampler | None
    """Several tasks: the sampler that draws each batch's task; one task: None (the Trainer's length-grouped batches)."""


def assemble(loaded: dict[str, tuple[Any, dict[str, Any]]], cfg: TrainConfig, metrics: Callable[[dict[str, Any]], Any]) -> Splits:
    """The run's splits; ``metrics(info)`` is a task's ``compute_metrics`` (its kind's, :mod:`propetl.task_kinds`).

    Several tasks' rows are tagged with their task's index and concatenated for training, each batch's task drawn by
    temperature; a single task's rows train as they are, in the Trainer's own length-grouped batches.
    """
    several = len(loaded) > 1
    data = {slug: _tag(splits, i) if several else splits for i, (slug, (splits, _)) in enumerate(loaded.items())}
    return Splits(
        train=concatenate_datasets([splits["train"] for splits in data.values()]),
        validation={slug: splits["validation"] for slug, splits in data.items()},
        test={slug: splits["test"] for slug, splits in data.items()},
        info={slug: info for slug, (_, info) in loaded.items()},
        task_metrics={slug: metrics(info) for slug, (_, info) in loaded.items()},
        sampler=TemperatureBatchSampler([len(splits["train"]) for splits in data.values()], cfg.batch_size,
                                        cfg.task_temperature, cfg.seed) if several else None,
    )


def _tag(data: Any, task_id: int) -> Any:
    """A task's splits with its index on every row, labels as plain numbers (so tasks concatenate)."""
    labels = data["train"].features["labels"]
    if hasattr(labels, "names"):  # a ClassLabel: its names differ between tasks
        data = data.cast_column("labels", Value("int64"))
    return data.map(lambda _: {"task_id": task_id})
