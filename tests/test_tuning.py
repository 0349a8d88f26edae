"""`propetl tune`: Optuna on the validation split, resumable studies, search spaces checked first."""

import json

import optuna
import pytest
from conftest import quick_config as config
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from propetl import PETLConfig
from propetl.config import TrainConfig
from propetl.tuning import tune


def test_tuning_uses_validation_resumes_with_the_trials_it_has_and_writes_best_params(sentiment_csv, tmp_path):
    space = {"lr": {"low": 1e-4, "high": 1e-1, "log": True}}
    petl = PETLConfig(method="propetl-adapter")
    cfg = config(sentiment_csv, tmp_path / "unused", max_steps=8)
    first = tune(cfg, petl, space, n_trials=2, storage=tmp_path / "study" / "journal.log", out=tmp_path / "study" / "best_params.json")
    assert first["_study"]["n_trials"] == 2
    again = tune(cfg, petl, space, n_trials=3, storage=tmp_path / "study" / "journal.log", out=tmp_path / "study" / "best_params.json")
    assert again["_study"]["n_trials"] == 3
    best = json.loads((tmp_path / "study" / "best_params.json").read_text())
    assert 1e-4 <= best["lr"] <= 1e-1 and best["_study"]["objective"] == "best validation combined_score"
    assert not (tmp_path / "study" / "trials").exists()  # each trial's folder is gone, and then theirs
    study = optuna.load_study(study_name=best["_study"]["name"], storage=JournalStorage(JournalFileBackend(str(tmp_path / "study" / "journal.log"))))
    assert len(study.trials) == 3 and len({t.params["lr"] for t in study.trials}) == 3
    assert all(t.user_attrs["timing"]["train_steps_s"] > 0 and t.user_attrs["timing"]["validation_s"] > 0 for t in study.trials)
    assert study.best_value == best["_study"]["best_value"]


@pytest.mark.parametrize("space, message", [({}, "search space is empty"), ({"epochs": {"low": 1, "high": 2}}, "'epochs' is not tunable"), ({"lr": {"low": 1e-2, "high": 1e-3}}, "low < high")])
def test_bad_search_spaces_are_rejected(space, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        tune(TrainConfig(), PETLConfig(method="adapter"), space, n_trials=1, storage=tmp_path / "j.log", out=tmp_path / "b.json")


def test_a_diverging_trial_is_pruned_with_its_reason(sentiment_csv, tmp_path):
    space = {"lr": {"low": 1e4, "high": 2e4}, "head_lr": {"low": 1e4, "high": 2e4}}
    journal = tmp_path / "study" / "journal.log"
    with pytest.raises(ValueError, match=r"no trial finished \(1 pruned; first: diverged at step \d+: loss .*\); narrow the search space"):
        tune(config(sentiment_csv, tmp_path / "unused", max_steps=8), PETLConfig(method="adapter"), space,
             n_trials=1, storage=journal, out=tmp_path / "study" / "best_params.json")
    assert not (tmp_path / "study" / "best_params.json").exists()
    study = optuna.load_study(study_name=optuna.get_all_study_names(JournalStorage(JournalFileBackend(str(journal))))[0],
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED]
    assert study.trials[0].user_attrs["pruned_because"].startswith("diverged at step")


def _worker(args: tuple) -> dict | None:
    sentiment_csv, root, out = args
    space = {"lr": {"low": 1e-4, "high": 1e-1, "log": True}}
    cfg = config(sentiment_csv, root / "unused", max_steps=8)
    return tune(cfg, PETLConfig(method="adapter"), space, n_trials=5, storage=root / "study" / "journal.log", out=out)


def test_parallel_workers_on_one_study_finish_exactly_n_trials_without_failures(sentiment_csv, tmp_path):
    import multiprocessing

    best = tmp_path / "study" / "best_params.json"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_worker, [(sentiment_csv, tmp_path, best)] * 3)
    study = optuna.load_study(study_name=optuna.get_all_study_names(JournalStorage(JournalFileBackend(str(tmp_path / "study" / "journal.log"))))[0],
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "study" / "journal.log"))))
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3, 4]  # none lost, none duplicated, none extra
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) > 1  # the trials really were spread over workers
    written = [r for r in results if r is not None]
    assert written and all(r["_study"]["n_trials"] == 5 for r in written)
    assert json.loads(best.read_text())["_study"]["best_value"] == study.best_value


def test_a_trial_left_running_by_a_killed_worker_is_failed_and_replaced(sentiment_csv, tmp_path):
    space = {"lr": {"low": 1e-4, "high": 1e-1, "log": True}}
    journal = tmp_path / "study" / "journal.log"
    cfg = config(sentiment_csv, tmp_path / "unused", max_steps=8)
    tune(cfg, PETLConfig(method="adapter"), space, n_trials=1, storage=journal, out=None)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    orphan = study.ask()  # a trial of a worker on this host whose process is gone (no pid is that large)
    orphan.set_user_attr("worker", f"{__import__('socket').gethostname()}:999999999")
    result = tune(cfg, PETLConfig(method="adapter"), space, n_trials=2, storage=journal, out=tmp_path / "best.json")
    states = {t.number: t.state for t in optuna.load_study(study_name=study.study_name, storage=storage).trials}
    assert states[orphan.number] == optuna.trial.TrialState.FAIL
    assert result["_study"]["n_trials"] == 2 and result["_study"]["n_failed"] == 1
