"""The layout of a results root and of one run directory: the one place that spells it.

A results root holds ``runs/{task}/{label}/s{sparsity}/seed{seed}/`` (``s-`` for methods
without a sparsity) and ``tuning/{task}/{label}/s{sparsity}/`` (``best_params.json``, ``journal.log``, ``trials/`` while
trials run, ``workers/`` markers of parallel tuning workers). A run directory holds
``metrics.json`` (written last and atomically: its presence means the run finished),
``history.jsonl`` (one line per validation pass), ``artifact/`` (the saved PETL modules),
``provenance.json``, ``train.log``, ``data/`` (the tokenised task, unless shared) and
``checkpoints/`` while it trains. Training writes these names, the pipeline plans them and
the tables read them, all through this module.
"""

from __future__ import annotations

from pathlib import Path

METRICS = "metrics.json"
HISTORY = "history.jsonl"
ARTIFACT = "artifact"
PROVENANCE = "provenance.json"
TRAIN_LOG = "train.log"
DATA = "data"
CHECKPOINTS = "checkpoints"
BEST_PARAMS = "best_params.json"
JOURNAL = "journal.log"
TRIALS = "trials"
WORKERS = "workers"


TASK_FILE_SUFFIXES = (".csv", ".jsonl", ".parquet")


def task_slug(task: str) -> str:
    """A task's name in folders, metrics and multi-task models: the registered name, or a task file's stem."""
    path = Path(task)
    return path.stem if path.suffix in TASK_FILE_SUFFIXES else task


def sparsity_name(sparsity: float | str | None) -> str:
    """A sparsity as it appears in folder names and a job's wildcards: ``0.5``, ``-`` for none (strings pass through)."""
    if isinstance(sparsity, str):
        return sparsity
    return "-" if sparsity is None else f"{float(sparsity):g}"


def sparsity_dir(sparsity: float | str | None) -> str:
    """The folder of a sparsity: ``s0.5``, ``s-`` for methods without one."""
    return f"s{sparsity_name(sparsity)}"


def run_dir(task: str, label: str, sparsity: float | str | None, seed: int | str) -> str:
    """A run's directory relative to the results root."""
    return f"runs/{task}/{label}/{sparsity_dir(sparsity)}/seed{seed}"


def tuning_dir(task: str, label: str, sparsity: float | str | None) -> str:
    """An Optuna study's directory relative to the results root (best_params.json, journal.log)."""
    return f"tuning/{task}/{label}/{sparsity_dir(sparsity)}"


RUN_METRICS_GLOB = f"{run_dir('*', '*', '*', '*')}/{METRICS}"


class RunFiles:
    """The files of one run directory, by what they hold."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.metrics, self.history, self.artifact, self.provenance, self.log, self.data, self.checkpoints = (
            self.root / name for name in (METRICS, HISTORY, ARTIFACT, PROVENANCE, TRAIN_LOG, DATA, CHECKPOINTS)
        )
