"""Optuna tuning of a run's learning rates on the validation split only.

One study per (task, grid entry[, sparsity]) in a journal file, so
``optuna-dashboard JOURNAL`` opens it and an interrupted study resumes with the
trials it has. Intermediate validation scores feed the pruner.

Several workers (processes, cluster jobs) may share one study: under a file lock next to
the journal, a worker asks for a new trial only while fewer than ``n_trials`` are finished
or running, so exactly ``n_trials`` finish in total; each trial trains in
``trials/trial-{number}``, which no other worker touches. A running trial whose worker is
gone (its process on this host has exited, or its heartbeat file is older than
``stale_after_s`` on a shared filesystem) is marked FAIL and replaced. ``out``
(best_params.json) is written by the worker that sees the study complete.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from transformers import TrainerCallback

from . import runs, timing
from .atomic import write_json
from .config import PETLConfig, TrainConfig, check_search_space
from .trainer import Diverged
from .training import fit

log = logging.getLogger("propetl.tune")
PRUNERS = ("median", "hyperband", "none")
HEARTBEAT_S = 30.0  # a running trial touches trials/trial-{n}/heartbeat this often
STALE_AFTER_S = 600.0  # ... and is taken for dead after this long without it
RUNNING, FINISHED = optuna.trial.TrialState.RUNNING, (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _pruner(name: str) -> optuna.pruners.BasePruner:
    if name not in PRUNERS:
        raise ValueError(f"pruner={name!r} is not supported; allowed: {', '.join(PRUNERS)}")
    return {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }[name]()


class _Report(TrainerCallback):
    """Hands each validation score to Optuna and stops the trial when the pruner says so."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.trial.report(metrics["eval_combined_score"], state.global_step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {state.global_step}")


def tune(
    train_config: TrainConfig,
    petl_config: PETLConfig,
    search_space: dict[str, Any],
    *,
    n_trials: int,
    storage: str | Path,
    out: str | Path | None,
    sampler_seed: int = 0,
    pruner: str = "median",
    stale_after_s: float = STALE_AFTER_S,
) -> dict[str, Any] | None:
    """Run trials until the study has ``n_trials`` finished or running; then write ``out`` (best params +
    study summary) if all of them have finished, and return it (None while other workers still run trials)."""
    check_search_space(search_space)
    if n_trials <= 0:
        raise ValueError(f"n_trials={n_trials} must be a positive integer")
    storage = Path(storage)
    storage.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=runs.study_name(runs.tasks_slug(train_config.task), train_config.label or petl_config.method, petl_config.sparsity),
        storage=JournalStorage(JournalFileBackend(str(storage))),
        load_if_exists=True,
        direction="maximize",
        pruner=_pruner(pruner),
    )
    # A resumed study (or a second worker) must not replay the first suggestions: offset the seed.
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed + len(_counted(study)), n_startup_trials=2)
    distributions = {name: optuna.distributions.FloatDistribution(spec["low"], spec["high"], log=bool(spec.get("log")))
                     for name, spec in search_space.items()}
    trials_dir = storage.parent / runs.TRIALS
    lock = storage.with_name(storage.name + ".ask.lock")  # not ".lock": Optuna's own journal lock has that name
    while True:
        with _locked(lock):
            _fail_stale(study, trials_dir, stale_after_s)
            if len(_counted(study)) >= n_trials:
                break
            trial = study.ask(distributions)
            trial.set_user_attr("worker", _WORKER)
        _run_trial(study, trial, train_config, petl_config, trials_dir / f"trial-{trial.number}")
    with suppress(OSError):  # empty unless another worker is training a trial
        trials_dir.rmdir()
    finished = _finished(study.trials)
    if len(finished) < n_trials:
        return None  # other workers are still running trials; the last of them writes out
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        reasons = [t.user_attrs["pruned_because"] for t in study.trials if "pruned_because" in t.user_attrs]
        raise ValueError(f"study {study.study_name}: no trial finished ({len(finished)} pruned"
                         + (f"; first: {reasons[0]}" if reasons else "") + "); narrow the search space")
    best = study.best_trial
    result = {
        **best.params,
        "_study": {
            "name": study.study_name,
            "best_value": best.value,
            "best_trial": best.number,
            "n_trials": len(finished),
            "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
            "n_failed": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials),
            "sampler_seed": sampler_seed,
            "pruner": pruner,
            "search_space": search_space,
            "objective": "best validation combined_score",
        },
    }
    if out is not None:
        write_json(out, result)
    return result


_WORKER = f"{socket.gethostname()}:{os.getpid()}"


def _run_trial(study: optuna.Study, trial: optuna.Trial, train_config: TrainConfig, petl_config: PETLConfig, trial_out: Path) -> None:
    """Train one trial in its own directory (removed afterwards) and tell the study how it ended."""
    shutil.rmtree(trial_out, ignore_errors=True)
    trial_out.mkdir(parents=True)
    overrides = {name: trial.suggest_float(name, d.low, d.high, log=d.log) for name, d in trial.distributions.items()}
    config = dataclasses.replace(train_config, out=str(trial_out), keep_checkpoints=False, **overrides)
    before = timing.mark()
    try:
        with _heartbeat(trial_out / "heartbeat"):
            fitted = fit(config, petl_config, callbacks=[_Report(trial)])
        outcome: dict[str, Any] = {"values": fitted.trainer.state.best_metric}
    except optuna.TrialPruned:
        outcome = {"state": optuna.trial.TrialState.PRUNED}
    except Diverged as diverged:  # too high a learning rate is a bad trial, not a failed study
        trial.set_user_attr("pruned_because", str(diverged))
        outcome = {"state": optuna.trial.TrialState.PRUNED}
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    finally:
        shutil.rmtree(trial_out, ignore_errors=True)
    trial.set_user_attr("timing", timing.breakdown(before))  # where the tuning job's time went (propetl.job_time)
    study.tell(trial, **outcome)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One worker at a time decides whether the study needs another trial."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _heartbeat(path: Path, interval: float = HEARTBEAT_S) -> Iterator[None]:
    """Touch ``path`` every ``interval`` seconds while the trial runs (its liveness for other hosts)."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            path.touch()
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _fail_stale(study: optuna.Study, trials_dir: Path, stale_after_s: float) -> None:
    """Mark FAIL every RUNNING trial whose worker is gone, so that another trial takes its place."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(RUNNING,)):
        worker_host, _, pid = trial.user_attrs.get("worker", ":").partition(":")
        beat = trials_dir / f"trial-{trial.number}" / "heartbeat"
        silent = time.time() - (beat.stat().st_mtime if beat.exists() else trial.datetime_start.timestamp())
        if (worker_host == host and pid.isdigit() and not _alive(int(pid))) or silent > stale_after_s:
            log.warning("trial %d: its worker %s is gone; marked FAIL, another trial replaces it", trial.number, trial.user_attrs.get("worker"))
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count towards n_trials: finished ones and those still running."""
    return study.get_trials(deepcopy=False, states=(*FINISHED, RUNNING))


def _finished(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state in FINISHED]
