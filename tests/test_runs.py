"""The layout of a results root: every name spelled once, and read back the way it was written."""

from pathlib import Path

from propetl import runs


def test_a_method_without_sparsity_sits_in_s_dash_in_folders_and_study_names():
    assert runs.run_dir("rt-polarity", "adapter", None, 1) == "runs/rt-polarity/adapter/s-/seed1"
    assert runs.tuning_dir("rt-polarity", "adapter", None) == "tuning/rt-polarity/adapter/s-"
    assert runs.study_name("rt-polarity", "adapter", None) == "rt-polarity/adapter/s-"  # never sNone
    assert runs.study_name("rt-polarity", "propetl-adapter", 0.5) == "rt-polarity/propetl-adapter/s0.5"
    assert runs.study_name("rt-polarity", "propetl-adapter", "{sparsity}") == "rt-polarity/propetl-adapter/s{sparsity}"  # a wildcard


def test_a_task_file_is_named_by_its_stem_and_several_tasks_by_their_names_joined():
    assert runs.task_slug("data/reviews.csv") == "reviews" and runs.task_slug("rt-polarity") == "rt-polarity"
    assert runs.tasks_slug(["rt-polarity", "data/reviews.jsonl"]) == "rt-polarity+reviews"


def test_job_logs_and_benchmarks_are_named_after_their_run_or_study_and_read_back(tmp_path):
    run = runs.run_name("rt-polarity", "adapter", None, 2)
    study = runs.study_name("snli", "propetl-adapter", 0.5)
    worker = runs.worker_name(study, 3)
    assert runs.job_file(runs.LOGS, "train", run) == "logs/train/rt-polarity/adapter/s-/seed2.log"
    assert runs.job_file(runs.BENCHMARKS, "tune", worker) == "benchmarks/tune/snli/propetl-adapter/s0.5/worker3.tsv"
    assert runs.job_file(runs.BENCHMARKS, "tables") == "benchmarks/tables.tsv"
    for rule, name in (("train", run), ("tune", study), ("tune", worker), ("prepare", "snli"), ("tables", None)):
        assert runs.benchmarked_job(tmp_path / runs.job_file(runs.BENCHMARKS, rule, name), tmp_path) == (rule, name)
    assert runs.study_of(worker) == runs.study_of(study) == study
    assert Path(runs.run_dir("rt-polarity", "adapter", None, 2)) == Path(runs.RUNS) / run
