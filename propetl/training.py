"""One training run: prepared data -> PETL model -> transformers Trainer -> metrics, artifact, provenance.

The run directory is the contract the pipeline reads:

* ``metrics.json``: written last and atomically; its presence means the run finished;
* ``history.jsonl``: one line per validation pass;
* ``test_predictions.parquet``: each test example's prediction and reference (:mod:`propetl.predictions`);
* ``artifact/``: the :func:`propetl.save_petl` artifact of the best checkpoint;
* ``provenance.json``: resolved config, package versions, git commit, host, hardware;
* ``train.log``; ``checkpoints/`` while running (removed at the end unless kept).

A killed run restarted with the same command resumes from its last checkpoint
(transformers restores model, optimiser, scheduler, RNG and data order).

A run trains a list of tasks; a single-task run is the list of one. Several ``--task`` train one
ProPETL network on all of them (:mod:`propetl.multitask`): every batch comes from one task
(:mod:`propetl.task_sampler`), validation runs per task and the checkpoint with the best mean of
the tasks' combined scores is kept.

This module is the run's steps in order; each concept they use has its own module:
:mod:`propetl.task_assembly` (the tasks' data), :mod:`propetl.trainer` (what propetl changes in
the Trainer), :mod:`propetl.param_groups` (the optimiser's groups) and :mod:`propetl.run_state`
(fingerprint, resume, history, clock, the final metrics.json).
"""

from __future__ import annotations

import dataclasses
import logging
import resource
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from . import peft_methods, run_state, timing
from .artifacts import artifact_bytes, load_frozen_prototype, save_petl
from .backbones import load_tokenizer, model_identity
from .kernels import native_bf16
from .config import PETLConfig, TrainConfig, effective_defaults
from .petl_model import apply_multitask_petl, apply_petl
from .run_state import History, TrainClock
from .predictions import write_predictions
from .runs import RunFiles
from .storage import storage_report
from .task_assembly import Splits, assemble, check_tasks, load_tasks
from .task_kinds import run_kind
from .trainer import Diverged, PETLTrainer, strip

log = logging.getLogger("propetl.train")


def resolve(train: TrainConfig, petl: PETLConfig) -> TrainConfig:
    """Fill learning rates left unset from the method's defaults (one place: :func:`propetl.config.effective_defaults`),
    and the precision from the hardware: ``bf16: auto`` is bf16 where the machine computes it natively
    (:func:`propetl.kernels.native_bf16`), else fp32 (or fp16 on a GPU); unset is that on a GPU and fp32 on
    CPU. A run's provenance.json records the resolved value; :func:`warn_of_emulated_bf16` says when it is slow."""
    rates = effective_defaults(petl.method, lr=train.lr, mask_lr=train.mask_lr, head_lr=train.head_lr)
    gpu = torch.cuda.is_available()
    if train.bf16 == "auto" or (train.bf16 is None and gpu):
        bf16 = native_bf16() and not train.fp16
    else:
        bf16 = bool(train.bf16)
    return dataclasses.replace(
        train,
        lr=rates.lr,
        mask_lr=rates.mask_lr,
        head_lr=rates.head_lr,
        bf16=bool(bf16),
        fp16=bool(train.fp16 if train.fp16 is not None else (gpu and not bf16)),
    )


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warn_of_emulated_bf16(cfg: TrainConfig) -> None:
    """An explicit ``bf16: true`` is honoured on a machine without native bf16, where it is many times slower than
    fp32 (44x for a matmul on an AVX2-only CPU): the run's log says so once, at its start."""
    if cfg.bf16 and not native_bf16():
        gpu = torch.cuda.is_available()
        log.warning("bf16=true on a machine without native bf16 (%s): its matmuls run many times slower than fp32 "
                    "here; bf16: auto picks fp32 on such a machine",
                    torch.cuda.get_device_name() if gpu else f"CPU capability {torch.backends.cpu.get_cpu_capability()}")


@dataclass
class Fitted:
    """A trained model with its best checkpoint loaded, and what evaluation needs."""

    config: TrainConfig
    trainer: Trainer
    test: dict[str, Any]
    """Each task's test split, by slug."""
    info: dict[str, dict[str, Any]]
    """Each task's prepared data info, by slug."""
    train_time_s: float | None
    """Wall time of training incl. its validation passes, summed over resumed sessions (None: unknown)."""
    examples_per_s: float | None


def fit(train_config: TrainConfig, petl_config: PETLConfig, callbacks: Sequence[TrainerCallback] = ()) -> Fitted:
    """Train (or resume) and load the checkpoint with the best validation combined_score."""
    check_tasks(train_config, petl_config)  # an unknown task or a bad file fails before any load
    peft_methods.check(petl_config)  # so does an unknown PEFT type or argument
    cfg = resolve(train_config, petl_config)
    out = Path(cfg.out)
    files = RunFiles(out)
    out.mkdir(parents=True, exist_ok=True)
    run_state.setup_logging(out)
    warn_of_emulated_bf16(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    checkpoints = files.checkpoints
    history = files.history
    run_state.discard_foreign_checkpoints(checkpoints, cfg, petl_config)
    resume = run_state.last_complete_checkpoint(checkpoints)
    if resume is None:
        history.unlink(missing_ok=True)
    else:
        log.info("resuming from %s", resume)
        run_state.truncate_history(history, resume)
    clock = TrainClock(resume)
    with timing.phase("load"):
        trainer, splits = _build_trainer(cfg, petl_config, [History(history), clock, *callbacks])
    with timing.phase("train_loop"):
        trainer.train(resume_from_checkpoint=resume)
    seconds, examples = clock.elapsed, trainer.state.global_step * cfg.batch_size * cfg.grad_accum
    return Fitted(cfg, trainer, splits.test, splits.info, seconds, None if seconds is None else examples / seconds)


def _build_trainer(cfg: TrainConfig, petl_config: PETLConfig, callbacks: list[TrainerCallback]) -> tuple[PETLTrainer, Splits]:
    """The data, the PETL model and the Trainer of a run; also the splits, whose test split(s) and task info
    are for after training."""
    files = RunFiles(Path(cfg.out))
    loaded = load_tasks(cfg, files)
    infos = {slug: info for slug, (_, info) in loaded.items()}
    kind, tokenizer = run_kind(infos), load_tokenizer(cfg.model)
    set_seed(cfg.seed)
    models = kind.load_models(cfg, infos)
    # a single task's model needs no task switch, so its artifact is the plain single-task one
    model = apply_petl(*models.values(), petl_config) if len(models) == 1 else apply_multitask_petl(models, petl_config)
    splits = assemble(loaded, cfg, lambda info: kind.metrics(info, tokenizer))
    if cfg.prototype:
        load_frozen_prototype(model, cfg.prototype)

    args = TrainingArguments(
        output_dir=str(files.checkpoints),
        max_steps=cfg.max_steps or -1,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type="linear",
        eval_strategy=cfg.eval_strategy,
        eval_steps=cfg.eval_every,
        save_strategy=cfg.eval_strategy,
        save_steps=cfg.eval_every,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="combined_score",
        greater_is_better=True,
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.bf16,
        fp16=cfg.fp16,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        logging_steps=cfg.logging_steps,
        report_to=[],
        disable_tqdm=False,
        label_smoothing_factor=kind.label_smoothing(cfg),
    )
    trainer = PETLTrainer(
        model=model,
        args=args,
        train_dataset=splits.train,
        eval_dataset=splits.validation,
        data_collator=kind.collator(tokenizer, model),
        callbacks=list(callbacks),
        run_config=cfg,
        task_metrics=splits.task_metrics,
        batch_sampler=splits.sampler,
        generation=kind.generation_config(model, cfg),
    )
    return trainer, splits


def train(train_config: TrainConfig, petl_config: PETLConfig) -> dict[str, Any]:
    """Run (or resume) one training run and return its metrics (also written to metrics.json).

    A run whose loss or gradient turns non-finite stops there: its metrics.json says
    ``status: diverged`` with the step and no scores, so that a study goes on with its
    other runs and the tables count it instead of averaging over what is left.
    """
    started = timing.mark()
    try:
        fitted = fit(train_config, petl_config)
    except Diverged as diverged:
        cfg = resolve(train_config, petl_config)
        log.warning("%s", diverged)
        return run_state.finish(cfg, petl_config, {**run_state.run_identity(cfg, petl_config), "status": "diverged",
                                                   "diverged_at_step": diverged.step, "reason": diverged.reason, "val": {}, "test": {}},
                                data_info=None, started=started)
    cfg, trainer, files = fitted.config, fitted.trainer, RunFiles(Path(fitted.config.out))
    model = trainer.model
    best_step = run_state.best_step(trainer.state.best_model_checkpoint)
    val = run_state.validation_at(files.history, best_step)
    test = strip(trainer.evaluate(fitted.test, metric_key_prefix="test"), "test_")
    write_predictions(files.predictions, {task: (*trainer.task_metrics[task].last, trainer.evaluation_order(split))
                                          for task, split in fitted.test.items()})
    model.eval()
    with timing.phase("save"):
        artifact = save_petl(model, files.artifact, backbone=model_identity(cfg.model))
        report = storage_report(model)
    # a run's record: a single task's scores and data at the top (as every committed run's);
    # several tasks' scores and bytes per task, their mean on top
    per_task, data_info = {}, next(iter(fitted.info.values()))
    if len(fitted.test) > 1:
        data_info = fitted.info
        per_task = {"tasks": {task: {"val": _of_task(val, task), "test": _of_task(test, task),
                                     "artifact_bytes": artifact_bytes(artifact, task)} for task in fitted.test}}
        val, test = {"combined_score": val["combined_score"]}, {"combined_score": test["combined_score"]}
    metrics_out = {
        **run_state.run_identity(cfg, petl_config),
        "status": "ok",
        "val": val,
        "test": test,
        **per_task,
        "storage": report,
        "artifact_bytes": artifact_bytes(artifact),
        "trainable_params": report["trainable_params"],
        "steps": trainer.state.global_step,
        "best_step": best_step,
        "train_time_s": fitted.train_time_s,
        "examples_per_s": fitted.examples_per_s,
        "peak_memory_mb": _peak_memory_mb(),
        "split_sizes": {task: info["split_sizes"] for task, info in fitted.info.items()} if per_task else data_info["split_sizes"],
    }
    log.info("finished: val %s test %s", val, test)
    return run_state.finish(cfg, petl_config, metrics_out, data_info, started)


def _of_task(metrics: dict[str, float], task: str) -> dict[str, float]:
    """One task's part of a multi-task validation or test record (keys ``{task}/{metric}``)."""
    return {key.removeprefix(f"{task}/"): value for key, value in metrics.items() if key.startswith(f"{task}/")}
