# Config loading, validation and grid expansion. Everything here runs at parse time,
# before any job: a bad config stops the workflow with ONE line naming the key.

import dataclasses
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config, validate

SCHEMA = "../schemas/config.schema.yaml"
DATA_KEYS = ("max_train", "max_val", "max_test", "max_length")
RESOURCE_DEFAULTS = {
    "prepare": {"threads": 1, "mem_mb": 4000, "runtime": 30, "gpu": 0},
    "tune": {"threads": 1, "mem_mb": 4000, "runtime": 180, "gpu": 0},
    "train": {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpu": 0},
    "aggregate": {"threads": 1, "mem_mb": 2000, "runtime": 10, "gpu": 0},
}


# Jobs call the `propetl` command. Snakemake run as .venv/bin/snakemake (venv not activated)
# gives its jobs a PATH without it: put the running interpreter's bin dir first then.
if shutil.which("propetl") is None:
    shell.prefix(f"set -euo pipefail; export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; ")


class ConfigError(WorkflowError):
    """An invalid study config; the message is one line naming the key."""


# ---------------------------------------------------------------- validation


def _where(path):
    """A JSON path as a config key, e.g. ``methods[3].sparsity``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "top level"


def typed(value):
    """A --config value typed as in a config file.

    Snakemake reads values nested in --config dicts and lists with YAML's BaseLoader, so
    ``--config seeds=[1,2]`` arrives as ``["1", "2"]``; read each string again as YAML.
    """
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    if isinstance(value, str) and value:
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def check_schema(cfg, schema_file):
    """The schema's verdict as one line (the most relevant error only)."""
    schema = yaml.safe_load(Path(schema_file).read_text())
    error = best_match(Draft202012Validator(schema).iter_errors(cfg))
    if error is None:
        return
    where = _where(error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        allowed = _allowed_keys(schema, error.schema)
        unknown = sorted(set(error.instance) - set(allowed))
        raise ConfigError(f"config: unknown key {', '.join(map(repr, unknown))} in {where}; allowed: {', '.join(allowed)}")
    hint = error.schema.get("description") if isinstance(error.schema, dict) else None
    raise ConfigError(f"config: {where}: {error.message}" + (f" ({hint})" if hint else ""))


def _allowed_keys(schema, sub):
    keys = list(sub.get("properties", {}))
    ref = sub.get("$ref", "").removeprefix("#/$defs/")
    if ref:
        keys += _allowed_keys(schema, schema["$defs"][ref])
    return keys


def _fail(message):
    raise ConfigError(f"config: {message}")


def check_tasks(tasks):
    """Task name -> its slug in paths (registered name, or the file's stem)."""
    slugs = {}
    for name in tasks:
        if name in TASKS:
            slug = name
        elif Path(name).is_file():
            slug = Path(name).stem
        else:
            _fail(f"tasks: unknown task {name!r}; allowed: {', '.join(TASKS)}, or a path to an existing .csv/.jsonl/.parquet file")
        if slug in slugs.values():
            _fail(f"tasks: {name!r} would share the result folder {slug!r} with another task; rename the file")
        slugs[name] = slug
    return slugs


def check_entry(i, entry, tasks):
    where = f"methods[{i}] (label {entry['label']!r})"
    if entry["method"] not in METHODS:
        _fail(f"{where}.method: unknown method {entry['method']!r}; allowed: {', '.join(METHODS)}")
    if entry["method"] not in PROPETL_METHODS:
        for key in ("sparsity", "sweep", "mask_mode", "share"):
            if entry.get(key):
                _fail(f"{where}.{key}: only ProPETL methods take it ({', '.join(PROPETL_METHODS)}), not {entry['method']!r}")
    if entry.get("mask_mode") == "none":
        for key, given in (("sparsity", entry.get("sparsity") is not None), ("sweep", bool(entry["sweep"]))):
            if given:
                _fail(f"{where}.{key}: mask_mode 'none' has no masks, so no sparsity to set or sweep")
    for task in entry["sweep"]:
        if task not in tasks:
            _fail(f"{where}.sweep: task {task!r} is not in tasks; allowed: {', '.join(tasks)}")
    if entry["budget_scale"] != 1:
        for task in tasks:
            if "max_steps" not in {**config["training"], **(tasks[task] or {})}:
                _fail(f"{where}.budget_scale: scales max_steps, but task {task!r} has none (set training.max_steps)")


def check_search_space(where, space):
    for name, spec in space.items():
        if name not in TUNABLE:
            _fail(f"{where}: {name!r} is not tunable; allowed: {', '.join(TUNABLE)}")
        if spec["low"] >= spec["high"] or (spec.get("log") and spec["low"] <= 0):
            _fail(f"{where}.{name}: need low < high (and low > 0 with log: true), got {spec}")


def check_config(cfg):
    slugs = check_tasks(cfg["tasks"])
    labels = [entry["label"] for entry in cfg["methods"]]
    for label in labels:
        if labels.count(label) > 1:
            _fail(f"methods: label {label!r} is used twice; labels name result folders and must be unique")
    for i, entry in enumerate(cfg["methods"]):
        check_entry(i, entry, cfg["tasks"])
    enabled = [entry for entry in cfg["methods"] if entry["enabled"]]
    if not enabled:
        _fail("methods: no enabled entry; the grid would be empty (set enabled: true on at least one)")
    tuning = cfg["tuning"]
    for method, space in tuning["search_space"].items():
        if method not in METHODS:
            _fail(f"tuning.search_space: unknown method {method!r}; allowed: {', '.join(METHODS)}")
        check_search_space(f"tuning.search_space.{method}", space)
    if tuning["enabled"]:
        for entry in enabled:
            if entry["tune"] and not search_space(entry, tuning):
                _fail(f"tuning.search_space: no search space for tuned method {entry['method']!r} "
                      f"(label {entry['label']!r}); add tuning.search_space.{entry['method']} or set tune: false")
            if entry.get("search_space"):
                check_search_space(f"methods (label {entry['label']!r}).search_space", entry["search_space"])
    return slugs, {entry["label"]: entry for entry in enabled}


def search_space(entry, tuning):
    return entry.get("search_space") or tuning["search_space"].get(entry["method"])


# The config is final here (config files and --config overrides merged): type the --config
# values, validate, fill the schema's defaults, then check what the schema cannot say.
update_config(config, typed(dict(workflow.config_settings.config)))
check_schema(config, workflow.source_path(SCHEMA))
validate(config, SCHEMA)

# Imported after the schema check: importing the package (torch, transformers) takes seconds.
from propetl.config import METHODS, PAPER_DEFAULTS, PROPETL_METHODS, TrainConfig
from propetl.data import TASKS
from propetl.tuning import TUNABLE

for _name in list(config["tasks"]):
    config["tasks"][_name] = config["tasks"][_name] or {}
TASK_SLUGS, ENTRIES = check_config(config)
TASK_NAMES = {slug: name for name, slug in TASK_SLUGS.items()}
TUNING = config["tuning"]


# ---------------------------------------------------------------- grid


def results(path):
    """A path below the results root (config key ``output``)."""
    return os.path.join(config["output"], path)


def fmt_sparsity(value):
    """The path form of a sparsity: ``0.5``, or ``-`` for methods without one."""
    return "-" if value is None else format(float(value), "g")


def default_sparsity(entry):
    if entry["method"] not in PROPETL_METHODS or entry.get("mask_mode") == "none":
        return None
    return entry.get("sparsity", PAPER_DEFAULTS[entry["method"]]["sparsity"])


def sparsities(entry, task):
    """The sweep values on a task that has a sweep, otherwise [the entry's sparsity]."""
    values = entry["sweep"].get(task) or [default_sparsity(entry)]
    return [fmt_sparsity(v) for v in values]


def grid():
    """Every run as (task slug, label, sparsity, seed): entries x sparsities x tasks x seeds."""
    return [
        (TASK_SLUGS[task], label, sparsity, seed)
        for task in config["tasks"]
        for label, entry in ENTRIES.items()
        for sparsity in sparsities(entry, task)
        for seed in config["seeds"]
    ]


def run_metrics():
    return [results(f"runs/{t}/{l}/s{s}/seed{seed}/metrics.json") for t, l, s, seed in grid()]


def is_tuned(label):
    return TUNING["enabled"] and ENTRIES[label]["tune"]


def study_sparsity(label, sparsity):
    """Sweep values reuse the study of the entry's own sparsity unless tuning.tune_each_sparsity."""
    if TUNING["tune_each_sparsity"]:
        return sparsity
    return fmt_sparsity(default_sparsity(ENTRIES[label]))


def best_params(wildcards):
    """The train job's tuned parameters, or nothing when the entry is not tuned."""
    if not is_tuned(wildcards.label):
        return []
    sparsity = study_sparsity(wildcards.label, wildcards.sparsity)
    return results(f"tuning/{wildcards.task}/{wildcards.label}/s{sparsity}/best_params.json")


# ---------------------------------------------------------------- command lines


def flags(values):
    """``{"max_steps": 10, "bf16": False}`` -> ``--max-steps 10 --no-bf16`` (None values left out)."""
    parts = []
    for key, value in values.items():
        flag = f"--{key.replace('_', '-')}"
        if value is None:
            continue
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list):
            parts.append(" ".join([flag, *map(shlex.quote, map(str, value))]))
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def task_training(slug):
    task = config["tasks"][TASK_NAMES[slug]]
    return {**config["training"], **{k: v for k, v in task.items() if k not in DATA_KEYS}}


def prepare_flags(wildcards):
    task = config["tasks"][TASK_NAMES[wildcards.task]]
    caps = {key: task.get(key) for key in DATA_KEYS}
    caps["max_length"] = caps["max_length"] or config["max_length"]
    return flags({"task": TASK_NAMES[wildcards.task], "model": config["model"], "data_seed": config["data_seed"], **caps})


def explicit_hyperparameters(entry, values):
    """The optimisation setting of a run with every default spelled out, so that a plan
    (snakemake -n -p) shows the whole setting: lr (and mask lr and mask weight decay for
    learned masks), batch size, warm-up, weight decay, and epochs unless max_steps is set."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    paper = PAPER_DEFAULTS[entry["method"]]
    shown = {"lr": paper["lr"]}
    if entry["method"] in PROPETL_METHODS and entry.get("mask_mode", "learned") == "learned":
        shown |= {"mask_lr": paper["mask_lr"], "mask_weight_decay": defaults["mask_weight_decay"]}
    shown |= {key: defaults[key] for key in ("batch_size", "warmup_ratio", "weight_decay")}
    if values.get("max_steps") is None:
        shown["epochs"] = defaults["epochs"]
    return {**shown, **values}


def run_flags(wildcards, training, seed):
    """What defines a run: backbone, task, grid entry, sparsity, seed, budget and method params."""
    entry = ENTRIES[wildcards.label]
    return flags({
        "model": config["model"], "task": TASK_NAMES[wildcards.task], "data_seed": config["data_seed"],
        "label": wildcards.label, "method": entry["method"],
        "sparsity": None if wildcards.sparsity == "-" else wildcards.sparsity,
        "mask_mode": entry.get("mask_mode"), "share": entry.get("share"), "seed": seed,
        **explicit_hyperparameters(entry, {**training, **entry["params"]}),
    })


def scaled_budget(training, scale):
    """A budget-ladder entry's steps: max_steps and eval_every times its budget_scale."""
    if scale == 1:
        return training
    return {**training, **{key: round(training[key] * scale) for key in ("max_steps", "eval_every") if key in training}}


def train_flags(wildcards):
    training = scaled_budget(task_training(wildcards.task), ENTRIES[wildcards.label]["budget_scale"])
    return run_flags(wildcards, training, wildcards.seed)


def tune_flags(wildcards):
    seed = config["seeds"][0] if TUNING["seed"] is None else TUNING["seed"]
    training = {**task_training(wildcards.task), **TUNING["training"]}
    space = json.dumps(search_space(ENTRIES[wildcards.label], TUNING))
    return " ".join([
        run_flags(wildcards, training, seed),
        flags({"n_trials": TUNING["n_trials"], "sampler_seed": TUNING["sampler_seed"], "pruner": TUNING["pruner"],
               "search_space": space}),
    ])


def task_file(wildcards):
    """A file task's table is an input of its prepare job; registered tasks have none."""
    name = TASK_NAMES[wildcards.task]
    return [] if name in TASKS else [name]


def resource(rule_name, key):
    return {**RESOURCE_DEFAULTS[rule_name], **config["resources"].get(rule_name, {})}[key]
