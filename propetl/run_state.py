"""A run directory's life across sessions: which checkpoints belong to it (the config fingerprint),
where a restarted run resumes, the validation history and training clock that survive a kill,
and the end: provenance, checkpoints away, ``metrics.json`` last.

The names of the files are :mod:`propetl.runs`'; this module owns what is in them over time, so
that a killed run restarted with the same command ends as if it had never stopped, and one
restarted with another config starts afresh.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint

from . import timing
from .atomic import write_json, write_text
from .backbones import model_identity
from .config import FILE_TASK_OPTIONS, GENERATION_SETTINGS, PETLConfig, TrainConfig
from .provenance import provenance
from .runs import RunFiles, task_slug, tasks_slug
from .trainer import SPEED_KEYS, strip

log = logging.getLogger("propetl.train")

_LOGGERS = ("propetl", "transformers.trainer")
_log_handler: logging.Handler | None = None


def setup_logging(out: Path) -> None:
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


def discard_foreign_checkpoints(checkpoints: Path, cfg: TrainConfig, petl_config: PETLConfig) -> None:
    """Resume only what this exact config started: a changed lr or sparsity starts afresh."""
    ignored = ("out", "keep_checkpoints", "threads", "logging_steps", "prepared")
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ignored}
    train = {k: v for k, v in train.items() if k not in FILE_TASK_OPTIONS or v is not None}  # as before they existed
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    train = {k: v for k, v in train.items() if k not in GENERATION_SETTINGS or v != defaults[k]}
    fingerprint = {"train": train, "petl": petl_config.to_dict()}
    marker = checkpoints / "run_config.json"
    if checkpoints.is_dir() and (not marker.is_file() or json.loads(marker.read_text()) != json.loads(json.dumps(fingerprint))):
        log.info("discarding checkpoints of another config in %s", checkpoints)
        shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    write_json(marker, fingerprint)


def last_complete_checkpoint(checkpoints: Path) -> str | None:
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


class History(TrainerCallback):
    """Appends each validation pass to history.jsonl (rewritten on resume from the checkpoint's log)."""

    def __init__(self, path: Path):
        self.path = path

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not any(k.startswith("eval_") for k in metrics or {}):
            return  # the final validation / test passes go to metrics.json instead
        record = {"step": state.global_step, "epoch": state.epoch, **strip(metrics, "eval_", drop=SPEED_KEYS)}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        log.info("step %d validation %s", state.global_step, record)


def best_step(checkpoint: str | None) -> int | None:
    """The step of a checkpoint folder (``checkpoint-{step}``)."""
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None


def truncate_history(history: Path, checkpoint: str) -> None:
    """Drop validation lines written after the checkpoint we resume from (they will be redone).

    A kill can cut the last line short; only whole records up to the checkpoint are kept.
    """
    if not history.is_file():
        return
    step = best_step(checkpoint)
    kept = []
    for line in history.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if record["step"] <= step:
            kept.append(line)
    write_text(history, "".join(line + "\n" for line in kept))


def validation_at(history: Path, step: int) -> dict[str, float]:
    """The validation metrics of the kept checkpoint, as measured during training (no second pass)."""
    for line in history.read_text().splitlines():
        record = json.loads(line)
        if record["step"] == step:
            return {k: v for k, v in record.items() if k not in ("step", "epoch", "loss")}
    raise RuntimeError(f"no validation record for step {step} in {history}")


class TrainClock(TrainerCallback):
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


def run_identity(cfg: TrainConfig, petl_config: PETLConfig) -> dict[str, Any]:
    """What a metrics.json says about which run it is, whatever the run's outcome."""
    slugs = [task_slug(task) for task in cfg.task]
    return {
        "task": cfg.task[0] if len(slugs) == 1 else tasks_slug(cfg.task),
        **({"task_names": slugs, "task_masks": petl_config.task_masks, "task_temperature": cfg.task_temperature} if len(slugs) > 1 else {}),
        **({"prototype": cfg.prototype} if cfg.prototype else {}),
        **({"task_format": cfg.task_format} if cfg.task_format != "classifier" else {}),
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


def finish(cfg: TrainConfig, petl_config: PETLConfig, metrics_out: dict[str, Any], data_info: dict[str, Any] | None,
           started: timing.Mark) -> dict[str, Any]:
    """Provenance, then checkpoints away, then metrics.json last: its presence means the run is over."""
    files = RunFiles(Path(cfg.out))
    with timing.phase("save"):
        write_json(files.provenance, provenance({"train": dataclasses.asdict(cfg), "petl": petl_config.to_dict(),
                                                 "backbone": model_identity(cfg.model), "data": data_info}))
        if not cfg.keep_checkpoints:
            shutil.rmtree(files.checkpoints, ignore_errors=True)
    metrics_out["timing"] = timing.breakdown(started, startup=True)
    write_json(files.metrics, metrics_out)
    return metrics_out
