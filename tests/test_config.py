"""The config dataclasses and the method registry: every rule checked where it lives."""

import dataclasses

import pytest
import yaml

from propetl.config import (METHODS, PAPER_DEFAULTS, PROPETL_METHODS, REGISTRY, Effective, PETLConfig, TrainConfig,
                            dedicated_method, effective_defaults)
from propetl.modules import SPECS
from propetl.tables import label_rank
from conftest import ROOT

SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
ENTRY_KEYS = ("method", "sparsity", "mask_mode", "share")  # a grid entry's own keys, not params


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "compacter"}, "method='compacter' is not supported; allowed: full, bitfit, adapter, propetl-adapter"),
        ({"method": "propetl-lora", "sparsity": 1.0}, r"sparsity=1.0 is outside \[0, 1\)"),
        ({"method": "propetl-lora", "sparsity": -0.1}, r"sparsity=-0.1 is outside \[0, 1\)"),
        ({"method": "adapter", "sparsity": 0.5}, "only propetl-adapter, propetl-lora, propetl-prefix take a sparsity"),
        ({"method": "lora", "mask_mode": "random"}, "mask_mode='random' given for method 'lora'; only .* take a mask_mode"),
        ({"method": "full", "share": "none"}, "share='none' given for method 'full'"),
        ({"method": "propetl-adapter", "mask_mode": "magic"}, "mask_mode='magic' is not supported; allowed: learned, random, none"),
        ({"method": "propetl-adapter", "share": "tasks"}, "share='tasks' is not supported; allowed: layers, none"),
        ({"method": "propetl-adapter", "mask_mode": "none", "sparsity": 0.5}, "sparsity=0.5 given with mask_mode='none'"),
        ({"method": "lora", "lora_r": 0}, "lora_r=0 must be a positive integer"),
        ({"method": "lora", "lora_targets": ["query", "query"]}, "lora_targets=.*roles .* or module names, each at most once"),
        ({"method": "lora", "lora_targets": []}, "lora_targets=.*roles .* or module names"),
    ],
)
def test_bad_configs_fail_with_one_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PETLConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size=0 must be a positive integer"),
        ({"max_steps": -3}, "max_steps=-3 must be a positive integer"),
        ({"max_steps": 5, "eval_every": 10}, "eval_every=10 exceeds max_steps=5"),
        ({"eval_strategy": "sometimes"}, "eval_strategy='sometimes' is not supported; allowed: steps, epoch"),
        ({"epochs": 0}, "epochs=0 must be positive"),
        ({"lr": 0.0}, "lr=0.0 must be positive"),
        ({"weight_decay": -0.1}, "weight_decay=-0.1 must be >= 0"),
        ({"warmup_ratio": 1.0}, r"warmup_ratio=1.0 must be in \[0, 1\)"),
        ({"max_val": 0}, "max_val=0 must be a positive integer"),
        ({"seed": -1}, "seed=-1 must be a non-negative integer"),
        ({"data_seed": True}, "data_seed=True must be a non-negative integer"),
        ({"bf16": True, "fp16": True}, "bf16 and fp16 both set"),
        ({"bf16": "sometimes"}, "bf16='sometimes' is not supported; allowed: True, False, auto"),
        ({"bf16": 1}, "bf16=1 is not supported; allowed: True, False, auto"),  # 1 == True, but not a switch
        ({"bf16": 0}, "bf16=0 is not supported; allowed: True, False, auto"),
    ],
)
def test_a_train_config_no_run_could_use_fails_with_one_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_paper_default_sparsity_per_propetl_method():
    assert PETLConfig(method="propetl-adapter").sparsity == 0.5
    assert PETLConfig(method="propetl-lora").sparsity == 0.9
    assert PETLConfig(method="propetl-prefix").sparsity == 0.9


@pytest.mark.parametrize("method", METHODS)
def test_every_registered_method_is_complete(method):
    # one registry entry is the whole declaration: the rest of the project derives from it
    entry = REGISTRY[method]
    assert entry.help and entry.paper["lr"] > 0
    assert entry.module is None or entry.module in SPECS
    if entry.propetl:
        assert {"mask_lr", "sparsity"} <= entry.paper.keys()
        assert dedicated_method(method) in METHODS and not REGISTRY[dedicated_method(method)].propetl
        assert PETLConfig(method=method).sparsity == PAPER_DEFAULTS[method]["sparsity"]
    assert label_rank(method) == (METHODS.index(method), method)  # tables order rows by the registry
    assert method in dataclasses.fields(PETLConfig)[0].metadata["help"]  # --method's help lists it


def test_each_propetl_method_sits_right_below_its_dedicated_baseline():
    for method in PROPETL_METHODS:
        assert METHODS.index(method) == METHODS.index(dedicated_method(method)) + 1


def test_every_petl_hyperparameter_can_be_set_from_a_study_and_has_help():
    params = set(SCHEMA["$defs"]["method_params"]["properties"])
    for f in dataclasses.fields(PETLConfig):
        assert f.metadata.get("help"), f.name
        if f.name not in ENTRY_KEYS:
            assert f.name in params, f"PETLConfig.{f.name} has no methods[].params entry in the schema"
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    assert params - {f.name for f in dataclasses.fields(PETLConfig)} <= train_keys
    assert set(SCHEMA["$defs"]["training_props"]["properties"]) <= train_keys


def test_effective_defaults_fill_what_a_run_leaves_unset_and_keep_what_it_gives():
    assert effective_defaults("propetl-lora") == Effective(sparsity=0.9, lr=1e-4, mask_lr=3e-2, head_lr=1e-4)
    assert effective_defaults("propetl-adapter", mask_mode="none").sparsity is None  # no masks, no sparsity
    assert effective_defaults("adapter", lr=2e-3) == Effective(sparsity=None, lr=2e-3, mask_lr=2e-3, head_lr=2e-3)
    given = effective_defaults("propetl-adapter", sparsity=0.7, lr=1e-3, mask_lr=1e-2, head_lr=5e-4)
    assert given == Effective(sparsity=0.7, lr=1e-3, mask_lr=1e-2, head_lr=5e-4)
    assert PETLConfig(method="propetl-prefix").sparsity == effective_defaults("propetl-prefix").sparsity
