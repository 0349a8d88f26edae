# Two entry points (see README): `make study` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel lies on this machine's disk; on a GPU cluster the same pin pulls the
# normal CUDA build from PyPI. Override (e.g. TORCH_SPEC=torch) to keep your own.
TORCH_SPEC ?= torch==2.13.0
CORES ?= 2
SNAKEMAKE_ARGS ?=
BIN := $(VENV)/bin

.PHONY: setup test study ablation budget multitask decoder generation

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,cluster]"
	touch $@

# pytest on CORES workers (pytest-xdist: no test depends on another's order or files; 2 workers took
# the suite from 9 to 5-6 minutes on the 2-core Intel Xeon), then the CI study through the
# SLURM profile on a real single-node SLURM (.ci/slurm-study: as root it installs and starts SLURM
# itself; otherwise it says loudly that it skipped)
test: setup
	$(BIN)/python -m pytest -q -n $(CORES)
	BIN=$(BIN) .ci/slurm-study

# CONFIG: another study config (default: config.yaml, the embedded default study).
study: setup
	$(BIN)/propetl fetch
	SNAKEMAKE=$(BIN)/snakemake workflow/scripts/snakemake-resumable --cores $(CORES) $(if $(CONFIG),--configfile $(CONFIG)) $(SNAKEMAKE_ARGS)

# The mask / sharing ablation into results/ablation, the training-budget ladder into results/budget,
# one network for several tasks into results/multitask, SmolLM2-135M into results/decoder, SmolLM2-135M
# generating (text-to-text classification and cedict) into results/generation.
ablation:
	$(MAKE) study CONFIG=workflow/configs/ablation.yaml
budget:
	$(MAKE) study CONFIG=workflow/configs/budget.yaml
multitask:
	$(MAKE) study CONFIG=workflow/configs/multitask.yaml
decoder:
	$(MAKE) study CONFIG=workflow/configs/decoder.yaml
generation:
	$(MAKE) study CONFIG=workflow/configs/generation.yaml
