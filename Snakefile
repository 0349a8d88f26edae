# propetl-bench pipeline: prepare (tokenise each task once) -> tune (Optuna studies of the
# tuned grid entries) -> train (entries x sparsities x tasks x seeds) -> tables + figures
# -> job_time (where the job-slot time went).
#
#   snakemake --cores 2                                        # the embedded default study
#   snakemake --cores 2 --configfile workflow/configs/ci.yaml  # another study
#   snakemake --cores 2 --config seeds=[1] output=results-one  # single keys changed
#   snakemake --workflow-profile workflow/profiles/default     # local defaults (2 cores, ...)
#   snakemake --workflow-profile workflow/profiles/slurm --configfile workflow/configs/paper.yaml
#   snakemake --report results/report.html                     # tables and figures as HTML
#
# The study is described in config.yaml (schema: workflow/schemas/config.schema.yaml);
# every job calls the `propetl` command line.

from snakemake.utils import min_version

min_version("9.0")


# The embedded default study, unless --configfile names another one. (A configfile
# directive would otherwise be merged with it key by key: tasks and training would leak.)
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


wildcard_constraints:
    task=r"[^/]+",
    label=r"[^/]+",
    sparsity=r"-|[0-9.e+-]+",
    seed=r"\d+",
    worker=r"\d+",


localrules:
    all,


rule all:
    input:
        rules.tables.output,
        rules.figures.output,
        rules.job_time.output,
