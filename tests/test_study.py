"""propetl.study: a study config validated once and expanded into jobs, without Snakemake.

The pipeline's own behaviour (plans, the CI study end to end) is in test_workflow.py;
here every rule of the config is checked in-process, which is fast enough to try many.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from conftest import STUDY_CONFIGS

from propetl.cli import build_parser
from propetl.study import RESOURCE_DEFAULTS, Study, StudyError, flags, typed

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
CONFIGS = STUDY_CONFIGS


def config(name: str = "default") -> dict:
    return yaml.safe_load(CONFIGS[name].read_text())


def study(cfg: dict) -> Study:
    return Study(cfg, SCHEMA)


@pytest.fixture(autouse=True)
def _from_the_repository_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # task files in configs are relative to the repository root


@pytest.mark.parametrize("name", CONFIGS)
def test_every_committed_study_loads(name):
    assert study(config(name)).grid()


def test_the_default_grid_has_every_entry_sparsity_task_and_seed():
    grid = study(config()).grid()
    assert len(grid) == 78 and len(set(grid)) == 78  # 13 entries x 2 tasks per seed, seeds 1-3
    assert {run.sparsity for run in grid if run.label == "propetl-adapter"} == {"0.5"}
    sweep = study(config("ablation")).grid()  # the sweep is the ablation study's
    assert {run.sparsity for run in sweep if run.label == "propetl-adapter" and run.task == "rt-polarity"} == {
        "0.3", "0.5", "0.7", "0.9"}
    assert {run.sparsity for run in grid if run.label == "adapter"} == {"-"}
    assert grid[0].dir == "runs/rt-polarity/full/s-/seed1"


def test_a_multi_task_group_is_one_run_per_seed_and_a_frozen_entry_trains_on_its_prototype():
    s = study(config("multitask"))
    grid = s.grid()
    joint = [run for run in grid if run.label == "joint-per-layer"]
    assert [run.dir for run in joint] == ["runs/rt-polarity+snli+debates/joint-per-layer/s0.5/seed1",
                                          "runs/rt-polarity+snli+debates/joint-per-layer/s0.5/seed2"]
    assert {run.task for run in grid if run.label == "frozen-debates"} == {"debates"}  # only the task it names
    assert {run.task for run in grid if run.label == "adapter"} == {"rt-polarity", "snli", "debates"}
    command = s.train_flags("rt-polarity+snli+debates", "joint-task-or-layer", "0.7", 2)
    assert command.startswith("--task rt-polarity --task snli --task debates ")
    assert "--max-steps 450 --eval-every 225" in command  # 150 steps per task, budget_scale 3 and "--task-masks task_or_layer" in command
    assert s.prepared("rt-polarity+snli") == ["results/multitask/data/rt-polarity", "results/multitask/data/snli"]
    assert s.prototype_run("frozen-debates", 2) == "results/multitask/runs/rt-polarity+snli/joint-rt-snli/s0.5/seed2/metrics.json"
    assert s.prototype_run("adapter", 2) is None


def test_tuned_entries_read_the_study_of_their_own_sparsity():
    cfg = config()
    cfg["methods"][3]["sweep"] = {"rt-polarity": [0.5, 0.7]}
    s = study(cfg)
    assert s.best_params("rt-polarity", "propetl-adapter", "0.7") == "results/tuning/rt-polarity/propetl-adapter/s0.5/best_params.json"
    assert study(config("ablation")).best_params("rt-polarity", "propetl-adapter", "0.7") is None  # untuned


def test_flags_render_every_value_type_the_cli_reads():
    assert flags({"max_steps": 10, "bf16": True, "fp16": False, "lora_targets": ["query", "key"], "label": None}) == (
        "--max-steps 10 --bf16 --fp16 false --lora-targets query key")


def test_task_params_set_an_entry_per_task_and_keep_it_to_those_tasks():
    cfg = config()
    cfg["tuning"]["enabled"] = False
    cfg["methods"][2].update(params={"lr": 2e-3, "weight_decay": 0.0}, task_params={"snli": {"lr": 3e-3, "max_steps": 90, "eval_every": 45}})
    s = study(cfg)
    assert {run.task for run in s.grid() if run.label == "adapter"} == {"snli"}  # only the tasks it has settings for
    assert {run.task for run in s.grid() if run.label == "lora"} == {"rt-polarity", "snli"}
    command = s.train_flags("snli", "adapter", "-", 1)
    assert "--lr 0.003" in command and "--max-steps 90" in command and "--eval-every 45" in command and "--weight-decay 0.0" in command


def test_a_job_command_spells_out_the_defaults_and_the_entry_wins():
    command = study(config("ci")).train_flags("sentiment", "propetl-adapter", "0.9", 1)
    for shown in ("--lr 0.005", "--mask-lr 0.01", "--batch-size 16", "--warmup-ratio 0.1", "--weight-decay 0.0",
                  "--mask-weight-decay 0.0", "--sparsity 0.9", "--max-steps 8", "--reduction-factor 4"):
        assert shown in command, shown
    assert "--epochs" not in command  # max_steps is set


def test_resources_fall_back_to_the_one_set_of_defaults():
    s = study(config("paper"))
    assert s.resource("train", "gpu") == 1 and s.resource("train", "threads") == 4
    assert s.resource("tune", "runtime") == RESOURCE_DEFAULTS["tune"]["runtime"]


def test_command_line_overrides_are_typed_as_yaml():
    assert typed({"seeds": ["1", "2"], "tuning": {"enabled": "false"}, "output": "x"}) == {
        "seeds": [1, 2], "tuning": {"enabled": False}, "output": "x"}


def _bad(mutate, name="default"):
    cfg = copy.deepcopy(config(name))
    mutate(cfg)
    return cfg


def _all_tuned(c, **search):
    """The default study with every entry tuned alike (tuning.same_budget)."""
    c["tuning"]["same_budget"] = True
    for entry in c["methods"]:
        entry["tune"] = True
        c["tuning"]["search_space"].setdefault(entry["method"], {"lr": {"low": 1e-4, "high": 1e-2, "log": True}})


BAD = {
    # case: (config, what the one line must say)
    "unknown PEFT type": (_bad(lambda c: c["methods"][0].update(method="peft", params={"peft_type": "nope"})),
                          ["methods[0]", "peft_type='nope'", "allowed:", "LOKR"]),
    "unknown PEFT argument": (_bad(lambda c: c["methods"][0].update(method="vera", params={"peft_args": {"rank": 8}})),
                              ["methods[0]", "peft_args ['rank']", "VeraConfig", "allowed:"]),
    "same budget with an untuned entry": (_bad(lambda c: c["methods"][0].update(tune=False)),
                                          ["tuning.same_budget", "entry 'full' is not tuned", "tune: true"]),
    "same budget with longer trials for one entry": (
        _bad(lambda c: (_all_tuned(c), c["methods"][4]["params"].update(max_steps=500))),
        ["tuning.same_budget", "on 'rt-polarity'", "'lora' have max_steps=500", "max_steps=60"]),
    "unknown method": (_bad(lambda c: c["methods"][0].update(method="propetl-adaptor")),
                       ["methods[0]", "'propetl-adaptor'", "allowed: full, bitfit, adapter"]),
    "unknown task": (_bad(lambda c: c["tasks"].update({"glue-sst3": {}})), ["tasks", "'glue-sst3'", "allowed: rt-polarity"]),
    "a task named by a line break, with an unknown key": (_bad(lambda c: c["tasks"].update({"\n": {"max_tset": 5}})),
                                                           ["tasks['\\n']", "'max_tset'", "allowed: max_train"]),
    "sparsity 1.0": (_bad(lambda c: c["methods"][3].update(sparsity=1.0)), ["methods[3]", "sparsity=1.0 is outside [0, 1)"]),
    "sweep value 1.5": (_bad(lambda c: c["methods"][3]["sweep"].update({"rt-polarity": [0.5, 1.5]})),
                        ["methods[3]", "sparsity=1.5"]),
    "sparsity without masks": (_bad(lambda c: c["methods"][9].update(sparsity=0.0)),
                               ["methods[9]", "propetl-adapter-nomask", "sparsity=0.0 given with mask_mode='none'"]),
    "sparsity on a baseline": (_bad(lambda c: c["methods"][2].update(sparsity=0.5)),
                               ["methods[2]", "'adapter'", "only propetl-adapter, propetl-lora, propetl-prefix take a sparsity"]),
    "unknown mask mode": (_bad(lambda c: c["methods"][10].update(mask_mode="magic")), ["methods[10]", "mask_mode='magic'", "learned, random, none"]),
    "max_steps 0": (_bad(lambda c: c["training"].update(max_steps=0)), ["training.max_steps", "must be a positive integer"]),
    "task max_steps 0": (_bad(lambda c: c["tasks"]["snli"].update(max_steps=0)), ["tasks.snli.max_steps", "positive integer"]),
    "trial eval_every beyond max_steps": (_bad(lambda c: c["tuning"]["training"].update(eval_every=100)),
                                          ["tuning.training.eval_every", "exceeds max_steps=60"]),
    "negative lr": (_bad(lambda c: c["methods"][0]["params"].update(lr=-1.0)), ["methods[0]", "lr=-1.0 must be positive"]),
    "lora rank 0": (_bad(lambda c: c["methods"][6]["params"].update(lora_r=0)), ["methods[6]", "lora_r=0 must be a positive integer"]),
    "negative seed": (_bad(lambda c: c.update(seeds=[1, -2])), ["seeds", "seed=-2"]),
    "empty methods": (_bad(lambda c: c.update(methods=[])), ["methods", "non-empty"]),
    "missing model": (_bad(lambda c: c.pop("model")), ["config: top level: 'model' is a required property"]),
    "nothing enabled": (_bad(lambda c: [m.update(enabled=False) for m in c["methods"]]), ["methods", "no enabled entry"]),
    "duplicate label": (_bad(lambda c: c["methods"][1].update(label="full")), ["label 'full' is used twice"]),
    "unknown top-level key": (_bad(lambda c: c.update(epochs=3)), ["'epochs'", "top level", "allowed: output"]),
    "wrong type": (_bad(lambda c: c["training"].update(batch_size="many")), ["training.batch_size", "not of type 'integer'"]),
    "tuned method without search space": (_bad(lambda c: c["tuning"]["search_space"].pop("adapter")),
                                          ["tuning.search_space", "'adapter'"]),
    "untunable key": (_bad(lambda c: c["tuning"]["search_space"]["adapter"].update(epochs={"low": 1, "high": 2})),
                      ["tuning.search_space.adapter", "'epochs' is not tunable"]),
    "both autocasts": (_bad(lambda c: c["training"].update(bf16=True, fp16=True)), ["config: training: bf16 and fp16 both set; choose one"]),
    "cap of zero": (_bad(lambda c: c["tasks"]["snli"].update(max_train=0)), ["tasks.snli.max_train", "max_train=0 must be a positive integer"]),
    "duplicate lora target": (_bad(lambda c: c["methods"][6]["params"].update(lora_targets=["query", "query"])),
                              ["methods[6]", "each at most once"]),
    "budget scaled to nothing": (_bad(lambda c: c["methods"][0].update(budget_scale=0.001)),
                                 ["methods[0]", ".budget_scale", "=0 must be a positive integer"]),
    "task_params on a task the study lacks": (_bad(lambda c: c["methods"][0].update(task_params={"glue-rte": {"lr": 1e-3}})),
                                              ["methods[0]", ".task_params", "'glue-rte'", "allowed: rt-polarity, snli"]),
    "task_params value out of range": (_bad(lambda c: c["methods"][0].update(task_params={"snli": {"lr": -1.0}})),
                                       ["methods[0] (label 'full').task_params.snli", "lr=-1.0 must be positive"]),
    "task_params on a group": (_bad(lambda c: c["methods"][4].update(task_params={"snli": {"lr": 1e-3}}), "multitask"),
                               ["methods[4]", ".task_params", "a multi-task group trains once on all its tasks"]),
    "group of a dedicated method": (_bad(lambda c: c["methods"][1].update(tasks=["rt-polarity", "debates"]), "multitask"),
                                    ["methods[1]", ".tasks", "several tasks needs a ProPETL method", "got method 'adapter'"]),
    "group task not in tasks": (_bad(lambda c: c["methods"][4].update(tasks=["rt-polarity", "glue-rte"]), "multitask"),
                                ["methods[4]", ".tasks", "'glue-rte' is not in tasks"]),
    "prototype from nowhere": (_bad(lambda c: c["methods"][7].update(prototype_from="joint"), "multitask"),
                               ["methods[7]", "prototype_from", "'joint' is not the label of an enabled entry"]),
    "prototype of another method": (_bad(lambda c: c["methods"][7].update(method="propetl-lora"), "multitask"),
                                    ["methods[7]", "prototype_from", "same method", "'propetl-lora'"]),
    "group budget_scale without max_steps": (_bad(lambda c: c["training"].pop("max_steps"), "multitask"),
                                             ["methods[4]", ".budget_scale", "the group's training has none"]),
    "budget_scale without max_steps": (
        _bad(lambda c: (c["methods"][0].update(budget_scale=2), c["training"].pop("max_steps"), c["tasks"]["snli"].pop("max_steps"))),
        ["methods[0]", "budget_scale", "'rt-polarity' has none"]),
}


def test_a_study_tuning_every_entry_alike_plans():
    cfg = copy.deepcopy(config("default"))
    _all_tuned(cfg)
    assert study(cfg).grid()


@pytest.mark.parametrize("case", BAD)
def test_a_bad_config_is_refused_with_one_line_naming_the_key(case):
    cfg, needles = BAD[case]
    with pytest.raises(StudyError) as error:
        study(cfg)
    message = str(error.value)
    assert message.startswith("config: ") and "\n" not in message
    for needle in needles:
        assert needle in message, message


# ---------------------------------------------------------------- fuzzing the loader

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _paths(value, prefix=()):
    """Every key path of a config, to aim a mutation at."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@st.composite
def mutated_configs(draw):
    cfg = copy.deepcopy(config(draw(st.sampled_from(sorted(CONFIGS)))))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(cfg) if p]
        path = draw(st.sampled_from(paths))
        parent = cfg
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(JSON)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(JSON)
    return cfg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=mutated_configs())
def test_a_mutated_config_is_accepted_or_refused_in_one_line_never_with_a_traceback(cfg):
    try:
        loaded = study(cfg)
    except StudyError as error:
        message = str(error)
        assert message.startswith("config: ") and "\n" not in message
        return
    for run in loaded.grid():  # an accepted config plans: every job has its command line
        loaded.train_flags(run.task, run.label, run.sparsity, run.seed)


@settings(max_examples=100, deadline=None)
@given(cfg=JSON)
def test_any_json_value_as_a_config_is_refused_in_one_line(cfg):
    with pytest.raises(StudyError) as error:
        study(cfg)
    assert "\n" not in str(error.value)


def test_a_generated_task_is_prepared_with_the_settings_its_train_jobs_check(tmp_path):
    cfg = {"model": "tiny-t5", "seeds": [1], "methods": [{"label": "pl", "method": "propetl-lora"}],
           "training": {"max_steps": 8, "eval_every": 4, "max_new_tokens": 16, "label_smoothing": 0.1},
           "tasks": {"tests/fixtures/generation.jsonl": {"task_type": "generation", "metrics": ["bleu", "chrf"], "num_beams": 2},
                     "tests/fixtures/sentiment.csv": {"task_format": "text-to-text"}}}
    s = study(cfg)
    assert s.prepare_flags("generation") == ("--task tests/fixtures/generation.jsonl --model tiny-t5 --data-seed 0 --task-type generation "
                                             "--metrics bleu chrf --max-new-tokens 16")
    assert s.prepare_flags("sentiment").endswith("--max-new-tokens 16 --task-format text-to-text")
    train = s.train_flags("generation", "pl", "0.9", 1)
    assert "--num-beams 2" in train and "--label-smoothing 0.1" in train and "--max-new-tokens 16" in train
    for command, flags_ in (("prepare", s.prepare_flags("generation")), ("train", train)):  # lists parse as one flag
        assert build_parser().parse_args([command, *shlex.split(flags_), "--out", str(tmp_path)]).metrics == ["bleu", "chrf"]


def test_a_peft_entry_plans_with_its_arguments_as_json_the_cli_reads():
    from propetl.cli import build_parser

    command = study(config("ci")).train_flags("sentiment", "vera", "-", 1)
    assert "--method vera" in command and """--peft-args '{"r": 16}'""" in command
    args = build_parser().parse_args(["train", *shlex.split(command)])
    assert args.peft_args == {"r": 16} and args.method == "vera"
