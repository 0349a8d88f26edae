"""`propetl train` / `propetl tune`: outputs, resumability, reproducibility, clear errors."""

import dataclasses
import json
import random

import pytest
import torch
from transformers import Trainer, TrainerCallback

from propetl import PETLConfig, load_petl
from propetl.cli import build_parser, main
from propetl.data import load_prepared
from propetl.backbones import load_model
from propetl.config import TrainConfig
from propetl.training import fit, parameter_groups, resolve, train
from propetl.tuning import tune

WORDS = {1: ["good", "great", "fine", "superb", "lovely"], 0: ["bad", "awful", "dull", "poor", "boring"]}


@pytest.fixture(scope="module")
def sentiment_csv(tmp_path_factory):
    """A small local task file whose label is learnable from single words."""
    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(600):
        label = i % 2
        rows.append(f"{' '.join(rng.choice(WORDS[label]) for _ in range(3))} movie number {i},{'pos' if label else 'neg'}")
    path = tmp_path_factory.mktemp("task") / "sentiment.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def config(task: str, out, **kwargs) -> TrainConfig:
    base = dict(model="tiny-bert", task=task, out=str(out), max_steps=16, eval_every=4, batch_size=16, lr=5e-3, logging_steps=4, threads=1)
    return TrainConfig(**{**base, **kwargs})


def test_a_run_writes_the_documented_outputs(sentiment_csv, tmp_path):
    result = train(config(sentiment_csv, tmp_path / "run", label="pa"), PETLConfig(method="propetl-adapter", sparsity=0.5))
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["artifact", "data", "history.jsonl", "metrics.json", "provenance.json", "train.log"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    for key in ("task", "label", "method", "sparsity", "seed", "data_seed", "model", "val", "test", "storage", "trainable_params",
                "steps", "best_step", "train_time_s", "examples_per_s", "peak_memory_mb", "artifact_bytes"):
        assert key in metrics, key
    assert metrics["label"] == "pa" and metrics["steps"] == 16 and metrics["best_step"] in (4, 8, 12, 16)
    assert {"accuracy", "combined_score"} <= metrics["test"].keys()
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [4, 8, 12, 16]
    assert max(h["combined_score"] for h in history) == pytest.approx(metrics["val"]["combined_score"])
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["config"]["train"]["seed"] == 1 and provenance["config"]["petl"]["method"] == "propetl-adapter"
    assert provenance["packages"]["torch"] == torch.__version__.split("+")[0] or provenance["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    assert {"commit", "dirty"} <= provenance["git"].keys() and provenance["hardware"]["cpu_count"] >= 1
    assert not (run / "checkpoints").exists()


def test_the_artifact_reproduces_the_reported_test_score(sentiment_csv, tmp_path):
    result = train(config(sentiment_csv, tmp_path / "run"), PETLConfig(method="propetl-lora", lora_r=4, lora_alpha=8))
    data, info = load_prepared(tmp_path / "run" / "data")
    model = load_petl(load_model("tiny-bert", info["num_labels"]), tmp_path / "run" / "artifact")
    test = data["test"]
    correct = 0
    with torch.no_grad():
        for row in test:
            logits = model(input_ids=torch.tensor([row["input_ids"]]), attention_mask=torch.tensor([row["attention_mask"]])).logits
            correct += int(logits.argmax(-1).item() == row["labels"])
    assert correct / len(test) == pytest.approx(result["test"]["accuracy"])


def test_same_seed_same_numbers_and_another_seed_differs(sentiment_csv, tmp_path):
    petl = PETLConfig(method="propetl-adapter")
    first = train(config(sentiment_csv, tmp_path / "a"), petl)
    second = train(config(sentiment_csv, tmp_path / "b"), petl)
    other = train(config(sentiment_csv, tmp_path / "c", seed=2), petl)
    assert first["val"] == second["val"] and first["test"] == second["test"]
    history = lambda run: (tmp_path / run / "history.jsonl").read_text()  # noqa: E731
    assert history("a") == history("b") != history("c")


class _Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 10:
            raise KeyboardInterrupt("simulated kill")


def test_a_killed_run_resumes_and_ends_like_an_uninterrupted_one(sentiment_csv, tmp_path):
    petl = PETLConfig(method="propetl-adapter")
    uninterrupted = train(config(sentiment_csv, tmp_path / "whole"), petl)
    with pytest.raises(KeyboardInterrupt):
        fit(config(sentiment_csv, tmp_path / "killed"), petl, callbacks=[_Kill()])
    assert (tmp_path / "killed" / "checkpoints" / "checkpoint-8").is_dir()
    assert not (tmp_path / "killed" / "metrics.json").exists()
    with (tmp_path / "killed" / "history.jsonl").open("a") as f:
        f.write('{"step": 12, "accur')  # a kill in the middle of writing a record
    clock = tmp_path / "killed" / "checkpoints" / "checkpoint-8" / "train_clock.json"
    assert json.loads(clock.read_text())["train_time_s"] > 0
    clock.write_text('{"train_time_s": 1000.0}')  # pretend the first session was long
    resumed = train(config(sentiment_csv, tmp_path / "killed"), petl)
    assert 1000 < resumed["train_time_s"] < 1000 + uninterrupted["train_time_s"] * 10  # the whole cost
    assert resumed["examples_per_s"] == pytest.approx(resumed["steps"] * 16 / resumed["train_time_s"])
    assert resumed["val"] == uninterrupted["val"] and resumed["test"] == uninterrupted["test"]
    assert (tmp_path / "killed" / "history.jsonl").read_text() == (tmp_path / "whole" / "history.jsonl").read_text()
    assert "resuming from" in (tmp_path / "killed" / "train.log").read_text()


def test_a_checkpoint_without_its_clock_gives_an_unknown_train_time_not_a_wrong_one(sentiment_csv, tmp_path):
    petl = PETLConfig(method="adapter")
    with pytest.raises(KeyboardInterrupt):
        fit(config(sentiment_csv, tmp_path), petl, callbacks=[_Kill()])
    (tmp_path / "checkpoints" / "checkpoint-8" / "train_clock.json").unlink()  # killed before on_save wrote it
    resumed = train(config(sentiment_csv, tmp_path), petl)
    assert resumed["train_time_s"] is None and resumed["examples_per_s"] is None
    assert "train_time_s will be null" in (tmp_path / "train.log").read_text()


def test_a_rerun_with_another_config_starts_afresh_instead_of_resuming(sentiment_csv, tmp_path):
    petl = PETLConfig(method="propetl-adapter")
    with pytest.raises(KeyboardInterrupt):
        fit(config(sentiment_csv, tmp_path / "run"), petl, callbacks=[_Kill()])
    changed = train(config(sentiment_csv, tmp_path / "run", lr=1e-3), petl)
    fresh = train(config(sentiment_csv, tmp_path / "fresh", lr=1e-3), petl)
    assert "discarding checkpoints of another config" in (tmp_path / "run" / "train.log").read_text()
    assert changed["val"] == fresh["val"] and changed["test"] == fresh["test"]


def test_prepared_data_of_another_split_is_refused(sentiment_csv, tmp_path):
    from propetl.data import prepare_task

    prepared = prepare_task(sentiment_csv, "tiny-bert", tmp_path / "prepared", data_seed=0)
    with pytest.raises(ValueError, match="was made with data_seed=0, but this run has data_seed=1"):
        train(config(sentiment_csv, tmp_path / "run", data_seed=1, prepared=str(prepared)), PETLConfig(method="adapter"))


def test_tune_requires_the_best_params_path():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tune", "--method", "adapter", "--search-space", "{}", "--storage", "j.log"])
    args = build_parser().parse_args(["tune", "--method", "adapter", "--search-space", "{}", "--storage", "j.log", "--out", "b.json"])
    assert args.out == "b.json"


def test_mask_scores_head_and_petl_parameters_get_their_own_learning_rates():
    from propetl import apply_petl

    model = apply_petl(load_model("tiny-bert", 2), PETLConfig(method="propetl-adapter"))
    cfg = resolve(TrainConfig(lr=1e-3, head_lr=5e-3), PETLConfig(method="propetl-adapter"))
    decay = Trainer.get_decay_parameter_names(None, model)
    groups = {g["name"]: g for g in parameter_groups(model, cfg, decay)}
    assert groups["petl"]["lr"] == 1e-3 and groups["head"]["lr"] == 5e-3 and groups["mask_scores"]["lr"] == 3e-3  # paper mask_lr
    assert all(p.dim() >= 2 for p in groups["mask_scores"]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == sum(1 for p in model.parameters() if p.requires_grad)


def test_weight_decay_reaches_weights_and_mask_scores_but_never_biases():
    # official trainer.py: every parameter decays except biases and LayerNorm weights, the mask
    # scores included (with the mask learning rate)
    from propetl import apply_petl

    model = apply_petl(load_model("tiny-bert", 2), PETLConfig(method="propetl-adapter"))
    cfg = resolve(TrainConfig(weight_decay=0.1, mask_weight_decay=0.2), PETLConfig(method="propetl-adapter"))
    groups = {g["name"]: g for g in parameter_groups(model, cfg, Trainer.get_decay_parameter_names(None, model))}
    names = {id(p): n for n, p in model.named_parameters()}
    assert groups["mask_scores"]["weight_decay"] == 0.2 and "mask_scores/no_decay" not in groups
    assert groups["petl"]["weight_decay"] == groups["head"]["weight_decay"] == 0.1
    assert {names[id(p)].rsplit(".", 1)[1] for p in groups["petl"]["params"]} == {"down", "up"}
    for name in ("petl/no_decay", "head/no_decay"):
        assert groups[name]["weight_decay"] == 0.0
        assert all("bias" in names[id(p)] for p in groups[name]["params"])


def test_paper_defaults_fill_unset_learning_rates():
    cfg = resolve(TrainConfig(), PETLConfig(method="propetl-lora"))
    assert (cfg.lr, cfg.mask_lr, cfg.head_lr) == (1e-4, 3e-2, 1e-4)  # run_lora.sh


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "adapter", "--max-steps", "0"], "max_steps=0 must be a positive integer"),
        (["--method", "adapter", "--task", "imdb"], "imdb"),
        (["--method", "propetl-lora", "--sparsity", "1.5"], r"sparsity=1.5 is outside \[0, 1\)"),
        (["--method", "magic"], "method='magic' is not supported"),
        (["--method", "adapter", "--batch-size", "-1"], "batch_size=-1 must be a positive integer"),
        (["--method", "adapter", "--max-steps", "5", "--eval-every", "10"], "eval_every=10 exceeds max_steps=5"),
        (["--method", "adapter", "--mask-mode", "random"], "mask_mode='random' given for method 'adapter'"),
    ],
)
def test_bad_input_fails_with_one_line_before_any_work(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "tiny-bert", "--out", str(tmp_path / "run"), *argv])
    assert exit_info.value.code != 0
    import re

    assert re.search(message, str(exit_info.value.code))
    assert "\n" not in str(exit_info.value.code)
    assert not (tmp_path / "run").exists()


def test_help_documents_every_config_key_with_its_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text
    for f in dataclasses.fields(PETLConfig):
        assert "--" + f.name.replace("_", "-") in text
    assert "(default: 32)" in text and "(default: minilm-l6)" in text


def test_params_file_overrides_flags(tmp_path, sentiment_csv):
    from propetl.cli import _configs

    (tmp_path / "best.json").write_text(json.dumps({"lr": 0.123, "_study": {"x": 1}}))
    args = build_parser().parse_args(["train", "--method", "adapter", "--lr", "0.5", "--params", str(tmp_path / "best.json")])
    train_config, petl = _configs(args)
    assert train_config.lr == 0.123 and petl.method == "adapter"
    (tmp_path / "bad.json").write_text(json.dumps({"learning_rate": 1}))
    args = build_parser().parse_args(["train", "--method", "adapter", "--params", str(tmp_path / "bad.json")])
    with pytest.raises(ValueError, match="unknown keys \\['learning_rate'\\]"):
        _configs(args)


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
    assert not (tmp_path / "study" / "trials").exists()
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name=best["_study"]["name"], storage=JournalStorage(JournalFileBackend(str(tmp_path / "study" / "journal.log"))))
    assert len(study.trials) == 3 and len({t.params["lr"] for t in study.trials}) == 3
    assert study.best_value == best["_study"]["best_value"]


@pytest.mark.parametrize("space, message", [({}, "search space is empty"), ({"epochs": {"low": 1, "high": 2}}, "'epochs' is not tunable"), ({"lr": {"low": 1e-2, "high": 1e-3}}, "low < high")])
def test_bad_search_spaces_are_rejected(space, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        tune(TrainConfig(), PETLConfig(method="adapter"), space, n_trials=1, storage=tmp_path / "j.log", out=tmp_path / "b.json")
