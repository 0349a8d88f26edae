"""Where a job's wall time goes: named phases of this process, added up as they happen.

A study's benchmark files give each Snakemake job its wall time; these phases split it, so
that the share spent in training steps and evaluation (what a study is for) can be told
from interpreter start-up, loading and saving (what it pays to get there). A run records
its breakdown in ``metrics.json`` (``timing``), a tuning trial in the Optuna journal.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

_totals: dict[str, float] = {}
_forked = False  # this process is a job the warm-start server forked (its start-up was a fork, not imports)

# The phases a run passes through; "train_loop" (Trainer.train) contains "validation" and "checkpoint".
PHASES = ("load", "train_loop", "validation", "checkpoint", "test", "save")
# What a breakdown reports (``{name}_s``): the training loop without what interrupts it, and the start-up.
BREAKDOWN = ("startup", "load", "train_steps", "validation", "checkpoint", "test", "save")


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the wall time of the ``with`` body to phase ``name``."""
    if name not in PHASES:
        raise ValueError(f"phase={name!r} is not one of {', '.join(PHASES)}")
    start = time.perf_counter()
    try:
        yield
    finally:
        _totals[name] = _totals.get(name, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class Mark:
    """A point in this process: its age (seconds since it started) and the phase totals up to then."""

    age: float
    totals: dict[str, float]


def record_fork() -> None:
    """Say that this process was forked by the warm-start server (:mod:`propetl.warm_start` calls it in
    the child): its ``startup_s`` is then the fork's, and the breakdown says so."""
    global _forked
    _forked = True


def mark() -> Mark:
    return Mark(_process_age(), dict(_totals))


def _process_age() -> float:
    """Seconds since this process started, to the clock tick: both ends counted from boot (Linux),
    not psutil's start time, which adds the boot time rounded to a whole second."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except OSError:  # no /proc (macOS)
        return time.time() - psutil.Process().create_time()


def breakdown(since: Mark, *, startup: bool = False) -> dict[str, float | bool]:
    """Seconds per phase after ``since``, training steps apart from the validation and
    checkpoints they are interleaved with; when ``startup``, also ``startup_s`` (the process's
    age at ``since``: interpreter, imports, argument parsing) and ``warm_start`` (whether the
    process was forked by the warm-start server, which did the imports before)."""
    spent = {name: _totals.get(name, 0.0) - since.totals.get(name, 0.0) for name in PHASES}
    spent["train_steps"] = spent["train_loop"] - spent["validation"] - spent["checkpoint"]
    spent["startup"] = since.age
    seconds: dict[str, float | bool] = {f"{name}_s": spent[name] for name in BREAKDOWN if startup or name != "startup"}
    return seconds | {"warm_start": _forked} if startup else seconds
