"""Where a job's time goes: phases of a process (propetl.timing) and of a study's jobs (propetl.job_time)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from propetl import timing
from propetl.job_time import job_time, write_job_time

REPO = Path(__file__).resolve().parent.parent


def test_phases_add_up_and_the_training_steps_exclude_what_interrupts_them():
    before = timing.mark()
    with timing.phase("train_loop"):
        time.sleep(0.05)
        with timing.phase("validation"):
            time.sleep(0.03)
        with timing.phase("checkpoint"):
            time.sleep(0.02)
    with timing.phase("test"):
        time.sleep(0.01)
    spent = timing.breakdown(before, startup=True)
    assert spent["startup_s"] == pytest.approx(before.age) and before.age > 0
    assert spent["train_steps_s"] == pytest.approx(0.05, abs=0.02)
    assert spent["validation_s"] == pytest.approx(0.03, abs=0.02) and spent["checkpoint_s"] == pytest.approx(0.02, abs=0.02)
    assert spent["test_s"] == pytest.approx(0.01, abs=0.02) and spent["load_s"] == spent["save_s"] == 0
    assert "startup_s" not in timing.breakdown(timing.mark())


def test_a_job_forked_by_the_warm_start_server_says_so_with_its_start_up(monkeypatch):
    monkeypatch.setattr(timing, "_forked", False)
    assert timing.breakdown(timing.mark(), startup=True)["warm_start"] is False
    timing.record_fork()  # what the warm-start server's child calls
    assert timing.breakdown(timing.mark(), startup=True)["warm_start"] is True
    assert "warm_start" not in timing.breakdown(timing.mark())  # a tuning trial's phases: no start-up of its own


def test_an_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="phase='warmup' is not one of load, train_loop"):
        with timing.phase("warmup"):
            pass


def _benchmark(path, seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:{seconds}\t100\n")


def _run(root, run, seconds, timed):
    _benchmark(root / "benchmarks/train" / f"{run}.tsv", seconds)
    path = root / "runs" / run / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"status": "ok", **({"timing": timed} if timed else {})}))


PHASES = {"startup_s": 5.0, "load_s": 1.0, "train_steps_s": 30.0, "validation_s": 4.0, "checkpoint_s": 1.0, "test_s": 6.0, "save_s": 0.5}


def test_a_study_job_time_splits_train_jobs_by_their_phases_and_tuning_jobs_by_their_trials(tmp_path):
    _run(tmp_path, "rt/adapter/s-/seed1", 50.0, PHASES)
    _run(tmp_path, "rt/lora/s-/seed1", 20.0, None)  # trained before runs recorded their phases
    _benchmark(tmp_path / "benchmarks/prepare/rt.tsv", 3.0)
    _benchmark(tmp_path / "benchmarks/tables.tsv", 1.0)
    _tuning_study(tmp_path, trials=2)
    _benchmark(tmp_path / "benchmarks/tune/rt/adapter/s-.tsv", 40.0)  # written as the job that ran them ends

    table = job_time(tmp_path).set_index(["rule", "phase"])["seconds"]
    assert table["train", "train_steps"] == 30.0 and table["train", "startup"] == 5.0
    assert table["train", "other"] == pytest.approx(50.0 - sum(PHASES.values()))
    assert table["train", "unsplit (run without timing)"] == 20.0
    assert table["tune", "train_steps"] == 24.0 and table["tune", "validation"] == 6.0
    assert table["tune", "tuning overhead"] == pytest.approx(40.0 - 30.0)
    assert table["prepare", "whole job"] == 3.0 and table["tables", "whole job"] == 1.0
    assert table.sum() == pytest.approx(50 + 20 + 3 + 1 + 40)

    csv, markdown = write_job_time(tmp_path, tmp_path / "tables")
    shares = pd.read_csv(csv)["share_pct"]
    assert shares.sum() == pytest.approx(100, abs=0.2)
    useful = 100 * (30 + 4 + 6 + 24 + 6) / 114
    assert f"training steps and evaluation (validation + test): **{useful:.1f}%**" in markdown.read_text()


def _tuning_study(root, trials):
    """An Optuna journal of rt/adapter with ``trials`` finished trials of 12 s steps and 3 s validation each."""
    (root / "tuning/rt/adapter/s-").mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(root / "tuning/rt/adapter/s-/journal.log")))
    study = optuna.create_study(study_name="rt/adapter/s-", storage=storage)
    for _ in range(trials):
        trial = study.ask()
        trial.set_user_attr("timing", {**{key: 0.0 for key in PHASES if key != "startup_s"}, "train_steps_s": 12.0, "validation_s": 3.0})
        study.tell(trial, 0.5)


def test_trials_an_earlier_invocation_ran_are_not_counted_in_the_tuning_job_that_found_them_done(tmp_path):
    """A resumed (or committed) journal: the job only read the finished trials and wrote best_params.json."""
    _tuning_study(tmp_path, trials=2)
    tsv = tmp_path / "benchmarks/tune/rt/adapter/s-.tsv"
    _benchmark(tsv, 2.0)
    an_hour_later = time.time() + 3600
    os.utime(tsv, (an_hour_later, an_hour_later))  # the job ran for 2 s, an hour after the trials
    table = job_time(tmp_path).set_index(["rule", "phase"])["seconds"]
    assert table["tune", "train_steps"] == 0 and table["tune", "validation"] == 0
    assert table["tune", "tuning overhead"] == pytest.approx(2.0)
    assert table.sum() == pytest.approx(2.0)  # never more phase time than job time


def test_a_results_root_without_benchmarks_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Snakemake benchmark files under"):
        job_time(tmp_path)


def test_a_process_age_is_never_more_than_the_time_since_it_was_launched():
    started = time.perf_counter()
    age = float(subprocess.run([sys.executable, "-c", "from propetl import timing; print(timing.mark().age)"],
                               capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout)
    tick = 1 / os.sysconf("SC_CLK_TCK")  # a process's start is known to the clock tick
    assert 0 < age < time.perf_counter() - started + tick
