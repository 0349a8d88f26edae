"""Optuna tuning of a run's learning rates on the validation split only.

One study per (task, grid entry[, sparsity]) in a journal file, so
``optuna-dashboard JOURNAL`` opens it and an interrupted study resumes with the
trials it has: only finished (complete or pruned) trials count towards
``n_trials``. Intermediate validation scores feed the pruner.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from transformers import TrainerCallback

from . import runs
from .atomic import write_json
from .config import PETLConfig, TrainConfig, check_search_space
from .training import Diverged, fit

PRUNERS = ("median", "hyperband", "none")


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
    out: str | Path,
    sampler_seed: int = 0,
    pruner: str = "median",
) -> dict[str, Any]:
    """Run the missing trials of the study and write ``out`` (best params + study summary)."""
    check_search_space(search_space)
    if n_trials <= 0:
        raise ValueError(f"n_trials={n_trials} must be a positive integer")
    storage = Path(storage)
    storage.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=f"{train_config.task}/{train_config.label or petl_config.method}/s{petl_config.sparsity}",
        storage=JournalStorage(JournalFileBackend(str(storage))),
        load_if_exists=True,
        direction="maximize",
        pruner=_pruner(pruner),
    )
    # A resumed study must not replay the first suggestions: offset the seed by the trials it has.
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed + len(_finished(study.trials)), n_startup_trials=2)
    trials_dir = storage.parent / runs.TRIALS

    def objective(trial: optuna.Trial) -> float:
        overrides = {name: trial.suggest_float(name, spec["low"], spec["high"], log=bool(spec.get("log"))) for name, spec in search_space.items()}
        trial_out = trials_dir / f"trial-{trial.number}"
        shutil.rmtree(trial_out, ignore_errors=True)
        config = dataclasses.replace(train_config, out=str(trial_out), keep_checkpoints=False, **overrides)
        try:
            fitted = fit(config, petl_config, callbacks=[_Report(trial)])
            return fitted.trainer.state.best_metric
        except Diverged as diverged:  # too high a learning rate is a bad trial, not a failed study
            trial.set_user_attr("pruned_because", str(diverged))
            raise optuna.TrialPruned(str(diverged)) from None
        finally:
            shutil.rmtree(trial_out, ignore_errors=True)

    remaining = n_trials - len(_finished(study.trials))
    if remaining > 0:
        study.optimize(objective, n_trials=remaining)
    shutil.rmtree(trials_dir, ignore_errors=True)
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        reasons = [t.user_attrs["pruned_because"] for t in study.trials if "pruned_because" in t.user_attrs]
        raise ValueError(f"study {study.study_name}: no trial finished ({len(study.trials)} pruned"
                         + (f"; first: {reasons[0]}" if reasons else "") + "); narrow the search space")
    best = study.best_trial
    result = {
        **best.params,
        "_study": {
            "name": study.study_name,
            "best_value": best.value,
            "best_trial": best.number,
            "n_trials": len(_finished(study.trials)),
            "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
            "sampler_seed": sampler_seed,
            "pruner": pruner,
            "search_space": search_space,
            "objective": "best validation combined_score",
        },
    }
    write_json(out, result)
    return result


def _finished(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in trials if t.state in done]
