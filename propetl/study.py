"""A study config loaded, validated once, and expanded into the jobs that run it.

The Snakemake workflow is wiring around this module (workflow/rules/common.smk): every
rule asks the :class:`Study` for its paths, command-line flags and resources. A bad config
stops before any job with ONE line naming the key:

* the JSON schema (workflow/schemas/config.schema.yaml) checks shape and types and fills
  defaults;
* the values are checked by building what a job would build: a ``TrainConfig`` per task
  (and for the tuning trials), a ``PETLConfig`` per grid entry and sparsity, each search
  space; their ``ValueError`` becomes the config error. No rule is written twice.

An entry with ``tasks`` runs on those tasks only; with several, it is a multi-task group:
ONE model per seed trained on all of them (:mod:`propetl.multitask`), in the folder
``runs/<task1>+<task2>.../``. An entry with ``prototype_from`` trains each of its tasks on
the frozen prototype of another entry's run with the same seed.

Nothing here imports torch: planning a study (``snakemake -n``) stays fast.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from . import runs
from .atomic import write_json
from .config import FILE_TASK_OPTIONS, PROPETL_METHODS, REGISTRY, PETLConfig, TrainConfig, check_search_space, effective_defaults
from .data import TASKS

DATA_KEYS = ("max_train", "max_val", "max_test", "max_length")
PETL_KEYS = tuple(f.name for f in dataclasses.fields(PETLConfig))
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))
# Job sizes when a study's `resources` does not set them (runtime in minutes; gpu > 0 asks a
# scheduler for GPUs). The only place these defaults live.
RESOURCE_DEFAULTS: dict[str, dict[str, int]] = {
    "prepare": {"threads": 1, "mem_mb": 4000, "runtime": 30, "gpu": 0},
    "tune": {"threads": 1, "mem_mb": 4000, "runtime": 180, "gpu": 0},
    "train": {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpu": 0},
    "aggregate": {"threads": 1, "mem_mb": 2000, "runtime": 10, "gpu": 0},
}


class StudyError(ValueError):
    """An invalid study config; the message is one line naming the key."""


@dataclass(frozen=True)
class Run:
    """One train job: a grid entry at one sparsity on one task with one seed."""

    task: str  # the task's slug (folder name)
    label: str
    sparsity: str  # folder form: "0.5", or "-" for methods without one
    seed: int

    @property
    def dir(self) -> str:
        return runs.run_dir(self.task, self.label, self.sparsity, self.seed)


def typed(value: Any) -> Any:
    """A ``--config`` value typed as in a config file.

    Snakemake reads values nested in ``--config`` dicts and lists with YAML's BaseLoader, so
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


def _where(path) -> str:
    """A JSON path as a config key, e.g. ``methods[3].sparsity``; a key that would not read as one (empty, or with a
    line break) is quoted, so that the error stays one line."""
    text = ""
    for part in path:
        if isinstance(part, int) or not str(part).isprintable() or not str(part):
            text += f"[{part!r}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "top level"


def _allowed_keys(schema: dict, sub: dict) -> list[str]:
    keys = list(sub.get("properties", {}))
    ref = sub.get("$ref", "").removeprefix("#/$defs/")
    if ref:
        keys += _allowed_keys(schema, schema["$defs"][ref])
    return keys


def check_schema(config: dict, schema: dict) -> None:
    """The schema's verdict as one line (its most relevant error only)."""
    error = best_match(Draft202012Validator(schema).iter_errors(config))
    if error is None:
        return
    where = _where(error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        allowed = _allowed_keys(schema, error.schema)
        unknown = sorted(set(error.instance) - set(allowed))
        raise StudyError(f"config: unknown key {', '.join(map(repr, unknown))} in {where}; allowed: {', '.join(allowed)}")
    hint = error.schema.get("description") if isinstance(error.schema, dict) and error.absolute_path else None
    message = " ".join(f"{error.message} ({hint})".split() if hint else error.message.split())  # one line
    raise StudyError(f"config: {where}: {message}")


def _fill_defaults(value: Any, schema: dict, root: dict) -> Any:
    """The schema's ``default`` values filled in wherever the config leaves a key out."""
    if "$ref" in schema:
        schema = {**root["$defs"][schema["$ref"].removeprefix("#/$defs/")], **{k: v for k, v in schema.items() if k != "$ref"}}
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _fill_defaults(value[key], sub, root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in set(value) - set(schema.get("properties", {})):
                value[key] = _fill_defaults(value[key], extra, root)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_fill_defaults(item, schema["items"], root) for item in value]
    return value


def _fail(message: str) -> None:
    raise StudyError(f"config: {message}")


def _checked(where: str, build, *args, **kwargs):
    """Build a config object; its ValueError becomes a config error at ``where``."""
    try:
        return build(*args, **kwargs)
    except (TypeError, ValueError) as error:
        _fail(f"{where}: {error}")


def flags(values: Mapping[str, Any]) -> str:
    """``{"max_steps": 10, "bf16": False}`` -> ``--max-steps 10 --bf16 false`` (None values left out; a mapping as JSON)."""
    parts = []
    for key, value in values.items():
        flag = f"--{key.replace('_', '-')}"
        if value is None:
            continue
        if isinstance(value, bool):
            parts.append(flag if value else f"{flag} false")
        elif isinstance(value, list):
            parts.append(" ".join([flag, *map(shlex.quote, map(str, value))]))
        elif isinstance(value, dict):
            parts.append(f"{flag} {shlex.quote(json.dumps(value, sort_keys=True))}")
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def _peft_cache() -> Path:
    return Path(os.environ.get("PROPETL_CACHE") or Path.home() / ".cache" / "propetl") / "peft_checked.json"


def check_peft(petl: PETLConfig) -> None:
    """PEFT's own config classes judge a competitor's type and arguments (:func:`propetl.peft_methods.check`).

    Importing PEFT imports torch (5-15 s on 2 cores), which planning otherwise never does, and Snakemake plans on
    every start (a cluster job too): a combination judged valid once is remembered per PEFT version in
    ``$PROPETL_CACHE`` (default ``~/.cache/propetl``). A bad one is judged, and refused, every time.
    """
    from importlib.metadata import version

    key = json.dumps([version("peft"), petl.method, petl.peft_type, petl.peft_args, petl.lora_r, petl.lora_alpha,
                      petl.lora_dropout], sort_keys=True, default=str)
    path = _peft_cache()
    try:
        known = set(json.loads(path.read_text()))
    except (OSError, ValueError):
        known = set()
    if key in known:
        return
    from .peft_methods import check

    check(petl)
    try:
        write_json(path, sorted(known | {key}))
    except OSError:  # a read-only home: judge again next time
        pass


class Study:
    """A validated study: its tasks, grid entries, tuning and resources, and every job's command line.

    ``config`` is the merged study config (file and overrides), as plain data; ``schema``
    the study schema. Raises :class:`StudyError` on the first problem.
    """

    def __init__(self, config: dict, schema: dict):
        config = copy.deepcopy(config)
        check_schema(config, schema)
        self.config = _fill_defaults(config, schema, schema)
        self.tasks = {name: dict(options or {}) for name, options in self.config["tasks"].items()}
        self.tuning = self.config["tuning"]
        top_level = [("seeds", "seed", seed) for seed in self.config["seeds"]] + [
            ("tuning.seed", "seed", self.tuning["seed"]), ("data_seed", "data_seed", self.config["data_seed"]),
            ("max_length", "max_length", self.config["max_length"])]
        for where, name, value in top_level:  # values a TrainConfig takes are checked by it
            if value is not None:
                _checked(where, TrainConfig, **{name: value})
        self.task_slugs = self._check_tasks()
        self.task_names = {slug: name for name, slug in self.task_slugs.items()}
        self.entries = self._check_entries()

    # ------------------------------------------------------------ validation

    def _check_tasks(self) -> dict[str, str]:
        """Task name -> its slug in paths (registered name, or the file's stem)."""
        slugs: dict[str, str] = {}
        for name in self.tasks:
            slug = runs.task_slug(name)
            if name not in TASKS and not Path(name).is_file():
                _fail(f"tasks: unknown task {name!r}; allowed: {', '.join(TASKS)}, or a path to an existing .csv/.jsonl/.parquet file")
            if slug in slugs.values():
                _fail(f"tasks: {name!r} would share the result folder {slug!r} with another task; rename the file")
            options = sorted(set(self.tasks[name]) & set(FILE_TASK_OPTIONS))
            if name in TASKS and options:
                _fail(f"tasks.{name}: {', '.join(options)} apply to task files only, not to the registered task {name!r}")
            slugs[name] = slug
        for name in self.tasks:
            for where, training in (("tasks", self.task_training(name)), ("tuning.training", self.tune_training(name))):
                self._check_training(where, name, training)
        return slugs

    def _check_training(self, where: str, task: str, values: dict) -> None:
        """A task's training keys as a TrainConfig; the error names the section the bad key came from."""
        try:
            TrainConfig(**values, **{k: self.tasks[task][k] for k in DATA_KEYS if self.tasks[task].get(k) is not None})
        except (TypeError, ValueError) as error:
            named = re.match(r"(\w+)=", str(error))  # the dataclasses' messages start with the key: "max_steps=0 ..."
            key = named.group(1) if named else None
            if key is None:
                _fail(f"{where if where == 'tuning.training' else 'training'}: {error}")
            section = (f"tasks.{task}" if key in self.tasks[task] else
                       "tuning.training" if where == "tuning.training" and key in self.tuning["training"] else "training")
            _fail(f"{section}.{key}: {error}")

    def _check_entries(self) -> dict[str, dict]:
        labels = [entry["label"] for entry in self.config["methods"]]
        for label in labels:
            if labels.count(label) > 1:
                _fail(f"methods: label {label!r} is used twice; labels name result folders and must be unique")
        for i, entry in enumerate(self.config["methods"]):
            self._check_entry(f"methods[{i}] (label {entry['label']!r})", entry)
        enabled = {entry["label"]: entry for entry in self.config["methods"] if entry["enabled"]}
        if not enabled:
            _fail("methods: no enabled entry; the grid would be empty (set enabled: true on at least one)")
        for i, entry in enumerate(self.config["methods"]):
            if entry["enabled"] and "prototype_from" in entry:
                self._check_prototype_from(f"methods[{i}] (label {entry['label']!r}).prototype_from", entry, enabled)
        for method, space in self.tuning["search_space"].items():
            if method not in REGISTRY:
                _fail(f"tuning.search_space: unknown method {method!r}; allowed: {', '.join(REGISTRY)}")
            _checked(f"tuning.search_space.{method}", check_search_space, space)
        if self.tuning["enabled"]:
            for entry in enabled.values():
                if entry["tune"] and not self.search_space(entry):
                    _fail(f"tuning.search_space: no search space for tuned method {entry['method']!r} "
                          f"(label {entry['label']!r}); add tuning.search_space.{entry['method']} or set tune: false")
        if self.tuning["enabled"] and self.tuning["same_budget"]:  # tuning off: every entry alike untuned
            self._check_same_budget(enabled)
        return enabled

    TRIAL_BUDGET = ("max_steps", "epochs", "batch_size", "grad_accum", "eval_every", "eval_strategy")

    def _check_same_budget(self, enabled: dict[str, dict]) -> None:
        """The fair protocol (tuning.same_budget): every single-task entry tuned, each task's trials equally long
        for every entry (the number of trials is one study-wide key), so no method is compared untuned."""
        budgets: dict[str, tuple[str, dict]] = {}
        for label, entry in enabled.items():
            if self.is_group(entry) or "prototype_from" in entry:
                continue  # several tasks on one network, or a frozen prototype: not tuned (no such studies exist)
            if not entry["tune"]:
                _fail(f"tuning.same_budget: entry {label!r} is not tuned; every method of a fair study is tuned alike "
                      "(set tune: true, or tuning.same_budget: false)")
            for task in self.entry_tasks(entry):
                trial = {**self.tune_training(task), **self.params_on(entry, task)}
                budget = {key: trial.get(key, getattr(TrainConfig, key)) for key in self.TRIAL_BUDGET}
                if task in budgets and budgets[task][1] != budget:
                    other, theirs = budgets[task]
                    key = next(k for k in self.TRIAL_BUDGET if budget[k] != theirs[k])
                    _fail(f"tuning.same_budget: on {task!r} the trials of {label!r} have {key}={budget[key]!r}, those of "
                          f"{other!r} {key}={theirs[key]!r}; every tuned entry needs trials of the same length")
                budgets.setdefault(task, (label, budget))

    def _check_entry(self, where: str, entry: dict) -> None:
        if entry["method"] not in REGISTRY:
            _fail(f"{where}.method: unknown method {entry['method']!r}; allowed: {', '.join(REGISTRY)}")
        for task in entry.get("tasks", []):
            if task not in self.tasks:
                _fail(f"{where}.tasks: task {task!r} is not in tasks; allowed: {', '.join(self.tasks)}")
        if self.is_group(entry):
            modes = {k: entry[k] for k in ("mask_mode", "share") if k in entry}
            _checked(f"{where}.tasks", lambda: PETLConfig(method=entry["method"], **modes).require_learned_masks("several tasks"))
            if entry["sweep"] or entry["tune"] or "prototype_from" in entry:
                _fail(f"{where}.tasks: a multi-task group takes no sweep, tune or prototype_from")
            group = {**self.config["training"], **{k: v for k, v in entry["params"].items() if k in TRAIN_KEYS}}
            if entry["budget_scale"] != 1 and "max_steps" not in group:
                _fail(f"{where}.budget_scale: scales max_steps, but the group's training has none (set training.max_steps)")
            _checked(f"{where}.tasks", TrainConfig, **{**self._scaled(group, entry["budget_scale"]), "task": entry["tasks"]})
        for task in entry["sweep"]:
            if task not in self.tasks:
                _fail(f"{where}.sweep: task {task!r} is not in tasks; allowed: {', '.join(self.tasks)}")
        for task in entry["task_params"]:
            allowed = entry.get("tasks", self.tasks)
            if task not in allowed or self.is_group(entry):
                _fail(f"{where}.task_params: task {task!r} is not one this entry runs on alone; allowed: "
                      + (", ".join(allowed) if not self.is_group(entry) else "none (a multi-task group trains once on all its tasks)"))
        if entry["sweep"] and (entry["method"] not in PROPETL_METHODS or entry.get("mask_mode") == "none"):
            _fail(f"{where}.sweep: only ProPETL methods with masks have a sparsity to sweep, not this entry")
        given = {k: entry[k] for k in ("sparsity", "mask_mode", "share") if k in entry}
        sweeps = [value for values in entry["sweep"].values() for value in values]
        for task in self.entry_tasks(entry) if entry["task_params"] else [None]:
            here = f"{where}.task_params.{task}" if task in entry["task_params"] else where
            petl_params = {k: v for k, v in self.params_on(entry, task).items() if k in PETL_KEYS}
            for sparsity in [given.get("sparsity"), *sweeps]:
                petl = _checked(here, PETLConfig, method=entry["method"], **{**given, "sparsity": sparsity}, **petl_params)
            if petl.is_peft:
                _checked(here, check_peft, petl)
        for task in self.entry_tasks(entry):
            here = f"{where}.task_params.{task}" if task in entry["task_params"] else where
            train_params = {k: v for k, v in self.params_on(entry, task).items() if k in TRAIN_KEYS}
            _checked(here, TrainConfig, **{**self.task_training(task), **train_params})
            if entry["budget_scale"] != 1 and not self.is_group(entry):
                if "max_steps" not in self.task_training(task):
                    _fail(f"{where}.budget_scale: scales max_steps, but task {task!r} has none (set training.max_steps)")
                scaled = self._scaled(self.task_training(task), entry["budget_scale"])
                _checked(f"{where}.budget_scale", TrainConfig, **{**scaled, **train_params})
        if entry.get("search_space"):
            _checked(f"{where}.search_space", check_search_space, entry["search_space"])

    def _check_prototype_from(self, where: str, entry: dict, enabled: dict[str, dict]) -> None:
        source = enabled.get(entry["prototype_from"])
        if source is None:
            _fail(f"{where}: {entry['prototype_from']!r} is not the label of an enabled entry; allowed: {', '.join(enabled)}")
        if "tasks" not in source or (len(source["tasks"]) == 1 and source["sweep"]) or "prototype_from" in source:
            _fail(f"{where}: entry {source['label']!r} must name its tasks (one run per seed) and train its own prototype")
        _checked(where, lambda: PETLConfig(method=entry["method"], mask_mode=entry.get("mask_mode", "learned")).require_learned_masks("a frozen prototype"))
        if entry["method"] != source["method"]:
            _fail(f"{where}: a frozen prototype trains masks of the same method; "
                  f"this entry is {entry['method']!r}, {source['label']!r} is {source['method']!r}")
        if "tasks" not in entry or entry["tune"] or entry["sweep"]:
            _fail(f"{where}: name the entry's tasks (those it adds); tune and sweep are not supported with a frozen prototype")

    # ------------------------------------------------------------ the grid

    @staticmethod
    def is_group(entry: dict) -> bool:
        """A multi-task group: one model per seed on several tasks."""
        return len(entry.get("tasks", [])) > 1

    def entry_tasks(self, entry: dict) -> list[str]:
        """The task names an entry runs on: those it names in tasks, else those it has task_params for, else every task."""
        return list(entry["tasks"] if "tasks" in entry else entry["task_params"] or self.tasks)

    @staticmethod
    def params_on(entry: dict, task: str | None) -> dict:
        """An entry's params on a task: its params, that task's task_params on top (None: a group's, params only)."""
        return {**entry["params"], **entry["task_params"].get(task, {})}

    def group_slug(self, entry: dict) -> str:
        return runs.tasks_slug(entry["tasks"])

    def member_slugs(self, slug: str) -> list[str]:
        """The task slugs of a run's folder name: one task, or a group's tasks."""
        return slug.split(runs.GROUP_SEP) if slug not in self.task_names else [slug]

    def path(self, relative: str) -> str:
        """A path below the results root (config key ``output``)."""
        return str(Path(self.config["output"]) / relative)

    @staticmethod
    def default_sparsity(entry: dict) -> float | None:
        """The entry's own sparsity: given, or its method's default (None without masks)."""
        return effective_defaults(entry["method"], mask_mode=entry.get("mask_mode", "learned"), sparsity=entry.get("sparsity")).sparsity

    def sparsities(self, entry: dict, task: str) -> list[str]:
        """Folder forms of the sweep values on a task that has a sweep, otherwise of the entry's sparsity."""
        values = entry["sweep"].get(task) or [self.default_sparsity(entry)]
        return [runs.sparsity_name(value) for value in values]

    def grid(self) -> list[Run]:
        """Every train job: entries x sparsities x tasks x seeds (a group: entry x seeds)."""
        single = [
            Run(self.task_slugs[task], label, sparsity, seed)
            for task in self.tasks
            for label, entry in self.entries.items() if not self.is_group(entry) and task in self.entry_tasks(entry)
            for sparsity in self.sparsities(entry, task)
            for seed in self.config["seeds"]
        ]
        groups = [
            Run(self.group_slug(entry), label, runs.sparsity_name(self.default_sparsity(entry)), seed)
            for label, entry in self.entries.items() if self.is_group(entry)
            for seed in self.config["seeds"]
        ]
        return single + groups

    def run_metrics(self) -> list[str]:
        return [self.path(f"{run.dir}/{runs.METRICS}") for run in self.grid()]

    def search_space(self, entry: dict) -> dict | None:
        return entry.get("search_space") or self.tuning["search_space"].get(entry["method"])

    def tune_workers(self, slug: str, label: str, sparsity: str) -> list[str]:
        """The markers of a study's parallel workers (tuning.workers > 1), inputs of its best_params job."""
        if self.tuning["workers"] == 1:
            return []
        return [self.path(runs.worker_marker(slug, label, sparsity, i)) for i in range(1, self.tuning["workers"] + 1)]

    def is_tuned(self, label: str) -> bool:
        return bool(self.tuning["enabled"] and self.entries[label]["tune"])

    def best_params(self, task: str, label: str, sparsity: str) -> str | None:
        """The tuned parameters a train job reads, or None for an untuned entry.

        Sweep values reuse the study at the entry's own sparsity unless tuning.tune_each_sparsity.
        """
        if not self.is_tuned(label):
            return None
        if not self.tuning["tune_each_sparsity"]:
            sparsity = runs.sparsity_name(self.default_sparsity(self.entries[label]))
        return self.path(f"{runs.tuning_dir(task, label, sparsity)}/{runs.BEST_PARAMS}")

    # ------------------------------------------------------------ command lines

    def task_training(self, task: str) -> dict:
        """Training keys of a task: the study's, then the task's own on top (data caps apart)."""
        return {**self.config["training"], **{k: v for k, v in self.tasks[task].items() if k not in DATA_KEYS}}

    def tune_training(self, task: str) -> dict:
        return {**self.task_training(task), **self.tuning["training"]}

    def prepare_flags(self, slug: str) -> str:
        name = self.task_names[slug]
        caps = {key: self.tasks[name].get(key) for key in DATA_KEYS}
        caps["max_length"] = caps["max_length"] or self.config["max_length"]
        options = {key: self.tasks[name][key] for key in FILE_TASK_OPTIONS if key in self.tasks[name]}
        # how generated targets are tokenised: the train jobs check that their --prepared data was made so
        options |= {key: value for key, value in self.task_training(name).items() if key in ("task_format", "max_new_tokens")}
        return flags({"task": name, "model": self.config["model"], "data_seed": self.config["data_seed"], **caps, **options})

    def _explicit(self, entry: dict, values: dict) -> dict:
        """The optimisation setting of a run with every default spelled out, so that a plan
        (``snakemake -n -p``) shows the whole setting: lr (with learned masks also mask lr and
        mask weight decay), batch size, warm-up, weight decay, and epochs unless max_steps is set."""
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        effective = effective_defaults(entry["method"])
        shown: dict[str, Any] = {"lr": effective.lr}
        if entry["method"] in PROPETL_METHODS and entry.get("mask_mode", "learned") == "learned":
            shown |= {"mask_lr": effective.mask_lr, "mask_weight_decay": defaults["mask_weight_decay"]}
        shown |= {key: defaults[key] for key in ("batch_size", "warmup_ratio", "weight_decay")}
        if values.get("max_steps") is None:
            shown["epochs"] = defaults["epochs"]
        return {**shown, **values}

    def _run_flags(self, slug: str | None, label: str, sparsity: str, seed: int, training: dict) -> str:
        """What defines a run: backbone, task (None: given apart), grid entry, sparsity, seed, budget and method params."""
        entry = self.entries[label]
        return flags({
            "model": self.config["model"], "task": self.task_names[slug] if slug else None, "data_seed": self.config["data_seed"],
            "label": label, "method": entry["method"], "sparsity": None if sparsity == "-" else sparsity,
            "mask_mode": entry.get("mask_mode"), "share": entry.get("share"), "seed": seed,
            **self._explicit(entry, {**training, **self.params_on(entry, self.task_names[slug] if slug else None)}),
        })

    @staticmethod
    def _scaled(training: dict, scale: float) -> dict:
        """A rung of a budget ladder: max_steps and eval_every (its default too) times ``scale``."""
        if scale == 1:
            return training
        eval_every = training.get("eval_every", TrainConfig.eval_every)
        return {**training, "max_steps": round(training["max_steps"] * scale), "eval_every": round(eval_every * scale)}

    def train_flags(self, slug: str, label: str, sparsity: str, seed: int) -> str:
        entry = self.entries[label]
        if not self.is_group(entry):
            training = self._scaled(self.task_training(self.task_names[slug]), entry["budget_scale"])
            return self._run_flags(slug, label, sparsity, seed, training)
        # a group: the study's training keys (a task's own apply to that task alone), one --task per member
        training = self._scaled(self.config["training"], entry["budget_scale"])
        member_flags = " ".join(f"--task {shlex.quote(self.task_names[member])}" for member in self.member_slugs(slug))
        return f"{member_flags} {self._run_flags(None, label, sparsity, seed, training)}"

    def prepared(self, slug: str) -> list[str]:
        """The tokenised data a train job reads: its task's, or each group member's."""
        return [self.path(f"data/{member}") for member in self.member_slugs(slug)]

    def prototype_run(self, label: str, seed: int | str) -> str | None:
        """The metrics.json of the run whose prototype this entry's run of ``seed`` trains on (None: its own)."""
        source = self.entries[label].get("prototype_from")
        if source is None:
            return None
        entry = self.entries[source]
        slug = self.group_slug(entry) if self.is_group(entry) else self.task_slugs[entry["tasks"][0]]
        return self.path(f"{runs.run_dir(slug, source, runs.sparsity_name(self.default_sparsity(entry)), seed)}/{runs.METRICS}")

    def tune_flags(self, slug: str, label: str, sparsity: str) -> str:
        seed = self.config["seeds"][0] if self.tuning["seed"] is None else self.tuning["seed"]
        space = json.dumps(self.search_space(self.entries[label]))
        return " ".join([
            self._run_flags(slug, label, sparsity, seed, self.tune_training(self.task_names[slug])),
            flags({"n_trials": self.tuning["n_trials"], "sampler_seed": self.tuning["sampler_seed"],
                   "pruner": self.tuning["pruner"], "search_space": space}),
        ])

    def task_file(self, slug: str) -> list[str]:
        """A file task's table is an input of its prepare job; registered tasks have none."""
        name = self.task_names[slug]
        return [] if name in TASKS else [name]

    def resource(self, rule: str, key: str) -> int:
        return {**RESOURCE_DEFAULTS[rule], **self.config["resources"].get(rule, {})}[key]
