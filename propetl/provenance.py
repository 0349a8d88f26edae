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

PACKAGES = ("torch", "transformers", "datasets", "accelerate", "safetensors", "optuna", "numpy", "pandas", "scikit-learn", "scipy", "snakemake", "propetl-bench")


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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
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
