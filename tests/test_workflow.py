"""The Snakemake pipeline: config validation, the grid it plans, lint, and the CI study end to end.

Every test runs Snakemake as a user would (a subprocess) in a temporary copy of the workflow,
so nothing here reads or writes the checkout's results/ or .snakemake/.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from conftest import STUDY_CONFIGS
from jsonschema import Draft202012Validator

from propetl import warm_start
from propetl.cli import build_parser
from propetl.config import PAPER_DEFAULTS, PAPER_EPOCHS, PAPER_TRAINING, PEFT_METHODS, PROPETL_METHODS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
STUDIES = STUDY_CONFIGS
SMALL_GLUE = ("glue-cola", "glue-mrpc", "glue-rte", "glue-stsb")


def study(name: str) -> dict:
    return yaml.safe_load(STUDIES[name].read_text())


def expected_train_jobs(config: dict) -> int:
    """Enabled entries x (the task's sweep values, else one sparsity) x their tasks x seeds; a group: one per seed."""
    per_seed = sum(
        1 if len(entry.get("tasks", [])) > 1 else len(entry.get("sweep", {}).get(task) or [None])
        for entry in config["methods"]
        if entry.get("enabled", True)
        for task in (entry["tasks"][:1] if len(entry.get("tasks", [])) > 1
                     else entry.get("tasks", entry.get("task_params") or config["tasks"]))
    )
    return per_seed * len(config["seeds"])


# ---------------------------------------------------------------- running snakemake


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return workflow_copy(tmp_path_factory.mktemp("workflow"))


def workflow_copy(work: Path) -> Path:
    """A copy of the workflow with the CI task file, as a fresh checkout would have it."""
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "workflow", work / "workflow")
    (work / "tests/fixtures").mkdir(parents=True)
    for name in ("sentiment.csv", "topic.csv"):
        shutil.copy(ROOT / "tests/fixtures" / name, work / "tests/fixtures" / name)
    return work


@pytest.fixture(scope="module", autouse=True)
def own_warm_start_server(tmp_path_factory):
    with warm_start_server_of_their_own(tmp_path_factory.mktemp("warm")):
        yield


@contextlib.contextmanager
def warm_start_server_of_their_own(directory: Path) -> Iterator[None]:
    """Within, studies start their jobs' warm-start server on a socket of their own, stopped at the end.

    On the checkout's default socket it would outlive pytest by its idle time, started from pytest's
    environment, and meet the next local study of this checkout (CI's SLURM check) as a stale server."""
    path = directory / "warm.sock"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(warm_start.SOCKET_ENV, str(path))
        yield
    for server in (p for p in psutil.process_iter(["cmdline"]) if str(path) in (p.info["cmdline"] or [])):
        server.terminate()
        server.wait(timeout=30)


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True, text=True, timeout=600)


def dry_run(workdir: Path, *args: str) -> str:
    result = snakemake(workdir, "-n", "-p", "--nolock", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def parse_job(argv: list[str]):
    """A planned job's argv as `propetl` parses it, its --task (repeatable) joined as the run folder names it."""
    args = build_parser().parse_args(argv)
    if isinstance(getattr(args, "task", None), list):
        args.task = "+".join(args.task)
    return args


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def commands(output: str, subcommand: str) -> list[list[str]]:
    """The planned `propetl <subcommand>` command lines as argv, without the log redirection."""
    lines = re.findall(rf"^Shell command: propetl {subcommand} (.*)$", output, re.M)
    return [[subcommand, *shlex.split(line.split(" > ", 1)[0])] for line in lines]


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


# ---------------------------------------------------------------- the configs


@pytest.mark.parametrize("name", STUDIES)
def test_each_study_is_valid_against_the_schema(name):
    Draft202012Validator.check_schema(SCHEMA)
    Draft202012Validator(SCHEMA).validate(study(name))


# ---------------------------------------------------------------- the grid


# The competitors' published RoBERTa-base GLUE settings (results/published/README.md): task -> (epochs, the method's lr,
# the head's lr[, FourierFT scaling]). VeRA: Kopiczko et al., ICLR 2024, Table 8. FourierFT: Gao et al., ICML 2024,
# Table 9 and the official experiments/GLUE/<task>-base-best.sh.
VERA_GLUE = {"glue-sst2": (60, 4e-3, 4e-3), "glue-mrpc": (30, 1e-2, 4e-3), "glue-cola": (80, 1e-2, 1e-2),
             "glue-qnli": (25, 1e-2, 4e-3), "glue-rte": (160, 4e-3, 1e-2), "glue-stsb": (80, 1e-2, 1e-2)}
FOURIERFT_GLUE = {"glue-sst2": (40, 5e-2, 6e-3, 140), "glue-mrpc": (30, 5e-2, 6e-3, 151), "glue-cola": (100, 1.2e-1, 8e-3, 49),
                  "glue-qnli": (40, 1e-1, 1e-3, 29), "glue-rte": (90, 9e-2, 1.1e-2, 110), "glue-stsb": (60, 9e-2, 9e-3, 84)}


def test_paper_study_plans_168_runs_with_every_official_hyperparameter_spelled_out(workdir):
    config = study("paper")
    output = dry_run(workdir, "--configfile", "workflow/configs/paper.yaml")
    counts = job_counts(output)
    assert counts["train"] == expected_train_jobs(config) == 8 * 3 * 7 + 2 * 6 * 3 == 204
    assert counts["prepare"] == 8 and counts["tables"] == counts["figures"] == 1
    assert "tune" not in counts
    competitors = [parse_job(argv) for argv in commands(output, "train") if parse_job(argv).method in ("vera", "fourierft")]
    for argv in commands(output, "train"):
        args = parse_job(argv)  # every flag the workflow writes is one `propetl train` takes
        if args.method in ("vera", "fourierft"):
            continue  # their own papers' settings: the next test
        assert args.model == "roberta-base" and args.max_length is None and args.params is None
        # a reader of the plan sees the whole setting: no hyperparameter is left to a default
        shown = ["--lr", "--batch-size", "--warmup-ratio", "--weight-decay", "--epochs", "--eval-strategy", "--fp16"]
        if args.method in PROPETL_METHODS:
            shown += ["--mask-lr", "--mask-weight-decay", "--sparsity"]
        assert [name for name in shown if name not in argv] == []
        assert args.epochs == PAPER_EPOCHS[args.task] == (20 if args.task in SMALL_GLUE else 10) and args.max_steps is None
        assert args.lr == PAPER_DEFAULTS[args.method]["lr"]
        for key in ("batch_size", "warmup_ratio", "weight_decay", "fp16", "eval_strategy"):
            assert getattr(args, key) == PAPER_TRAINING[key], key
        if args.method in PROPETL_METHODS:
            assert args.mask_lr == PAPER_DEFAULTS[args.method]["mask_lr"]
            assert float(args.sparsity) == PAPER_DEFAULTS[args.method]["sparsity"]
            assert args.mask_weight_decay == PAPER_TRAINING["mask_weight_decay"]
        assert args.seed in PAPER_TRAINING["seeds"]
    assert {args.method: args.lr for args in map(parse_job, commands(output, "train"))}["adapter"] == 1e-4
    prepared = {flag(argv, "--task"): flag(argv, "--max-length") for argv in commands(output, "prepare")}
    assert prepared == {task: str(PAPER_TRAINING["max_length"]) for task in config["tasks"]}
    assert {flag(argv, "--data-seed") for argv in commands(output, "prepare")} == {"42"}  # run_glue.py's dataset_seed
    # the competitors at their own papers' settings, per task, on the six tasks the papers report
    assert {(args.method, args.task) for args in competitors} == {(m, t) for m in ("vera", "fourierft") for t in VERA_GLUE}
    for args in competitors:
        assert args.seed in PAPER_TRAINING["seeds"] and args.weight_decay == 0.0 and args.warmup_ratio == 0.06
        if args.method == "vera":
            assert (args.epochs, args.lr, args.head_lr) == VERA_GLUE[args.task]
            assert args.batch_size == 64 and args.peft_args == {"r": 1024}
        else:
            epochs, lr, head_lr, scaling = FOURIERFT_GLUE[args.task]
            assert (args.epochs, args.lr, args.head_lr, args.batch_size) == (epochs, lr, head_lr, 32)
            assert args.peft_args == {"n_frequency": 1000, "scaling": scaling, "random_loc_seed": 2024}


# The official T5 configs' values (ChaosCodes/ProPETL propetl-t5/configs/, docs/fidelity.md cites file and line),
# per study and entry label; our sparsity = 1 - their kept "sparsity", mask lr = lr x "mask_lr_ratio" 10.
T5_GLUE = [f"t5-glue-{t}" for t in ("rte", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "cola")]
T5_OFFICIAL = {
    "paper_t5_glue": {"model": "t5-base", "tasks": T5_GLUE, "max_length": 128, "train": 17, "shared": {
        "max_steps": 20000, "batch_size": 128, "eval_batch_size": 128, "eval_every": 2000, "warmup_ratio": 500 / 20000,
        "weight_decay": 0.0, "label_smoothing": 0.1, "max_new_tokens": 128, "num_beams": 1, "bf16": False, "fp16": False,
        "task_format": "text-to-text-no-prefix"}, "entries": {
        "full": {"lr": 3e-4}, "adapter": {"lr": 3e-4, "reduction_factor": 12},
        "propetl-adapter": {"lr": 3e-4, "mask_lr": 3e-3, "sparsity": 0.7, "reduction_factor": 12,
                            "task_masks": "task_or_layer", "task_temperature": 10, "task": "+".join(T5_GLUE)}}},
    "paper_t5_3b": {"model": "t5-3b", "tasks": T5_GLUE, "max_length": 128, "train": 17, "shared": {
        "max_steps": 20000, "eval_every": 2000, "warmup_ratio": 500 / 20000, "label_smoothing": 0.1, "max_new_tokens": 128,
        "task_format": "text-to-text-no-prefix", "fp16": False}, "entries": {
        "full": {"lr": 3e-4, "batch_size": 2, "eval_batch_size": 2, "grad_accum": 64, "bf16": True},
        "adapter": {"lr": 3e-4, "batch_size": 32, "grad_accum": 4, "reduction_factor": 128, "bf16": True},
        "propetl-adapter": {"lr": 3e-4, "mask_lr": 3e-3, "sparsity": 0.7, "batch_size": 32, "grad_accum": 4, "bf16": False,
                            "reduction_factor": 128, "task_masks": "task_or_layer", "task_temperature": 10}}},
    "paper_xsum": {"model": "t5-base", "tasks": ["xsum"], "max_length": 512, "train": 3, "shared": {
        "max_steps": 100000, "batch_size": 32, "eval_batch_size": 16, "eval_every": 5000, "warmup_ratio": 500 / 100000,
        "weight_decay": 0.01, "label_smoothing": 0.1, "max_new_tokens": 64, "num_beams": 6, "bf16": False, "fp16": False}, "entries": {
        "full": {"lr": 1e-4, "grad_accum": 2}, "adapter": {"lr": 1e-4, "reduction_factor": 8},
        "propetl-adapter": {"lr": 1e-4, "mask_lr": 1e-3, "sparsity": 0.5, "reduction_factor": 1, "mask_weight_decay": 0.01}}},
    "paper_wmt16": {"model": "t5-base", "tasks": ["wmt16-ro-en"], "max_length": 64, "train": 3, "shared": {
        "batch_size": 64, "eval_batch_size": 32, "weight_decay": 0.01, "label_smoothing": 0.1, "max_new_tokens": 64,
        "num_beams": 4, "bf16": False, "fp16": False}, "entries": {
        "full": {"lr": 3e-4, "max_steps": 20000, "eval_every": 1000, "warmup_ratio": 500 / 20000},
        "adapter": {"lr": 3e-4, "reduction_factor": 8, "max_steps": 60000, "eval_every": 5000, "warmup_ratio": 500 / 60000},
        "propetl-adapter": {"lr": 3e-4, "mask_lr": 3e-3, "sparsity": 0.5, "reduction_factor": 1, "max_steps": 60000,
                            "eval_every": 5000, "warmup_ratio": 500 / 60000, "mask_weight_decay": 0.01}}},
}


@pytest.mark.parametrize("name", T5_OFFICIAL)
def test_the_t5_paper_studies_plan_with_the_official_values_on_every_job_command(workdir, name):
    official = T5_OFFICIAL[name]
    output = dry_run(workdir, "--configfile", f"workflow/configs/{name}.yaml")
    counts = job_counts(output)
    assert counts["train"] == expected_train_jobs(study(name)) == official["train"] and "tune" not in counts
    assert {flag(argv, "--task"): flag(argv, "--max-length") for argv in commands(output, "prepare")} == dict.fromkeys(
        official["tasks"], str(official["max_length"]))
    assert {flag(argv, "--data-seed") for argv in commands(output, "prepare")} == {"42"}
    planned = {}
    for argv in commands(output, "train"):
        args = parse_job(argv)
        assert args.model == official["model"] and args.data_seed == 42 and args.seed == 42
        for key, value in {**official["shared"], **official["entries"][args.label]}.items():
            assert getattr(args, key) == pytest.approx(value) if isinstance(value, float) else getattr(args, key) == value, (args.label, key)
        planned.setdefault(args.label, set()).add(args.task)
    assert planned.keys() == official["entries"].keys()
    assert planned["full"] == planned["adapter"] == set(official["tasks"])  # the dedicated baselines: one task per job


def test_default_study_tunes_every_method_alike_and_never_duplicates_baselines(workdir):
    config = study("default")
    output = dry_run(workdir)
    counts = job_counts(output)
    assert counts["train"] == expected_train_jobs(config) == 78  # 13 methods x 2 tasks per seed, seeds 1-3
    assert counts["tune"] == 26  # every method on both tasks (tuning.same_budget)
    runs = {}
    for argv in commands(output, "train"):
        args = parse_job(argv)
        assert re.fullmatch(r"results/runs/[\w.-]+/[\w.-]+/s(-|[0-9.]+)/seed\d", args.out), args.out
        runs[args.out] = args
    cells = {(a.task, a.label): set() for a in runs.values()}
    for out, args in runs.items():
        cells[args.task, args.label].add(out.split("/")[4])
    for label in ("full", "bitfit", "adapter", "lora", "prefix", "vera", "vb-lora", "fourierft", "ia3", "dora"):  # one folder, s-
        assert cells["rt-polarity", label] == cells["snli", label] == {"s-"}
    assert cells["rt-polarity", "propetl-adapter"] == cells["snli", "propetl-adapter"] == {"s0.5"}  # the sweep is make ablation's
    assert cells["rt-polarity", "propetl-lora"] == cells["snli", "propetl-prefix"] == {"s0.9"}
    # every run trains with its own study's rates
    for out, args in runs.items():
        task, label, sparsity = out.split("/")[2:5]
        assert args.params == f"results/tuning/{task}/{label}/{sparsity}/best_params.json", out
    trials = [parse_job(argv) for argv in commands(output, "tune")]
    assert {(t.n_trials, t.max_steps, t.batch_size) for t in trials if t.task == "rt-polarity"} == {(2, 60, 16)}
    assert {(t.n_trials, t.max_steps, t.batch_size) for t in trials if t.task == "snli"} == {(2, 60, 32)}


def test_ablation_study_changes_only_the_masks_and_the_sharing_between_its_rows(workdir):
    output = dry_run(workdir, "--configfile", "workflow/configs/ablation.yaml")
    # 4 variants x 2 tasks x 2 seeds, and the sparsity sweep's other 3 values on rt-polarity x 2 seeds
    assert job_counts(output)["train"] == expected_train_jobs(study("ablation")) == 4 * 2 * 2 + 3 * 2
    variants = set()
    for argv in commands(output, "train"):
        args = parse_job(argv)
        assert args.out.startswith("results/ablation/runs/") and args.method == "propetl-adapter"
        assert args.lr == 2e-3 and args.params is None  # one learning rate for every row
        variants.add((args.label, args.mask_mode, args.share))
        assert (args.sparsity is None) == (args.mask_mode == "none")  # no masks, no sparsity, folder s-
        assert ("/s-/" in args.out) == (args.mask_mode == "none")
    assert variants == {
        ("propetl-adapter", "learned", "layers"),
        ("propetl-adapter-random", "random", "layers"),
        ("propetl-adapter-nomask", "none", "layers"),
        ("propetl-adapter-noshare", "learned", "none"),
    }


def test_budget_study_scales_only_the_steps_between_the_rungs_of_its_ladder(workdir):
    output = dry_run(workdir, "--configfile", "workflow/configs/budget.yaml")
    assert job_counts(output)["train"] == expected_train_jobs(study("budget")) == 2 * 2 * 3 * 3
    base = {"rt-polarity": (240, 120), "snli": (180, 90)}
    rungs = set()
    for argv in map(parse_job, commands(output, "train")):
        scale = int(argv.label.rsplit("-x", 1)[1])
        assert (argv.max_steps, argv.eval_every) == (base[argv.task][0] * scale, base[argv.task][1] * scale)
        assert argv.lr == 2e-3 and argv.warmup_ratio == 0.1 and argv.params is None  # everything else equal
        rungs.add((argv.method, scale))
    assert rungs == {(method, scale) for method in ("adapter", "propetl-adapter") for scale in (1, 2, 4)}


@pytest.mark.parametrize("name", STUDIES)
def test_planning_a_committed_study_imports_no_torch_once_peft_has_judged_its_competitors(name, workdir, tmp_path):
    # a torch that cannot be imported: planning must not need it (jobs do, planning does not), except the first time
    # a study names a PEFT method: PEFT's own config classes judge its type and arguments, and importing PEFT imports
    # torch; a combination judged valid is remembered (propetl.study.check_peft), so later plans need no torch
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('planning imported torch')\n")
    cache = {"PROPETL_CACHE": str(tmp_path / "cache")}
    without_torch = {**os.environ, **cache, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    plan = lambda env: subprocess.run([sys.executable, "-m", "snakemake", "-n", "--nolock", "--configfile", str(STUDIES[name])],  # noqa: E731
                                      cwd=workdir, capture_output=True, text=True, timeout=300, env=env)
    competitors = any(entry["method"] in PEFT_METHODS for entry in study(name)["methods"] if entry.get("enabled", True))
    result = plan(without_torch)
    if not competitors:
        assert result.returncode == 0, result.stdout + result.stderr
        return
    assert result.returncode != 0 and "planning imported torch" in result.stdout + result.stderr
    judged = plan({**os.environ, **cache})  # PEFT judges once, with torch
    assert judged.returncode == 0, judged.stdout + judged.stderr
    again = plan(without_torch)
    assert again.returncode == 0, again.stdout + again.stderr


def test_config_overrides_on_the_command_line_are_typed_merged_and_checked(workdir):
    output = dry_run(workdir, "--config", "seeds=[3]", "tuning={enabled: false}", "output=elsewhere")
    counts = job_counts(output)
    assert counts["train"] == expected_train_jobs({**study("default"), "seeds": [3]}) == 26
    assert "tune" not in counts
    for argv in commands(output, "train"):
        args = parse_job(argv)
        assert args.seed == 3 and args.params is None and args.out.startswith("elsewhere/runs/")


def test_snakemake_lint_reports_nothing(workdir):
    result = snakemake(workdir, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


# ---------------------------------------------------------------- bad configs


def _bad(mutate):
    config = copy.deepcopy(study("default"))
    mutate(config)
    return config


# Every rule of the config is tested in-process in test_study.py; these check that Snakemake
# turns the study's refusal into one line and no job, for a config file and for --config.
BAD_CONFIGS = {
    # case: (config file or None for the default, extra args, what the one line must name)
    "unknown method": (_bad(lambda c: c["methods"][0].update(method="propetl-adaptor")), (), ["methods[0]", "'propetl-adaptor'", "allowed: full"]),
    "sparsity 1.0": (_bad(lambda c: c["methods"][3].update(sparsity=1.0)), (), ["methods[3]", "sparsity=1.0", "[0, 1)"]),
    "--config override": (None, ("--config", "tuning={n_trials: 0}"), ["tuning.n_trials", "minimum of 1"]),
}


@pytest.fixture(scope="module")
def bad_config_runs(workdir, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Each bad config planned once (two at a time: each run is mostly start-up)."""
    folder = tmp_path_factory.mktemp("bad")

    def plan(case):
        config, extra, _ = BAD_CONFIGS[case]
        args = ["-n", "--nolock", *extra]
        if config is not None:
            path = folder / f"{case.replace(' ', '_')}.yaml"
            path.write_text(yaml.safe_dump(config))
            args += ["--configfile", str(path)]
        return case, snakemake(workdir, *args)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(plan, BAD_CONFIGS))


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_a_bad_config_stops_before_any_job_with_one_line_naming_the_key(bad_config_runs, case):
    result = bad_config_runs[case]
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Job stats" not in output and "Building DAG" not in output
    lines = [line for line in output.splitlines() if line.startswith("config: ")]
    assert len(lines) == 1, output
    for needle in BAD_CONFIGS[case][2]:
        assert needle in lines[0], lines[0]


def test_a_study_with_a_malformed_task_file_fails_at_its_prepare_job_with_that_line(workdir, tmp_path):
    bad = tmp_path / "ragged.csv"
    bad.write_text((ROOT / "tests/fixtures/sentiment.csv").read_text() + "one,two,three\n")
    config = {**study("ci"), "tasks": {str(bad): {}}, "output": str(tmp_path / "out"), "tuning": {"enabled": False},
              "methods": [{"label": "bitfit", "method": "bitfit"}]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "--cores", "1", "--configfile", str(tmp_path / "study.yaml"))
    assert result.returncode != 0 and "Error in rule prepare" in result.stdout + result.stderr, result.stderr
    log = (tmp_path / "out/logs/prepare/ragged.log").read_text().strip().splitlines()
    assert log[-1] == "propetl prepare: error: ragged.csv line 242: 3 fields, header has 2"
    assert not (tmp_path / "out/runs").exists()


# ---------------------------------------------------------------- the CI study end to end


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The CI study, run once however many workers run its tests: the first to need it runs it where all of this
    session's workers can read it (pytest-xdist gives each a temporary directory under a shared one), the others
    wait for it."""
    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared
    work, record = shared / "ci-study", shared / "ci-study.json"
    with open(shared / "ci-study.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.is_file():
            work.mkdir()
            with warm_start_server_of_their_own(work):  # a session fixture starts before the module's own server
                result = snakemake(workflow_copy(work), "--cores", "2", "--configfile", "workflow/configs/ci.yaml")
            record.write_text(json.dumps({"args": result.args, "returncode": result.returncode,
                                          "stdout": result.stdout, "stderr": result.stderr}))
    return subprocess.CompletedProcess(**json.loads(record.read_text())), work / study("ci")["output"]


@pytest.mark.slow
def test_ci_study_runs_end_to_end(ci_run):
    result, root = ci_run
    assert result.returncode == 0, result.stdout + result.stderr
    config = study("ci")
    runs = pd.read_csv(root / "tables/runs.csv")
    assert expected_train_jobs(config) == 8
    assert sorted(set(runs["run_dir"])) == [
        "runs/sentiment+topic/joint/s0.5/seed1",  # one model on both tasks: a row per task
        "runs/sentiment/adapter/s-/seed1",
        "runs/sentiment/bitfit/s-/seed1",
        "runs/sentiment/propetl-adapter/s0.5/seed1",
        "runs/sentiment/propetl-adapter/s0.9/seed1",
        "runs/sentiment/vera/s-/seed1",
        "runs/topic/bitfit/s-/seed1",
        "runs/topic/frozen/s0.5/seed1",
    ]
    assert set(runs["task"]) == {"sentiment", "topic"}  # task files named by their stems, as their folders
    joint = runs[runs["label"] == "joint"]
    assert sorted(joint["task"]) == ["sentiment", "topic"] and set(joint["group"]) == {"sentiment+topic"}
    frozen = json.loads((root / "runs/topic/frozen/s0.5/seed1/artifact/petl_config.json").read_text())
    assert frozen["prototype_ref"]["path"] == "../../../../../sentiment+topic/joint/s0.5/seed1/artifact/prototype.safetensors"
    storage = pd.read_csv(root / "tables/storage_by_tasks.csv")
    two = storage[(storage["n_tasks"] == 2) & (storage["sparsity"].isna() | (storage["sparsity"] == 0.5))].set_index("label")["total_bits"]
    # one prototype for both tasks, not one per task as two single-task ProPETL runs store
    assert two["joint"] < two["propetl-adapter"] and two["frozen"] < two["propetl-adapter"]
    for name in ("cells.csv", "paper_table.csv", "paper_table.md", "paper_table.tex", "multitask.md", "comparison.md"):
        assert (root / "tables" / name).is_file()
    # the competitor ran through PEFT: its own files in the artifact, its storage counted from PEFT's shapes
    assert (root / "runs/sentiment/vera/s-/seed1/artifact/peft/adapter_model.safetensors").is_file()
    vera = json.loads((root / "runs/sentiment/vera/s-/seed1/metrics.json").read_text())["storage"]
    assert vera["peft"]["peft_type"] == "VERA" and vera["storage_min_bits"] < vera["peft"]["with_regenerable_bits"]
    # every ProPETL cell against its baseline (and whatever stores at most as much), with a bootstrap interval
    compared = pd.read_csv(root / "tables/comparison.csv")
    dedicated = compared[(compared["propetl"] == "propetl-adapter (s=0.5)") & (compared["other"] == "adapter")].iloc[0]
    assert dedicated["relation"] == "dedicated baseline" and dedicated["ci_low"] <= dedicated["difference"] <= dedicated["ci_high"]
    for name in ("score_vs_storage", "score_vs_sparsity", "mask_overlap", "storage_by_tasks", "task_mask_overlap"):
        assert (root / "figures" / f"{name}.png").is_file()
    for study_dir in ("sentiment/adapter/s-", "sentiment/propetl-adapter/s0.5"):
        best = yaml.safe_load((root / "tuning" / study_dir / "best_params.json").read_text())
        assert best["_study"]["n_trials"] == config["tuning"]["n_trials"] and "lr" in best
        assert (root / "tuning" / study_dir / "journal.log").stat().st_size > 0
    assert not (root / "tuning/sentiment/propetl-adapter/s0.9").exists()  # the sweep reuses s0.5's study
    assert (root / "benchmarks/train/sentiment/bitfit/s-/seed1.tsv").is_file()
    assert (root / "logs/train/sentiment/bitfit/s-/seed1.log").is_file()
    # where the job-slot time went: every job that ran, each train job split by its phases
    job_time = pd.read_csv(root / "tables/job_time.csv")
    assert set(job_time["rule"]) == {"prepare", "tune", "train", "tables", "figures"}
    assert {"startup", "train_steps", "validation", "test", "other"} <= set(job_time[job_time["rule"] == "train"]["phase"])
    assert "tuning overhead" in set(job_time[job_time["rule"] == "tune"]["phase"])
    assert job_time["share_pct"].sum() == pytest.approx(100, abs=0.5)
    # local jobs start warm once the server the first job started is up (propetl.warm_start)
    assert any(json.loads(path.read_text())["timing"]["warm_start"] for path in (root / "runs").glob("*/*/*/*/metrics.json"))


@pytest.mark.slow
def test_a_second_run_has_nothing_to_do_and_the_report_builds(ci_run):
    result, root = ci_run
    assert result.returncode == 0, result.stdout + result.stderr
    again = snakemake(root.parent, "--cores", "2", "--configfile", "workflow/configs/ci.yaml")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    report = snakemake(root.parent, "--configfile", "workflow/configs/ci.yaml", "--report", str(root / "report.html"))
    assert report.returncode == 0, report.stdout + report.stderr
    html = (root / "report.html").read_text()
    assert "score_vs_storage.png" in html and "paper_table.csv" in html
    # the landing page opens with the headline: the comparison table's ProPETL rows in words and numbers
    assert "Where ProPETL stands" in html and "against its dedicated adapter" in html


@pytest.mark.slow
def test_a_killed_study_reruns_with_the_same_command_and_ends_with_the_uninterrupted_tables(ci_run, tmp_path):
    reference_result, reference = ci_run
    assert reference_result.returncode == 0, reference_result.stdout + reference_result.stderr
    work = tmp_path / "work"

    def without_runs(directory: str, names: list[str]) -> set[str]:
        """The reference study as its tuning left it (data prepared, rates tuned): the kill lands among train jobs."""
        return set(names) & ({"runs", "tables", "figures"} if Path(directory) == reference else {".snakemake"})

    shutil.copytree(reference.parent, work, ignore=without_runs)
    command = ["workflow/scripts/snakemake-resumable", "--cores", "2", "--configfile", "workflow/configs/ci.yaml"]
    # cold jobs (no warm start) until the kill: slow enough that it lands between train jobs
    env = {**os.environ, "SNAKEMAKE": f"{sys.executable} -m snakemake"}
    cold = {**env, "PROPETL_WARM_START": "0"}
    runs = work / study("ci")["output"] / "runs"
    study_process = subprocess.Popen(command, cwd=work, env=cold, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tuned = {path: path.stat().st_mtime_ns for path in (runs.parent / "tuning").glob("*/*/*/best_params.json")}

    def recorded_finished() -> list[Path]:
        """Runs whose job Snakemake has recorded as complete: its metadata written, its incomplete marker gone."""
        keys = {path: base64.urlsafe_b64encode(str(path.relative_to(work)).encode()).decode()
                for path in runs.glob("*/*/*/*/metrics.json")}
        return [path for path, key in keys.items()
                if (work / ".snakemake/metadata" / key).is_file() and not (work / ".snakemake/incomplete" / key).exists()]

    deadline = time.monotonic() + 300
    while not recorded_finished() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(study_process.pid, signal.SIGKILL)  # Snakemake and every job it started, mid-study
    study_process.wait()
    # killed among the train jobs, its tuning untouched: a trial killed mid-way is #11's business (stale trials)
    assert len(tuned) == 2 and all(path.stat().st_mtime_ns == mtime for path, mtime in tuned.items())
    finished = {path: path.stat().st_mtime_ns for path in recorded_finished()}
    assert finished and len(list(runs.glob("*/*/*/*/metrics.json"))) < expected_train_jobs(study("ci"))
    assert list((work / ".snakemake/locks").iterdir())  # a plain `snakemake` would now refuse to start
    again = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)  # as a user reruns: warm
    assert again.returncode == 0, again.stdout + again.stderr
    assert "releasing its locks" in again.stderr
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in finished.items())  # finished runs were kept
    tables = work / study("ci")["output"] / "tables"
    for name in ("cells.csv", "paper_table.csv", "multitask.csv"):
        assert (tables / name).read_text() == (reference / "tables" / name).read_text(), name


def test_the_slurm_profile_names_no_site_and_asks_for_gpus_only_through_the_study():
    profile = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert "default-resources" not in profile and "set-resources" not in profile  # account/partition: the site's
    assert {rule: limits.get("gpu", 0) for rule, limits in study("paper")["resources"].items()}["train"] == 1
    assert all(limits.get("gpu", 0) == 0 for limits in study("ci").get("resources", {}).values())


def test_parallel_tuning_workers_are_jobs_of_their_own_before_the_best_params(workdir):
    output = dry_run(workdir, "--configfile", "workflow/configs/ci.yaml", "--config", "tuning={workers: 3}")
    counts = job_counts(output)
    assert counts["tune_worker"] == 3 * counts["tune"] == 6
    workers = [argv for argv in commands(output, "tune") if "--out" not in argv]
    assert len(workers) == 6 and all("--storage" in argv for argv in workers)
