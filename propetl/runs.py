"""The layout of a results root and of one run directory: the one place that spells it.

A results root holds ``runs/{task}/{label}/s{sparsity}/seed{seed}/`` (``s-`` for methods
without a sparsity) and ``tuning/{task}/{label}/s{sparsity}/`` (``best_params.json``, ``journal.log``, ``trials/`` while
trials run, ``workers/`` markers of parallel tuning workers); the folder below ``tuning/`` is
also the Optuna study's name. Each job's log and Snakemake benchmark are
``logs/{rule}/{name}.log`` and ``benchmarks/{rule}/{name}.tsv``, named as its run, study,
study worker or task (``logs/{rule}.log`` for the tables, figures and job-time jobs). A run directory holds
``metrics.json`` (written last and atomically: its presence means the run finished),
``history.jsonl`` (one line per validation pass), ``artifact/`` (the saved PETL modules),
``provenance.json``, ``train.log``, ``data/`` (the tokenised task, unless shared) and
``checkpoints/`` while it trains. Training writes these names, the pipeline plans them and
the tables read them, all through this module.
"""

from __future__ import annotations

from pathlib import Path

RUNS = "runs"
TUNING = "tuning"
LOGS = "logs"
BENCHMARKS = "benchmarks"
METRICS = "metrics.json"
PREDICTIONS = "test_predictions.parquet"  # one row per test example (and task): what the paired bootstrap resamples
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


GROUP_SEP = "+"  # a multi-task run's folder: its tasks' slugs joined


def tasks_slug(tasks: list[str]) -> str:
    """The name of a run's tasks in folders and metrics: one task's slug, or several joined (a multi-task run)."""
    return GROUP_SEP.join(task_slug(task) for task in tasks)


def sparsity_name(sparsity: float | str | None) -> str:
    """A sparsity as it appears in folder names and a job's wildcards: ``0.5``, ``-`` for none (strings pass through)."""
    if isinstance(sparsity, str):
        return sparsity
    return "-" if sparsity is None else f"{float(sparsity):g}"


def sparsity_dir(sparsity: float | str | None) -> str:
    """The folder of a sparsity: ``s0.5``, ``s-`` for methods without one."""
    return f"s{sparsity_name(sparsity)}"


def study_name(task: str, label: str, sparsity: float | str | None) -> str:
    """An Optuna study's name and its folder below ``tuning/``, e.g. ``rt-polarity/adapter/s-``."""
    return f"{task}/{label}/{sparsity_dir(sparsity)}"


def run_name(task: str, label: str, sparsity: float | str | None, seed: int | str) -> str:
    """A run's name: its folder below ``runs/``, e.g. ``rt-polarity/adapter/s-/seed1``."""
    return f"{study_name(task, label, sparsity)}/seed{seed}"


def worker_name(study: str, worker: int | str) -> str:
    """The name of one of a study's parallel tuning workers (its job's log and benchmark)."""
    return f"{study}/worker{worker}"


def run_dir(task: str, label: str, sparsity: float | str | None, seed: int | str) -> str:
    """A run's directory relative to the results root."""
    return f"{RUNS}/{run_name(task, label, sparsity, seed)}"


def tuning_dir(task: str, label: str, sparsity: float | str | None) -> str:
    """An Optuna study's directory relative to the results root (best_params.json, journal.log)."""
    return f"{TUNING}/{study_name(task, label, sparsity)}"


def worker_marker(task: str, label: str, sparsity: float | str | None, worker: int | str) -> str:
    """The file a parallel tuning worker leaves when it has no trial left to run (relative to the results root)."""
    return f"{tuning_dir(task, label, sparsity)}/{WORKERS}/worker{worker}.done"


def job_file(folder: str, rule: str, name: str | None = None) -> str:
    """A job's log (``folder`` LOGS) or Snakemake benchmark (BENCHMARKS) relative to the results root.

    ``name``: the run's (train), the study's (tune), a worker's (tune_worker), the task (prepare),
    or None for a study's one job of ``rule`` (tables, figures, job_time).
    """
    suffix = ".tsv" if folder == BENCHMARKS else ".log"
    return f"{folder}/{rule}{suffix}" if name is None else f"{folder}/{rule}/{name}{suffix}"


def benchmarked_job(tsv: Path, root: Path) -> tuple[str, str | None]:
    """The rule and name of the job a benchmark file below ``root`` measured (:func:`job_file` read back)."""
    rule, *name = tsv.relative_to(root / BENCHMARKS).with_suffix("").parts
    return rule, "/".join(name) or None


def study_of(name: str) -> str:
    """The study a tune or tune_worker job's name belongs to (a worker's name is the study's, extended)."""
    return "/".join(name.split("/")[:3])


RUN_METRICS_GLOB = f"{run_dir('*', '*', '*', '*')}/{METRICS}"


class RunFiles:
    """The files of one run directory, by what they hold."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.metrics, self.history, self.artifact, self.provenance, self.log, self.data, self.checkpoints, self.predictions = (
            self.root / name for name in (METRICS, HISTORY, ARTIFACT, PROVENANCE, TRAIN_LOG, DATA, CHECKPOINTS, PREDICTIONS)
        )
