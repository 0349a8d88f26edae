# Wiring between Snakemake and propetl.study, which loads, validates and expands the study
# (tests/test_study.py tests it without Snakemake). Runs at parse time: a bad config stops
# the workflow here, before any job, with ONE line naming the key. Imports no torch.

import glob
import os
import shlex
import shutil
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config

from propetl import runs as layout
from propetl.study import Study, StudyError, typed

# Jobs call the `propetl` command. Snakemake run as .venv/bin/snakemake (venv not activated)
# gives its jobs a PATH without it: put the running interpreter's bin dir first then.
# Local jobs start warm (propetl.warm_start: a server on this host imports torch once and forks
# each job); PROPETL_WARM_START=0 in the environment turns that off. Cluster jobs start cold.
_prefix = "set -euo pipefail; "
if shutil.which("propetl") is None:
    _prefix += f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; "
if workflow.local_exec and "PROPETL_WARM_START" not in os.environ:
    _prefix += "export PROPETL_WARM_START=1; "
shell.prefix(_prefix)

# The config is final here (config files and --config overrides merged); --config values
# arrive as strings and are typed as in a config file first.
update_config(config, typed(dict(workflow.config_settings.config)))
try:
    STUDY = Study(config, yaml.safe_load(Path(workflow.source_path("../schemas/config.schema.yaml")).read_text()))
except StudyError as error:
    raise WorkflowError(str(error)) from None


def _headline():
    """The comparison table's ProPETL rows in words, for the report's landing page (once the tables exist)."""
    path = STUDY.path("tables/comparison.csv")
    if not os.path.exists(path):
        return []
    import pandas as pd

    from propetl.comparison import headline

    table = pd.read_csv(path)
    return headline(table) if len(table) else []


# read by workflow/report/workflow.rst (the study itself was validated above, without this key)
config["_headline"] = _headline()


def results(path):
    """A path below the results root (config key ``output``)."""
    return STUDY.path(path)


def run_metrics():
    return STUDY.run_metrics()


def published_table():
    """The published numbers next to the results, if the study has them (inputs of the tables): the ProPETL
    paper's and the competitors' papers' (results/published/*.csv)."""
    return sorted(glob.glob(results("published/*.csv")))


def best_params(wildcards):
    return STUDY.best_params(wildcards.task, wildcards.label, wildcards.sparsity) or []


def train_data(wildcards):
    return STUDY.prepared(wildcards.task)


def prototype_run(wildcards):
    return STUDY.prototype_run(wildcards.label, wildcards.seed) or []


def prepare_flags(wildcards):
    return STUDY.prepare_flags(wildcards.task)


def train_flags(wildcards):
    return STUDY.train_flags(wildcards.task, wildcards.label, wildcards.sparsity, wildcards.seed)


def tune_workers(wildcards):
    return STUDY.tune_workers(wildcards.task, wildcards.label, wildcards.sparsity)


def tune_flags(wildcards):
    return STUDY.tune_flags(wildcards.task, wildcards.label, wildcards.sparsity)


def task_file(wildcards):
    return STUDY.task_file(wildcards.task)


def resource(rule_name, key):
    return STUDY.resource(rule_name, key)
