"""A study's job-slot time by phase: how much of it went into training steps and evaluation.

Job-slot time is the sum of every job's wall time (Snakemake's ``benchmarks/`` files), the
core-seconds a study occupies. A train job's time splits into the phases its run recorded
(``metrics.json`` ``timing``, see :mod:`propetl.timing`); a tuning study's jobs into the phases
of its trials (Optuna user attribute ``timing``) and what is left (start-up, Optuna, trial
set-up); prepare, tables and figures count whole. What no phase claims is ``other``
(shell, interpreter exit, Snakemake's job wrapper).

A tuning study's journal outlives its jobs (an interrupted or committed study resumes with the
trials it has), so only the trials that ran while one of its jobs ran count: Snakemake writes a
job's benchmark file as the job ends, which dates the job to ``[mtime - s, mtime]``. Tables of a
study are made where it ran; results copied without their files' times would count every trial
as earlier than its job.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from . import runs
from .atomic import write_text
from .timing import BREAKDOWN

# phases that are what a study is for
USEFUL = ("train_steps", "validation", "test")


def _job_seconds(tsv: Path) -> float:
    return float(pd.read_csv(tsv, sep="\t")["s"].iloc[-1])


def _job_window(tsv: Path, seconds: float) -> tuple[float, float]:
    """When a job of ``seconds`` ran (epoch seconds): its benchmark file is written as it ends."""
    end = tsv.stat().st_mtime
    return end - seconds, end


def _run_rows(root: Path, run: str, job_seconds: float) -> list[dict]:
    """A train job of the run named ``run`` -> the run's recorded phases and ``other``."""
    metrics = json.loads((root / runs.RUNS / run / runs.METRICS).read_text())
    if "timing" not in metrics:  # trained before runs recorded their phases
        return [{"rule": "train", "phase": "unsplit (run without timing)", "seconds": job_seconds}]
    phases = [{"rule": "train", "phase": name, "seconds": metrics["timing"][f"{name}_s"]} for name in BREAKDOWN]
    return phases + [{"rule": "train", "phase": "other", "seconds": job_seconds - sum(p["seconds"] for p in phases)}]


def _tuning_rows(root: Path, study_dir: Path, windows: list[tuple[float, float]]) -> list[dict]:
    """All jobs of one Optuna study (tune and tune_worker): the phases of the trials they ran, the rest
    is tuning overhead. A trial that ran outside every job's window (an earlier invocation's) is not
    in this job-slot time, so its phases are not either."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = root / study_dir / runs.JOURNAL
    storage = JournalStorage(JournalFileBackend(str(journal)))
    slack = 1.0  # seconds: the file system's and Optuna's clocks are read at slightly different moments

    def in_a_job(trial: optuna.trial.FrozenTrial) -> bool:
        start, end = trial.datetime_start.timestamp(), trial.datetime_complete.timestamp()
        return any(begin - slack <= start and end <= until + slack for begin, until in windows)

    trials = [t for study in optuna.get_all_study_summaries(storage)
              for t in optuna.load_study(study_name=study.study_name, storage=storage).trials
              if "timing" in t.user_attrs and in_a_job(t)]
    job_seconds = sum(until - begin for begin, until in windows)
    rows = [{"rule": "tune", "phase": name, "seconds": sum(t.user_attrs["timing"][f"{name}_s"] for t in trials)}
            for name in BREAKDOWN if name != "startup"]
    rows.append({"rule": "tune", "phase": "tuning overhead", "seconds": job_seconds - sum(row["seconds"] for row in rows)})
    return rows


def job_time(root: str | Path) -> pd.DataFrame:
    """Seconds and share of the job-slot time per (rule, phase) for every job benchmarked under ``root``."""
    root = Path(root)
    rows: list[dict] = []
    tuning: dict[Path, list[tuple[float, float]]] = {}
    for tsv in sorted((root / runs.BENCHMARKS).rglob("*.tsv")):
        rule, name = runs.benchmarked_job(tsv, root)
        seconds = _job_seconds(tsv)
        if rule == "train":
            rows += _run_rows(root, name, seconds)
        elif rule == "tune":  # a study's tune job, or one of its workers'
            study = Path(runs.TUNING) / runs.study_of(name)
            tuning.setdefault(study, []).append(_job_window(tsv, seconds))
        else:
            rows.append({"rule": rule, "phase": "whole job", "seconds": seconds})
    for study, windows in tuning.items():
        rows += _tuning_rows(root, study, windows)
    if not rows:
        raise FileNotFoundError(f"no Snakemake benchmark files under {root / runs.BENCHMARKS}")
    table = pd.DataFrame(rows).groupby(["rule", "phase"], sort=False, as_index=False)["seconds"].sum()
    table["share_pct"] = 100 * table["seconds"] / table["seconds"].sum()
    return table


def write_job_time(root: str | Path, out: str | Path) -> list[Path]:
    """job_time.csv and job_time.md (with the training + evaluation share on top) in ``out``."""
    table = job_time(root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    useful = table[table["phase"].isin(USEFUL)]["share_pct"].sum()
    shown = table.assign(seconds=table["seconds"].round(1), share_pct=table["share_pct"].round(1))
    markdown = (f"Job-slot time {table['seconds'].sum() / 60:.1f} min over all jobs; "
                f"training steps and evaluation (validation + test): **{useful:.1f}%**.\n\n"
                + shown.to_markdown(index=False) + "\n")
    csv, md = out / "job_time.csv", out / "job_time.md"
    write_text(csv, shown.to_csv(index=False))
    write_text(md, markdown)
    return [csv, md]
