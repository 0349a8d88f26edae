"""One training run: prepared data -> PETL model -> transformers Trainer -> metrics, artifact, provenance.

The run directory is the contract the pipeline reads:

* ``metrics.json``: written last and atomically; its presence means the run finished;
* ``history.jsonl``: one line per validation pass;
* ``artifact/``: the :func:`propetl.save_petl` artifact of the best checkpoint;
* ``provenance.json``: resolved config, package versions, git commit, host, hardware;
* ``train.log``; ``checkpoints/`` while running (removed at the end unless kept).

A killed run restarted with the same command resumes from its last checkpoint
(transformers restores model, optimiser, scheduler, RNG and data order).

Several ``--task`` train one ProPETL network on all of them (:mod:`propetl.multitask`):
every batch comes from one task (:mod:`propetl.task_sampler`), validation runs per task
and the checkpoint with the best mean of the tasks' combined scores is kept.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch
from datasets import Value, concatenate_datasets
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.utils import SAFE_WEIGHTS_NAME
from transformers.trainer_utils import get_last_checkpoint

from . import timing, warm_start
from .artifacts import artifact_bytes, load_frozen_prototype, save_petl
from .atomic import write_json, write_text
from .config import FILE_TASK_OPTIONS, PAPER_DEFAULTS, PETLConfig, TrainConfig
from .data import get_task_spec, load_prepared, prepare_task
from .metrics import compute_metrics
from .multitask import set_task
from .petl_model import apply_multitask_petl, apply_petl, head_modules, layer_masks, parameters_of
from .backbones import load_model, load_tokenizer, model_identity
from .provenance import provenance
from .runs import RunFiles, task_slug
from .storage import storage_report
from .task_sampler import TemperatureBatchSampler

log = logging.getLogger("propetl.train")


def resolve(train: TrainConfig, petl: PETLConfig) -> TrainConfig:
    """Fill learning rates left unset from the method's paper defaults (one place: PAPER_DEFAULTS),
    and an unset precision from the hardware: bf16 on a GPU that has it, else fp16 on a GPU, on CPU
    neither (bf16 on CPU only when asked: it needs AVX512-BF16 to pay)."""
    defaults = PAPER_DEFAULTS[petl.method]
    lr = train.lr if train.lr is not None else defaults["lr"]
    gpu = torch.cuda.is_available()
    bf16 = train.bf16 if train.bf16 is not None else (gpu and torch.cuda.is_bf16_supported() and not train.fp16)
    return dataclasses.replace(
        train,
        lr=lr,
        mask_lr=train.mask_lr if train.mask_lr is not None else defaults.get("mask_lr", lr),
        head_lr=train.head_lr if train.head_lr is not None else lr,
        bf16=bool(bf16),
        fp16=bool(train.fp16 if train.fp16 is not None else (gpu and not bf16)),
    )


def parameter_groups(model: torch.nn.Module, cfg: TrainConfig, decay_names: Collection[str]) -> list[dict[str, Any]]:
    """PETL parameters, mask scores and head, each with its own learning rate and weight decay.

    As in the official trainer.py (and the Trainer's default), biases and LayerNorm
    weights never decay: each group is split by ``decay_names``
    (``Trainer.get_decay_parameter_names``). Mask scores decay with ``mask_weight_decay``.
    """
    scores, head = parameters_of(layer_masks(model).values()), parameters_of(head_modules(model).values())
    decay_names = set(decay_names)
    decayed = {id(p) for name, p in model.named_parameters() if name in decay_names}
    petl = [p for p in model.parameters() if p.requires_grad and id(p) not in scores and id(p) not in head]
    groups = []
    for name, params, lr, weight_decay in (
        ("petl", petl, cfg.lr, cfg.weight_decay),
        ("mask_scores", list(scores.values()), cfg.mask_lr, cfg.mask_weight_decay),
        ("head", list(head.values()), cfg.head_lr, cfg.weight_decay),
    ):
        groups.append({"name": name, "params": [p for p in params if id(p) in decayed], "lr": lr, "weight_decay": weight_decay})
        groups.append({"name": f"{name}/no_decay", "params": [p for p in params if id(p) not in decayed], "lr": lr, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


# A training loss this many times the first step's (e.g. 70 for a fresh binary classifier's 0.69) is a
# run that blew up, however finite: at lr 1e4 the loss reaches 1e5 and would otherwise be recorded as a run.
DIVERGENCE_FACTOR = 100.0


class Diverged(RuntimeError):
    """A non-finite loss or gradient, or an exploded loss: the run stops at that step and is recorded as diverged."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"diverged at step {step}: {reason}")
        self.step, self.reason = step, reason


class _PETLTrainer(Trainer):
    """The Trainer with per-group learning rates, divergence checks and, for several tasks,
    task-pure batches, a task switch per batch and a validation pass per task."""

    def __init__(self, *args, run_config: TrainConfig, task_metrics: dict[str, Any] | None = None,
                 batch_sampler: TemperatureBatchSampler | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_config = run_config
        self.task_metrics, self.batch_sampler = task_metrics, batch_sampler
        self.task_names = list(task_metrics or ())
        self.first_loss: float | None = None  # of this session: a resumed run compares with its first step

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        # Trainer autocasts training steps only; evaluation in fp32 costs ~2x on CPU
        with (timing.phase("test" if metric_key_prefix == "test" else "validation"),
              torch.autocast(self.args.device.type, dtype=torch.bfloat16, enabled=self.run_config.bf16)):
            datasets = self.eval_dataset if eval_dataset is None else eval_dataset
            if not isinstance(datasets, dict):
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            return self._evaluate_tasks(datasets, ignore_keys, metric_key_prefix)

    def _evaluate_tasks(self, datasets: dict[str, Any], ignore_keys, prefix: str) -> dict[str, float]:
        """``{prefix}_{task}/{metric}`` per task and ``{prefix}_combined_score``, the tasks' mean (selects the checkpoint)."""
        metrics: dict[str, float] = {}
        for task, dataset in datasets.items():
            set_task(self.model, task)
            self.compute_metrics = self.task_metrics[task]
            output = self.evaluation_loop(self.get_eval_dataloader(dataset), description=f"Evaluation {task}",
                                          ignore_keys=ignore_keys, metric_key_prefix=prefix)
            metrics |= {f"{prefix}_{task}/{key.removeprefix(prefix + '_')}": value for key, value in output.metrics.items()
                        if key.removeprefix(prefix + "_") not in ("loss", *_TIMING)}
        metrics[f"{prefix}_combined_score"] = float(np.mean([metrics[f"{prefix}_{task}/combined_score"] for task in datasets]))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        task_ids = inputs.pop("task_id", None)
        if task_ids is not None:
            if not bool((task_ids == task_ids[0]).all()):
                raise RuntimeError("a batch mixes tasks; each batch must come from one task")
            set_task(model, self.task_names[int(task_ids[0])])
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def get_train_dataloader(self):
        if self.batch_sampler is None:
            return super().get_train_dataloader()
        loader = DataLoader(self.train_dataset, batch_sampler=self.batch_sampler, collate_fn=self.data_collator, num_workers=0)
        return self.accelerator.prepare(loader)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        step = self.state.global_step + 1
        value = loss.item()
        if self.first_loss is None:
            self.first_loss = value
        if not math.isfinite(value) or value > DIVERGENCE_FACTOR * max(self.first_loss, 1e-2):
            raise Diverged(step, f"loss {value:.4g} (first step: {self.first_loss:.4g})")
        # under fp16 the loss scaler expects overflowing gradients now and then (it skips that step)
        norms = [] if self.args.fp16 else [p.grad.norm() for p in model.parameters() if p.grad is not None]
        if norms and not torch.isfinite(torch.stack(norms).sum()):
            raise Diverged(step, "non-finite gradient")
        return loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """A checkpoint's weights are what training changes: trainable tensors and buffers. The frozen
        backbone is rebuilt from the pretrained weights on resume (a MiniLM PETL checkpoint: under
        1 MB instead of 90 MB). transformers loads checkpoints non-strictly; see _issue_warnings_after_load."""
        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({name: tensor.contiguous() for name, tensor in _trained_state(self.model).items()},
                  str(out / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
        torch.save(self.args, out / TRAINING_ARGS_NAME)

    def _issue_warnings_after_load(self, load_result) -> None:
        missing = sorted(set(load_result.missing_keys) & set(_trained_state(self.model)))
        if missing or load_result.unexpected_keys:
            raise RuntimeError(f"checkpoint does not fit the model: missing trained tensors {missing[:3]}, "
                               f"unexpected {load_result.unexpected_keys[:3]}")

    # Checkpoint writes and reads are timed apart from the training steps they interrupt.
    def _save_checkpoint(self, model, trial):
        with timing.phase("checkpoint"):
            super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        with timing.phase("checkpoint"):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        with timing.phase("checkpoint"):
            super()._load_best_model()

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(
                parameter_groups(self.model, self.run_config, self.get_decay_parameter_names(self.model))
            )
        return self.optimizer


def _trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state a checkpoint must hold: everything but the frozen parameters."""
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {name: tensor for name, tensor in model.state_dict().items() if name not in frozen}


class _History(TrainerCallback):
    """Appends each validation pass to history.jsonl (rewritten on resume from the checkpoint's log)."""

    def __init__(self, path: Path):
        self.path = path

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not any(k.startswith("eval_") for k in metrics or {}):
            return  # the final validation / test passes go to metrics.json instead
        record = {"step": state.global_step, "epoch": state.epoch, **_strip(metrics, "eval_", drop=_TIMING)}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        log.info("step %d validation %s", state.global_step, record)


def _collator(tokenizer):
    pad = DataCollatorWithPadding(tokenizer)

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad([{k: v for k, v in f.items() if k != "length"} for f in features])

    return collate


class _TrainClock(TrainerCallback):
    """Training wall time summed over every session of a run, so a resumed run reports its whole cost.

    Each checkpoint stores the time trained up to it; a resumed session starts its clock there.
    """

    FILE = "train_clock.json"

    def __init__(self, resume: str | None):
        self.before: float | None = 0.0
        if resume:
            saved = Path(resume) / self.FILE
            if saved.is_file():
                self.before = json.loads(saved.read_text())["train_time_s"]
            else:  # killed between writing the checkpoint and its clock: say unknown rather than undercount
                log.warning("%s has no %s: train_time_s will be null", resume, self.FILE)
                self.before = None
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float | None:
        return None if self.before is None else self.before + time.perf_counter() - self.start

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_save(self, args, state, control, **kwargs):
        elapsed = self.elapsed
        if elapsed is not None:
            write_json(Path(args.output_dir) / f"checkpoint-{state.global_step}" / self.FILE, {"train_time_s": elapsed})


_LOGGERS = ("propetl", "transformers.trainer")
_log_handler: logging.Handler | None = None


def _setup_logging(out: Path) -> None:
    """Send this run's log to out/train.log, and stop sending to the previous run's (tuning trials)."""
    global _log_handler
    if _log_handler is not None:
        for name in _LOGGERS:
            logging.getLogger(name).removeHandler(_log_handler)
        _log_handler.close()
    _log_handler = logging.FileHandler(RunFiles(out).log)
    _log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(_log_handler)


def _check_prepared(path: str | Path, info: dict[str, Any], cfg: TrainConfig, task: str) -> None:
    """Refuse tokenised data made for another task, tokenizer, split or length than this run's."""
    expected = {"task": task, "data_seed": cfg.data_seed, "model": model_identity(cfg.model),
                "task_options": cfg.file_options}
    expected |= {k: getattr(cfg, k) for k in ("max_length", "max_train", "max_val", "max_test") if getattr(cfg, k) is not None}
    for key, value in expected.items():
        if info.get(key) != value:
            raise ValueError(f"--prepared {path} was made with {key}={info.get(key)!r}, but this run has {key}={value!r}")


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Fitted:
    """A trained model with its best checkpoint loaded, and what evaluation needs."""

    config: TrainConfig
    trainer: Trainer
    test: Any
    """The test split; for several tasks a dict task -> test split."""
    info: dict[str, Any]
    """The prepared data's info; for several tasks a dict task -> info."""
    train_time_s: float | None
    """Wall time of training incl. its validation passes, summed over resumed sessions (None: unknown)."""
    examples_per_s: float | None


def _check_run(cfg: TrainConfig, petl_config: PETLConfig) -> None:
    """What no data or model load should be spent on: unknown tasks, bad files, a multi-task run of a method without masks."""
    for what, asked in (("several --task", len(cfg.tasks) > 1), ("--prototype", cfg.prototype)):
        if asked:
            petl_config.require_learned_masks(what)
    slugs = [task_slug(task) for task in cfg.tasks]
    if len(set(slugs)) < len(slugs):
        raise ValueError(f"tasks {cfg.tasks} share a name ({', '.join(slugs)}); rename a task file")
    for task in cfg.tasks:
        get_task_spec(task, **cfg.file_options)


def _metrics_fn(info: dict[str, Any]):
    def metrics(prediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return compute_metrics(info["metrics"], np.squeeze(logits, -1) if info["num_labels"] == 1 else logits, prediction.label_ids)

    return metrics


def _load_tasks(cfg: TrainConfig, files: RunFiles) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Each task's tokenised splits and info, by slug (its own data dir under the run for several tasks)."""
    loaded = {}
    for task, prepared in zip(cfg.tasks, cfg.prepared_dirs):
        slug = task_slug(task)
        path = prepared or prepare_task(
            task, cfg.model, files.data / slug if len(cfg.tasks) > 1 else files.data, data_seed=cfg.data_seed,
            max_length=cfg.max_length, max_train=cfg.max_train, max_val=cfg.max_val, max_test=cfg.max_test, **cfg.file_options,
        )
        data, info = load_prepared(path)
        _check_prepared(path, info, cfg, task)
        for split in ("validation", "test"):  # order is irrelevant to metrics; sorted batches pad least
            data[split] = data[split].sort("length")
        loaded[slug] = (data, info)
    return loaded


def _tag(data: Any, task_id: int) -> Any:
    """A task's splits with its index on every row, labels as plain numbers (so tasks concatenate)."""
    labels = data["train"].features["labels"]
    if hasattr(labels, "names"):  # a ClassLabel: its names differ between tasks
        data = data.cast_column("labels", Value("int64"))
    return data.map(lambda _: {"task_id": task_id})


def fit(train_config: TrainConfig, petl_config: PETLConfig, callbacks: Sequence[TrainerCallback] = ()) -> Fitted:
    """Train (or resume) and load the checkpoint with the best validation combined_score."""
    _check_run(train_config, petl_config)  # an unknown task or a bad file fails before any load
    cfg = resolve(train_config, petl_config)
    out = Path(cfg.out)
    files = RunFiles(out)
    out.mkdir(parents=True, exist_ok=True)
    _setup_logging(out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    checkpoints = files.checkpoints
    history = files.history
    _discard_foreign_checkpoints(checkpoints, cfg, petl_config)
    resume = _last_complete_checkpoint(checkpoints)
    if resume is None:
        history.unlink(missing_ok=True)
    else:
        log.info("resuming from %s", resume)
        _truncate_history(history, resume)
    clock = _TrainClock(resume)
    with timing.phase("load"):
        trainer, test, info = _build_trainer(cfg, petl_config, [_History(history), clock, *callbacks])
    with timing.phase("train_loop"):
        trainer.train(resume_from_checkpoint=resume)
    seconds, examples = clock.elapsed, trainer.state.global_step * cfg.batch_size * cfg.grad_accum
    return Fitted(cfg, trainer, test, info, seconds, None if seconds is None else examples / seconds)


def _build_trainer(cfg: TrainConfig, petl_config: PETLConfig, callbacks: list[TrainerCallback]) -> tuple[_PETLTrainer, Any, Any]:
    """The data, the PETL model and the Trainer of a run; also the test split(s) and task info for after training."""
    files = RunFiles(Path(cfg.out))
    loaded = _load_tasks(cfg, files)
    set_seed(cfg.seed)
    models = {slug: load_model(cfg.model, info["num_labels"], regression=info["num_labels"] == 1, seed=cfg.seed)
              for slug, (_, info) in loaded.items()}
    sampler = None
    if len(loaded) == 1:
        (data, info), = loaded.values()
        model = apply_petl(next(iter(models.values())), petl_config)
        train_data, validation, test, task_metrics = data["train"], data["validation"], data["test"], None
    else:
        model = apply_multitask_petl(models, petl_config)
        tagged = {slug: _tag(data, i) for i, (slug, (data, _)) in enumerate(loaded.items())}
        train_data = concatenate_datasets([data["train"] for data in tagged.values()])
        validation = {slug: data["validation"] for slug, data in tagged.items()}
        test = {slug: data["test"] for slug, data in tagged.items()}
        task_metrics = {slug: _metrics_fn(info) for slug, (_, info) in loaded.items()}
        sampler = TemperatureBatchSampler([len(data["train"]) for data in tagged.values()], cfg.batch_size,
                                          cfg.task_temperature, cfg.seed)
        info = {slug: info for slug, (_, info) in loaded.items()}
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
    )
    trainer = _PETLTrainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=validation,
        data_collator=_collator(load_tokenizer(cfg.model)),
        compute_metrics=_metrics_fn(info) if task_metrics is None else None,
        callbacks=list(callbacks),
        run_config=cfg,
        task_metrics=task_metrics,
        batch_sampler=sampler,
    )
    return trainer, test, info


def _run_identity(cfg: TrainConfig, petl_config: PETLConfig) -> dict[str, Any]:
    """What a metrics.json says about which run it is, whatever the run's outcome."""
    slugs = [task_slug(task) for task in cfg.tasks]
    return {
        "task": cfg.task if len(slugs) == 1 else "+".join(slugs),
        **({"task_names": slugs, "task_masks": petl_config.task_masks, "task_temperature": cfg.task_temperature} if len(slugs) > 1 else {}),
        **({"prototype": cfg.prototype} if cfg.prototype else {}),
        "label": cfg.label or petl_config.method,
        "method": petl_config.method,
        "sparsity": petl_config.sparsity,
        "mask_mode": petl_config.mask_mode if petl_config.is_propetl else None,
        "share": petl_config.share if petl_config.is_propetl else None,
        "seed": cfg.seed,
        "data_seed": cfg.data_seed,
        "model": cfg.model,
        "max_steps": cfg.max_steps,
    }


def _finish(cfg: TrainConfig, petl_config: PETLConfig, metrics_out: dict[str, Any], data_info: dict[str, Any] | None,
            started: timing.Mark) -> dict[str, Any]:
    """Provenance, then checkpoints away, then metrics.json last: its presence means the run is over."""
    files = RunFiles(Path(cfg.out))
    with timing.phase("save"):
        write_json(files.provenance, provenance({"train": dataclasses.asdict(cfg), "petl": petl_config.to_dict(),
                                                 "backbone": model_identity(cfg.model), "data": data_info}))
        if not cfg.keep_checkpoints:
            shutil.rmtree(files.checkpoints, ignore_errors=True)
    metrics_out["timing"] = {**timing.breakdown(started, startup=True), "warm_start": warm_start.FORKED}
    write_json(files.metrics, metrics_out)
    return metrics_out


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
        return _finish(cfg, petl_config, {**_run_identity(cfg, petl_config), "status": "diverged",
                                          "diverged_at_step": diverged.step, "reason": diverged.reason, "val": {}, "test": {}},
                       data_info=None, started=started)
    cfg, trainer, files = fitted.config, fitted.trainer, RunFiles(Path(fitted.config.out))
    model = trainer.model
    best_step = _best_step(trainer.state.best_model_checkpoint)
    val = _validation_at(files.history, best_step)
    test = _strip(trainer.evaluate(fitted.test, metric_key_prefix="test"), "test_")
    model.eval()
    with timing.phase("save"):
        artifact = save_petl(model, files.artifact, backbone=model_identity(cfg.model))
        report = storage_report(model)
    per_task = {}
    if isinstance(fitted.test, dict):  # several tasks: scores and bytes per task, the mean on top
        per_task = {"tasks": {task: {"val": _of_task(val, task), "test": _of_task(test, task),
                                     "artifact_bytes": artifact_bytes(artifact, task)} for task in fitted.test}}
        val, test = {"combined_score": val["combined_score"]}, {"combined_score": test["combined_score"]}
    metrics_out = {
        **_run_identity(cfg, petl_config),
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
        "split_sizes": ({task: info["split_sizes"] for task, info in fitted.info.items()} if per_task
                        else fitted.info["split_sizes"]),
    }
    log.info("finished: val %s test %s", val, test)
    return _finish(cfg, petl_config, metrics_out, fitted.info, started)


_TIMING = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time")


def _of_task(metrics: dict[str, float], task: str) -> dict[str, float]:
    """One task's part of a multi-task validation or test record (keys ``{task}/{metric}``)."""
    return {key.removeprefix(f"{task}/"): value for key, value in metrics.items() if key.startswith(f"{task}/")}


def _strip(metrics: dict[str, float], prefix: str, drop: tuple[str, ...] = (*_TIMING, "loss", "epoch")) -> dict[str, float]:
    """Metric names without the Trainer's prefix; timings vary run to run, so they are left out."""
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.removeprefix(prefix) not in drop}


def _discard_foreign_checkpoints(checkpoints: Path, cfg: TrainConfig, petl_config: PETLConfig) -> None:
    """Resume only what this exact config started: a changed lr or sparsity starts afresh."""
    ignored = ("out", "keep_checkpoints", "threads", "logging_steps", "prepared")
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ignored}
    train = {k: v for k, v in train.items() if k not in FILE_TASK_OPTIONS or v is not None}  # as before they existed
    fingerprint = {"train": train, "petl": petl_config.to_dict()}
    marker = checkpoints / "run_config.json"
    if checkpoints.is_dir() and (not marker.is_file() or json.loads(marker.read_text()) != json.loads(json.dumps(fingerprint))):
        log.info("discarding checkpoints of another config in %s", checkpoints)
        shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    write_json(marker, fingerprint)


def _last_complete_checkpoint(checkpoints: Path) -> str | None:
    """The newest checkpoint a kill did not cut short, removing any that it did.

    The Trainer writes trainer_state.json after the weights, optimiser, scheduler and RNG
    states, so a checkpoint without it was being written when the run was killed.
    """
    while checkpoints.is_dir() and (last := get_last_checkpoint(str(checkpoints))) is not None:
        if (Path(last) / TRAINER_STATE_NAME).is_file():
            return last
        log.warning("%s was cut short by a kill (no %s); removing it", last, TRAINER_STATE_NAME)
        shutil.rmtree(last)
    return None


def _validation_at(history: Path, step: int) -> dict[str, float]:
    """The validation metrics of the kept checkpoint, as measured during training (no second pass)."""
    for line in history.read_text().splitlines():
        record = json.loads(line)
        if record["step"] == step:
            return {k: v for k, v in record.items() if k not in ("step", "epoch", "loss")}
    raise RuntimeError(f"no validation record for step {step} in {history}")


def _best_step(checkpoint: str | None) -> int | None:
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None


def _truncate_history(history: Path, checkpoint: str) -> None:
    """Drop validation lines written after the checkpoint we resume from (they will be redone).

    A kill can cut the last line short; only whole records up to the checkpoint are kept.
    """
    if not history.is_file():
        return
    step = _best_step(checkpoint)
    kept = []
    for line in history.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if record["step"] <= step:
            kept.append(line)
    write_text(history, "".join(line + "\n" for line in kept))

