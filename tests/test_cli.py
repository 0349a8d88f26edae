"""The `propetl` command line: flags from the config fields, --params, one-line errors before any work."""

import dataclasses
import json
import re

import pytest

from propetl import PETLConfig
from propetl.cli import _configs, build_parser, main
from propetl.config import TrainConfig


def test_tune_writes_best_params_only_where_asked_and_needs_a_journal():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tune", "--method", "adapter", "--search-space", "{}", "--out", "b.json"])
    worker = build_parser().parse_args(["tune", "--method", "adapter", "--search-space", "{}", "--storage", "j.log"])
    assert worker.out is None  # a worker that only runs trials
    args = build_parser().parse_args(["tune", "--method", "adapter", "--search-space", "{}", "--storage", "j.log", "--out", "b.json"])
    assert args.out == "b.json"


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


@pytest.mark.parametrize("given, value", [([], None), (["--bf16"], True), (["--bf16", "false"], False), (["--bf16", "auto"], "auto")])
def test_bf16_is_a_switch_that_also_takes_auto(given, value):
    assert _configs(build_parser().parse_args(["train", "--method", "adapter", *given]))[0].bf16 == value


def test_a_bf16_value_other_than_true_false_or_auto_fails_in_one_line(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--method", "adapter", "--bf16", "maybe"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--bf16" in error and "'maybe' is not true, false or auto" in error


def test_params_file_overrides_flags(tmp_path):
    (tmp_path / "best.json").write_text(json.dumps({"lr": 0.123, "_study": {"x": 1}}))
    args = build_parser().parse_args(["train", "--method", "adapter", "--lr", "0.5", "--params", str(tmp_path / "best.json")])
    train_config, petl = _configs(args)
    assert train_config.lr == 0.123 and petl.method == "adapter"
    (tmp_path / "bad.json").write_text(json.dumps({"learning_rate": 1}))
    args = build_parser().parse_args(["train", "--method", "adapter", "--params", str(tmp_path / "bad.json")])
    with pytest.raises(ValueError, match="unknown keys \\['learning_rate'\\]"):
        _configs(args)
