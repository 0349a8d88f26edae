"""What a result needs beside it to be reproduced: config, seeds, versions, commit, hardware."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

# Every runtime dependency pyproject.toml declares (a test keeps the two in step: peft, whose code
# trains the competitors, was once missing), numpy, and this package itself.
PACKAGES = ("torch", "transformers", "accelerate", "datasets", "safetensors", "optuna", "pandas", "matplotlib",
            "snakemake", "scikit-learn", "scipy", "pyyaml", "jsonschema", "tabulate", "tqdm", "psutil", "gguf",
            "rouge-score", "sacrebleu", "peft", "numpy", "propetl-bench")


def _versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


# Result folders are tracked and rewritten by the very study that records this, so a change
# there says nothing about the code that produced the numbers.
RESULT_PATHSPECS = (":(exclude)results", ":(exclude,glob)results-*/**")


def git_commit(repo: Path | None = None) -> dict[str, Any]:
    """HEAD of the checkout the code runs from, and which tracked files outside results differed from it."""
    repo = repo or Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return None

    changed = git("diff", "HEAD", "--name-only", "--", ".", *RESULT_PATHSPECS)
    head = git("rev-parse", "HEAD")
    if changed is None or head is None:
        return {"commit": None, "dirty": None, "changed_files": None}
    files = changed.splitlines()
    return {"commit": head.strip(), "dirty": bool(files), "changed_files": files}


# Instruction sets that decide which bf16 kernels a CPU runs, and so how they round. Under a hypervisor
# the model name alone says little: the same code, seeds and packages gave ablation scores up to 1.2
# points apart on two hosts that both recorded "Intel(R) Xeon(R) Processor" (results/README.md, ablation).
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def cpu_identity(cpuinfo: str) -> dict[str, Any]:
    """The first processor of a ``/proc/cpuinfo`` text: its name, vendor/family/model/stepping and bf16 flags."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    vendor = fields.get("vendor_id")
    numbers = "/".join(fields.get(key, "?") for key in ("cpu family", "model", "stepping"))
    return {
        "cpu": fields.get("model name"),
        "cpu_id": f"{vendor} {numbers}" if vendor else None,
        "cpu_bf16_flags": [flag for flag in BF16_FLAGS if flag in flags],
    }


def _cpu() -> dict[str, Any]:
    try:
        found = cpu_identity(Path("/proc/cpuinfo").read_text())
    except OSError:
        found = {"cpu": None, "cpu_id": None, "cpu_bf16_flags": None}
    return {**found, "cpu": found["cpu"] or platform.processor() or platform.machine()}


def hardware() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        **_cpu(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def provenance(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "config": config,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "argv": sys.argv,
        "packages": _versions(),
        "git": git_commit(),
        "hardware": hardware(),
    }
