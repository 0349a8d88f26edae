"""Provenance: which commit produced a result, and whether the code differed from it."""

import importlib.metadata
import re
import subprocess
import tomllib
from pathlib import Path

import torch

from propetl.provenance import PACKAGES, cpu_identity, git_commit, hardware, provenance


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def test_dirty_means_code_changed_not_the_results_a_study_rewrites(tmp_path):
    for path in ("propetl/train.py", "results/runs/metrics.json", "results-ci/runs/metrics.json"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("v1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    (tmp_path / "results/runs/metrics.json").write_text("v2\n")
    (tmp_path / "results-ci/runs/metrics.json").unlink()
    assert git_commit(tmp_path) == {"commit": head, "dirty": False, "changed_files": []}

    (tmp_path / "propetl/train.py").write_text("v2\n")
    assert git_commit(tmp_path) == {"commit": head, "dirty": True, "changed_files": ["propetl/train.py"]}


def test_outside_a_checkout_nothing_is_claimed(tmp_path):
    assert git_commit(tmp_path) == {"commit": None, "dirty": None, "changed_files": None}


INTEL_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
stepping\t: 2
flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: another processor's fields are not read
"""

AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14 96-Core Processor
stepping\t: 1
flags\t\t: fpu avx2 avx512f avx512_bf16
"""


def test_the_cpu_is_named_by_its_numbers_and_bf16_instruction_sets_not_only_its_name():
    """Two hosts of one name under a hypervisor round bf16 apart: the record must tell them apart."""
    assert cpu_identity(INTEL_AMX) == {"cpu": "Intel(R) Xeon(R) Processor", "cpu_id": "GenuineIntel 6/207/2",
                                       "cpu_bf16_flags": ["avx512_bf16", "amx_bf16", "amx_tile"]}
    assert cpu_identity(AMD) == {"cpu": "AMD EPYC 9R14 96-Core Processor", "cpu_id": "AuthenticAMD 25/17/1",
                                 "cpu_bf16_flags": ["avx512_bf16"]}
    assert cpu_identity("") == {"cpu": None, "cpu_id": None, "cpu_bf16_flags": []}


def test_a_runs_hardware_record_holds_the_cpu_identity_and_torchs_kernel_level():
    record = hardware()
    assert record["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["cpu"] and set(record) >= {"cpu_id", "cpu_bf16_flags", "torch_threads", "gpu"}


def test_every_runtime_dependency_the_project_declares_has_its_version_recorded():
    """A result made through PEFT (or scored by sacrebleu) must say which version made it."""
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    declared = {re.match(r"[A-Za-z0-9._-]+", spec).group(0).lower() for spec in pyproject["project"]["dependencies"]}
    assert declared <= set(PACKAGES)
    recorded = provenance({})["packages"]
    assert recorded["peft"] == importlib.metadata.version("peft")
    assert recorded["sacrebleu"] == importlib.metadata.version("sacrebleu")
