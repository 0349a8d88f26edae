"""Turn a results root into the benchmark's tables.

A results root holds ``runs/{task}/{label}/s{sparsity}/seed{seed}/metrics.json``
(``s-`` for methods without a sparsity). Everything here is derived from those
files alone, so the tables can be rebuilt anywhere the results were copied to.

A multi-task run (``runs/<task1>+<task2>.../``) enters as one row per task, with its
``group`` and the whole group's storage; :func:`storage_by_tasks` then puts every method
on one axis: the storage of N tasks, ``shared_bits + N * task_bits``.

Units: ``collect_runs`` keeps the raw values of metrics.json (scores in [0, 1]);
every summary after it reports scores in percent, the GLUE convention the paper
uses. ``storage_pct`` is already a percentage of the backbone's parameters.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from propetl import runs as layout
from propetl.atomic import write_text
from propetl.comparison import comparison_table, render_comparison
from propetl.config import METHODS, PAPER_DEFAULTS, PROPETL_METHODS, dedicated_method

CELL_KEYS = ["task", "label", "method", "sparsity"]
HEADLINE = "test_combined_score"
STORED_COL = "stored params (%)"  # the paper's count: every stored float at 32 bits, 1 bit per mask entry
# the least a task needs (propetl.storage: storage_min_pct): masks as the artifact codes them, below 1 bit where it
# can; PEFT's methods without what regenerates from a seed. What figures plot and comparisons size methods by.
MIN_COL = "minimum stored (%)"
BYTES_COL = "bytes on disk"
STORAGE = ["storage_min_pct", "storage_pct", "artifact_bytes"]


def _flatten(record: dict) -> dict:
    """One metrics.json as a flat row: ``val_*``/``test_*`` scores, storage fields unprefixed.

    Storage keys are self-describing (``storage_pct``, ``mask_entries``); only a key that
    collides with a top-level one (``trainable_params``) is prefixed ``storage_``.
    """
    row = {k: v for k, v in record.items() if not isinstance(v, (dict, list))}
    for split in ("val", "test"):
        row.update({f"{split}_{k}": v for k, v in record.get(split, {}).items()})
    for key, value in record.get("storage", {}).items():
        if not isinstance(value, dict):
            row[f"storage_{key}" if key in record else key] = value
    return row


def _rows(record: dict) -> list[dict]:
    """A single-task run as one row; a multi-task run as one row per task, named by its ``group``.

    A task is named as its run folder names it: a task file by its stem (its metrics.json
    records the path it was given)."""
    if "tasks" not in record:
        return [_flatten({**record, "task": layout.task_slug(record["task"])})]
    return [_flatten({**record, "task": task, "group": record["task"], "n_tasks": len(record["tasks"]),
                      "val": scores["val"], "test": scores["test"]})
            for task, scores in record["tasks"].items()]


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(path))


def collect_runs(results_root: str | Path, run_dirs: Sequence[str | Path] | None = None) -> pd.DataFrame:
    """Every run under ``results_root/runs`` (or exactly ``run_dirs``) as one row, in a stable order.

    ``run_dirs`` lists run directories or their ``metrics.json`` below ``results_root``:
    the pipeline passes its own grid so that runs of an earlier grid left in the same
    root never enter the means. ``run_dir`` is kept relative to ``results_root`` so
    that runs.csv is identical wherever the results live, and figures can still find
    each run's ``artifact/``.
    """
    root = _absolute(results_root)  # not resolve(): runs/ may be a symlink to scratch space
    if run_dirs is None:
        paths = sorted(root.glob(layout.RUN_METRICS_GLOB))
    else:
        paths = sorted({_absolute(run if Path(run).name == layout.METRICS else Path(run) / layout.METRICS) for run in run_dirs})
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"run {path.parent} has no metrics.json (unfinished or not a run directory)")
            if not path.is_relative_to(root):
                raise ValueError(f"run {path.parent} is not below the results root {root}")
    if not paths:
        raise FileNotFoundError(
            f"no runs found under {root.resolve()}: expected runs/<task>/<label>/s<sparsity>/seed<seed>/metrics.json"
        )
    rows = []
    for path in paths:
        for row in _rows(json.loads(path.read_text())):
            row["run_dir"] = path.parent.relative_to(root).as_posix()
            rows.append(row)
    runs = pd.DataFrame(rows)
    runs["sparsity"] = runs["sparsity"].astype(float)
    # runs recorded before metrics.json had a status finished normally
    runs["status"] = runs["status"].fillna("ok") if "status" in runs else "ok"
    for column in ("storage_pct", "storage_pct_coded", "storage_min_pct", "artifact_bytes", HEADLINE):  # absent when every run
        if column not in runs:                                                                       # diverged, or older
            runs[column] = float("nan")
    # runs from before the minimum was recorded: their masks coded, or (older still) the paper's count
    runs["storage_min_pct"] = runs["storage_min_pct"].fillna(runs["storage_pct_coded"]).fillna(runs["storage_pct"])
    return runs.sort_values(["task", "label", "sparsity", "seed"], na_position="first", ignore_index=True)


def cell_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1, NaN for one seed), the 95% confidence interval's half-width over seeds (Student's t, NaN for
    one seed) and n_seeds per (task, label, sparsity), over finished runs.

    Scores come out in percent as ``test_<metric>_mean`` / ``_std`` / ``_ci95``;
    storage columns are averaged, being identical across seeds of one cell.
    ``n_diverged`` counts the cell's runs that diverged: they have no score, so they
    are left out of the means and shown beside them instead.
    """
    tests = [c for c in runs.columns if c.startswith("test_")]
    ok = runs[runs["status"] == "ok"]
    frame = ok[CELL_KEYS + STORAGE].join(ok[tests] * 100.0)
    grouped = frame.groupby(CELL_KEYS, dropna=False, sort=False)
    stats = grouped[tests].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    stats["n_seeds"] = grouped.size()
    for metric in tests:
        stats[f"{metric}_ci95"] = ci95_half_width(stats[f"{metric}_std"], stats["n_seeds"])
    stats[STORAGE] = grouped[STORAGE].mean()
    diverged = runs[runs["status"] != "ok"].groupby(CELL_KEYS, dropna=False, sort=False).size().rename("n_diverged")
    cells = stats.join(diverged, how="outer").reset_index()
    cells["n_seeds"] = cells["n_seeds"].fillna(0).astype(int)
    cells["n_diverged"] = cells["n_diverged"].fillna(0).astype(int)
    return cells


def ci95_half_width(std: pd.Series, n: pd.Series) -> pd.Series:
    """Half-width of the 95% confidence interval of a mean over n seeds: t(0.975, n - 1) * std / sqrt(n)."""
    from scipy.stats import t

    n = n.astype(float)
    return pd.Series(t.ppf(0.975, n - 1) * std / n ** 0.5, index=std.index).where(n > 1)


def row_name(label: str, sparsity: float | None) -> str:
    """How a grid entry is named in the paper table, e.g. ``propetl-adapter (s=0.5)``."""
    return label if pd.isna(sparsity) else f"{label} (s={sparsity:g})"


def label_rank(label: str) -> tuple[int, str]:
    """Sort key putting method labels in registry order (each baseline above its ProPETL variant),
    every other label (ablations) after, alphabetically."""
    return (METHODS.index(label) if label in METHODS else len(METHODS), label)


def _ordered_cells(runs: pd.DataFrame) -> pd.DataFrame:
    cells = cell_summary(runs)
    cells["row"] = [row_name(lab, s) for lab, s in zip(cells["label"], cells["sparsity"])]
    order = cells.assign(rank=cells["label"].map(label_rank)).sort_values(["rank", "sparsity"])["row"]
    cells["row"] = pd.Categorical(cells["row"], categories=order.unique(), ordered=True)
    return cells


def _pivot(cells: pd.DataFrame, value: str) -> pd.DataFrame:
    table = cells.pivot(index="row", columns="task", values=value)
    table.index = table.index.astype(str)
    table.index.name = "method"
    table.columns.name = None
    return table


def paper_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean test combined score (%) per row and task, the Avg over tasks, and storage.

    Avg is NaN when a row misses a task: averaging fewer tasks would not be
    comparable with the other rows.
    """
    cells = _ordered_cells(runs)
    table = _pivot(cells, f"{HEADLINE}_mean")
    table["Avg"] = table.mean(axis=1, skipna=False)
    storage = cells.groupby("row", observed=True)[STORAGE].mean()
    storage.index = storage.index.astype(str)
    table[MIN_COL] = storage["storage_min_pct"]
    table[STORED_COL] = storage["storage_pct"]
    table[BYTES_COL] = storage["artifact_bytes"]
    return table


def _mean_pm(mean: float, spread: float, pm: str) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.2f}" if pd.isna(spread) else f"{mean:.2f}{pm}{spread:.2f}"


def render_paper_table(runs: pd.DataFrame, pm: str = " ± ") -> pd.DataFrame:
    """paper_table as display strings: ``mean ± half-width of the 95% confidence interval`` over seeds per task
    (Student's t; the mean alone for one seed), and how many runs diverged.

    Avg shows the mean only: an interval of an average over different tasks is not a
    quantity the seeds measure.
    """
    table = paper_table(runs)
    cells = _ordered_cells(runs)
    stds, diverged = _pivot(cells, f"{HEADLINE}_ci95"), _pivot(cells, "n_diverged")
    shown = pd.DataFrame(index=table.index)
    for task in stds.columns:
        shown[task] = [_mean_pm(m, s, pm) + (f" ({d:.0f} diverged)" if d > 0 else "")
                       for m, s, d in zip(table[task], stds[task], diverged[task].fillna(0))]
    shown["Avg"] = [_mean_pm(m, float("nan"), pm) for m in table["Avg"]]
    shown[MIN_COL] = [f"{v:.3g}" for v in table[MIN_COL]]
    shown[STORED_COL] = [f"{v:.3g}" for v in table[STORED_COL]]
    shown[BYTES_COL] = [f"{v:,.0f}" for v in table[BYTES_COL]]
    return shown


def published_comparison(runs: pd.DataFrame, published_csvs: Sequence[str | Path]) -> pd.DataFrame:
    """Published vs our test combined score (%), per method, task and our sparsity, from every published
    table given (the ProPETL paper's, the competitors' papers': columns method, task, metric, value).

    Only our main grid entries (label == method) are compared; ablations have no
    published counterpart. The published combined score is the mean of the metrics
    the source reports for a task (e.g. accuracy and F1 for MRPC), which is how our
    ``combined_score`` is defined. The published ``avg`` row is not compared: it
    averages a different set of numbers (see results/published/README.md).
    """
    published = pd.concat([pd.read_csv(path)[["method", "task", "metric", "value"]] for path in published_csvs])
    published = published[published["task"] != "avg"]
    reference = (
        published.groupby(["method", "task"])
        .agg(published=("value", "mean"), published_metrics=("metric", "+".join))
        .reset_index()
    )
    cells = cell_summary(runs)
    ours = cells[cells["label"] == cells["method"]].rename(
        columns={f"{HEADLINE}_mean": "ours", f"{HEADLINE}_std": "ours_std"}
    )
    ours = ours[["method", "task", "sparsity", "n_seeds", "ours", "ours_std"]]
    merged = reference.merge(ours, on=["method", "task"])
    merged["published_sparsity"] = [PAPER_DEFAULTS[m].get("sparsity") for m in merged["method"]]
    merged["ours_minus_published"] = merged["ours"] - merged["published"]
    columns = ["method", "task", "published_metrics", "published_sparsity", "published", "sparsity", "n_seeds",
               "ours", "ours_std", "ours_minus_published"]
    return merged[columns].sort_values(["method", "task", "sparsity"], ignore_index=True)


BUDGET_KEYS = ["task", "method", "sparsity", "max_steps"]


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    """``runs[name]``, or all missing where no run has the key (runs written before it existed)."""
    return runs[name] if name in runs else pd.Series(None, index=runs.index, dtype=object)


def _as_the_paper_defines(runs: pd.DataFrame) -> pd.Series:
    """Learned masks on a shared prototype (or no masks at all: a baseline); a run without the key is the default."""
    mask_mode, share = _column(runs, "mask_mode"), _column(runs, "share")
    return (mask_mode.isna() | (mask_mode == "learned")) & (share.isna() | (share == "layers"))


def _single_task_and_done(runs: pd.DataFrame) -> pd.Series:
    """Not one model for several tasks, nor a task on another run's frozen prototype; finished."""
    return _column(runs, "group").isna() & _column(runs, "prototype").isna() & (runs["status"] == "ok")


def main_method_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Single-task runs of the methods as the paper defines them: learned masks on a shared prototype, or a baseline.

    Ablation entries (random or no masks, no sharing) share a ``method`` name with the
    real thing, so they are left out wherever runs are grouped by method instead of label.
    """
    return runs[_as_the_paper_defines(runs) & _single_task_and_done(runs)]


def ablation_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Single-task runs of a ProPETL method with random or no masks or a prototype per layer: the paper's ablations."""
    return runs[~_as_the_paper_defines(runs) & _single_task_and_done(runs) & runs["method"].isin(PROPETL_METHODS)]


def has_budget_ladder(runs: pd.DataFrame) -> bool:
    """Whether some task and method ran at more than one max_steps (a budget study)."""
    if "max_steps" not in runs or runs["max_steps"].isna().all():
        return False
    return bool((main_method_runs(runs).groupby(["task", "method"])["max_steps"].nunique() > 1).any())


def budget_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Test combined score (%) per task, method, sparsity and training budget (max_steps): mean, std, n_seeds."""
    frame = main_method_runs(runs).assign(score=lambda r: r[HEADLINE] * 100.0)
    grouped = frame.groupby(BUDGET_KEYS, dropna=False)["score"]
    cells = grouped.agg(["mean", "std", "count"]).reset_index()
    return cells.rename(columns={"mean": f"{HEADLINE}_mean", "std": f"{HEADLINE}_std", "count": "n_seeds"})


def budget_gaps(runs: pd.DataFrame) -> pd.DataFrame:
    """ProPETL minus its dedicated module, per task and max_steps, paired by seed (points, test %).

    ``gap_std`` is the spread of the per-seed differences and ``gap_se`` its standard
    error; only seeds both methods ran at that budget enter.
    """
    frame = main_method_runs(runs).assign(score=lambda r: r[HEADLINE] * 100.0)
    rows = []
    for method in sorted(frame["method"].unique()):
        dedicated = dedicated_method(method)
        if dedicated is None or not (frame["method"] == dedicated).any():
            continue
        pair = frame[frame["method"].isin([method, dedicated])]
        wide = pair.pivot_table(index=["task", "max_steps", "seed"], columns="method", values="score").dropna()
        diff = (wide[method] - wide[dedicated]).groupby(level=["task", "max_steps"])
        for (task, max_steps), gaps in diff:
            rows.append({
                "task": task, "max_steps": int(max_steps), "method": method, "dedicated": dedicated,
                "n_seeds": len(gaps), "propetl_mean": wide.loc[(task, max_steps), method].mean(),
                "dedicated_mean": wide.loc[(task, max_steps), dedicated].mean(), "gap_mean": gaps.mean(),
                "gap_std": gaps.std(), "gap_se": gaps.std() / len(gaps) ** 0.5,
            })
    return pd.DataFrame(rows)


def has_groups(runs: pd.DataFrame) -> bool:
    """Whether some run trained one model on several tasks."""
    return "group" in runs and bool(runs["group"].notna().any())


def storage_by_tasks(runs: pd.DataFrame) -> pd.DataFrame:
    """Total storage of N = 1..K tasks per grid entry (K: the tasks in the runs), with the entry's mean score.

    ``shared_bits + N * task_bits`` (:mod:`propetl.storage`), heads included (``total_mb``) and
    without them, as the paper counts (``total_mb_without_heads``): a dedicated module or a
    single-task ProPETL run stores everything once per task, a multi-task group its
    prototype once and masks and a head per task, a frozen-prototype entry only masks and
    a head per task. ``mean_score`` is the entry's test combined score (%) averaged over
    its tasks and seeds, ``tasks`` the tasks it ran on.
    """
    ok = runs[runs["status"] == "ok"]
    every = sorted(ok["task"].unique())
    rows = []
    for (label, sparsity), frame in ok.groupby(["label", "sparsity"], dropna=False, sort=False):
        shared, task = frame["shared_bits"].mean(), frame["task_bits"].mean()
        # a multi-task run's head_params are all its tasks' heads: one task's is their mean
        head = (32 * frame["head_params"] / frame.get("n_tasks", pd.Series(1, index=frame.index)).fillna(1)).mean()
        score = frame.groupby("task")[HEADLINE].mean().mean() * 100.0
        for n in range(1, len(every) + 1):
            rows.append({"label": label, "method": frame["method"].iloc[0], "sparsity": sparsity,
                         "group": frame["group"].iloc[0] if "group" in frame else None,
                         "tasks": "+".join(sorted(frame["task"].unique())), "n_tasks": n,
                         "total_bits": shared + n * task, "total_mb": (shared + n * task) / 8 / 1e6,
                         "total_mb_without_heads": (shared + n * (task - head)) / 8 / 1e6,
                         "shared_bits": shared, "task_bits": task, "head_bits": head, "mean_score": score})
    return pd.DataFrame(rows).sort_values(["n_tasks", "total_bits"], ignore_index=True)


def multitask_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per entry: test combined score (%) per task and their mean, and what the entry stores for
    all K tasks, what it shares and what one more task adds (KB: 1,000 bytes, at 32 bits per float
    and 1 bit per mask entry)."""
    table = paper_table(runs).drop(columns=[MIN_COL, STORED_COL, BYTES_COL], errors="ignore").rename(columns={"Avg": "mean"})
    storage = storage_by_tasks(runs)
    last = storage[storage["n_tasks"] == storage["n_tasks"].max()].assign(row=lambda f: [row_name(lab, s) for lab, s in zip(f["label"], f["sparsity"])])
    last = last.set_index("row")
    table["total KB (all tasks)"] = last["total_bits"] / 8 / 1e3
    table["shared KB"] = last["shared_bits"] / 8 / 1e3
    table["KB per added task"] = last["task_bits"] / 8 / 1e3
    return table


def _markdown(shown: pd.DataFrame) -> str:
    """Markdown via tabulate, keeping the cell strings exactly as rendered."""
    align = ["left"] + ["right"] * shown.shape[1]
    return shown.to_markdown(disable_numparse=True, colalign=align) + "\n"


def _latex(shown: pd.DataFrame) -> str:
    """LaTeX tabular with one header row; names are escaped, the ``$\\pm$`` cells are not."""
    flat = shown.reset_index()
    styler = flat.style.hide(axis="index").format(escape="latex", subset=[flat.columns[0]])
    styler = styler.format_index(escape="latex", axis=1)
    return styler.to_latex(hrules=True, column_format="l" + "r" * shown.shape[1])


def write_tables(
    results_root: str | Path,
    out_dir: str | Path,
    published_csvs: Sequence[str | Path] | None = None,
    run_dirs: Sequence[str | Path] | None = None,
) -> list[Path]:
    """Write runs.csv, cells.csv, paper_table.{csv,md,tex}, comparison.{csv,md} (:mod:`propetl.comparison`: each
    ProPETL cell against its baseline and every cell at most as large, paired bootstrap), published_vs_ours.csv, for a budget
    ladder (:func:`has_budget_ladder`) budget.csv and budget_gap.{csv,md}, and for multi-task
    groups (:func:`has_groups`) multitask.{csv,md} and storage_by_tasks.csv.

    ``published_csvs`` defaults to every ``<results_root>/published/*.csv`` (the paper's and the competitors' rows).
    published_vs_ours.csv is written whenever there is one (only a header when no
    run matches a published cell, so the pipeline can declare it as an output) and a
    stale one removed when there is none. ``run_dirs``: see :func:`collect_runs`.
    """
    root, out = Path(results_root), Path(out_dir)
    runs = collect_runs(root, run_dirs)
    rendered = render_paper_table(runs)
    written = [
        write_text(out / "runs.csv", runs.to_csv(index=False)),
        write_text(out / "cells.csv", cell_summary(runs).to_csv(index=False)),
        write_text(out / "paper_table.csv", rendered.to_csv()),
        write_text(out / "paper_table.md", _markdown(rendered)),
        write_text(out / "paper_table.tex", _latex(render_paper_table(runs, pm=r" $\pm$ "))),
    ]
    compared = comparison_table(runs, root)
    written += [write_text(out / "comparison.csv", compared.to_csv(index=False)),
                write_text(out / "comparison.md", _markdown(render_comparison(compared).set_index("task")))]
    published_csvs = sorted((root / "published").glob("*.csv")) if published_csvs is None else published_csvs
    comparison_path = out / "published_vs_ours.csv"
    if published_csvs:
        written.append(write_text(comparison_path, published_comparison(runs, published_csvs).to_csv(index=False)))
    else:  # never leave a comparison with numbers the results root no longer has
        comparison_path.unlink(missing_ok=True)
    budget_files = [out / "budget.csv", out / "budget_gap.csv", out / "budget_gap.md"]
    if has_budget_ladder(runs):
        gaps = budget_gaps(runs)
        written += [
            write_text(budget_files[0], budget_cells(runs).to_csv(index=False)),
            write_text(budget_files[1], gaps.to_csv(index=False)),
            write_text(budget_files[2], gaps.to_markdown(index=False, floatfmt=".2f") + "\n"),
        ]
    else:  # never leave a budget table the current runs do not support
        for path in budget_files:
            path.unlink(missing_ok=True)
    multitask_files = [out / "multitask.csv", out / "multitask.md", out / "storage_by_tasks.csv"]
    if has_groups(runs):
        table = multitask_table(runs)
        written += [
            write_text(multitask_files[0], table.to_csv()),
            write_text(multitask_files[1], table.to_markdown(floatfmt=".2f") + "\n"),
            write_text(multitask_files[2], storage_by_tasks(runs).to_csv(index=False)),
        ]
    else:
        for path in multitask_files:
            path.unlink(missing_ok=True)
    return written
