"""Provenance: which commit produced a result, and whether the code differed from it."""

import subprocess

from propetl.provenance import git_commit


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
