#!/usr/bin/env bash
# Regenerate tests/fixtures/reference/adapterhub_seq_bn.{safetensors,json}.
#
# AdapterHub's `adapters` package pins transformers 4.x while propetl uses
# transformers 5.x, so the reference is produced in a separate, throwaway venv.
#
# Usage (from anywhere):
#   bash tests/reference/make_adapterhub_fixture.sh
# Environment:
#   ADAPTERHUB_VENV   venv location (default /tmp/adapterhub-ref-venv)
#   PYTHON            interpreter used to create the venv (default python3)
set -euo pipefail

VENV="${ADAPTERHUB_VENV:-/tmp/adapterhub-ref-venv}"
PYTHON="${PYTHON:-python3}"

# Exact pins. torch MUST be installed first and kept pinned: an unpinned torch
# would pull a multi-GB CUDA build.
TORCH_VERSION="2.13.0"
ADAPTERS_VERSION="1.3.0"
TRANSFORMERS_VERSION="4.57.6"
SAFETENSORS_VERSION="0.8.0"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi

CONSTRAINTS="$VENV/adapterhub-constraints.txt"
printf 'torch==%s\n' "$TORCH_VERSION" > "$CONSTRAINTS"

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# 1. torch first, pinned.
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
    "${PIP[@]}" install -c "$CONSTRAINTS" "torch==$TORCH_VERSION"
fi

# 2. adapters, its transformers 4.x (pinned to what adapters 1.3.0 resolves
#    to: it requires transformers~=4.57.6) and safetensors; the constraints
#    file keeps pip from touching torch.
"${PIP[@]}" install -c "$CONSTRAINTS" "adapters==$ADAPTERS_VERSION" "transformers==$TRANSFORMERS_VERSION" "safetensors==$SAFETENSORS_VERSION"

# 3. produce the fixture.
cd "$REPO_ROOT"
"$VENV/bin/python" tests/reference/adapterhub_reference.py
