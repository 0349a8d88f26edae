"""The benchmark's figures, rebuilt from a results root alone.

Figures are drawn on bare ``matplotlib.figure.Figure`` objects (Agg for PNG, the
PDF backend for PDF) rather than through pyplot, so importing this module never
changes the caller's backend (a notebook keeps its inline display) and no figure
lingers in pyplot's global registry.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib import ticker
from matplotlib.figure import Figure

from propetl.artifacts import load_masks, read_artifact_config, task_view
from propetl.atomic import atomic_write
from propetl.runs import RunFiles
from propetl.config import PROPETL_METHODS, dedicated_method, effective_defaults
from propetl.tables import (HEADLINE, budget_gaps, cell_summary, collect_runs, has_budget_ladder, has_groups, label_rank,
                            storage_by_tasks)

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
MEAN, STD, CI = f"{HEADLINE}_mean", f"{HEADLINE}_std", f"{HEADLINE}_ci95"
SCORE_LABEL = "test combined score (%)"


def _drop(stem: Path) -> None:
    """Remove a skipped figure's files from an earlier call, so none outlives the results it showed."""
    for path in (stem.with_suffix(".png"), stem.with_suffix(".pdf")):
        path.unlink(missing_ok=True)


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically.

    The PDF's creation date is dropped so that rebuilding from unchanged results
    gives byte-identical files.
    """
    return [
        atomic_write(stem.with_suffix(".png"), lambda tmp: fig.savefig(tmp, format="png", dpi=150)),
        atomic_write(
            stem.with_suffix(".pdf"), lambda tmp: fig.savefig(tmp, format="pdf", metadata={"CreationDate": None})
        ),
    ]


def pareto_front(points: Sequence[tuple[float, float]] | np.ndarray) -> np.ndarray:
    """Which (storage, score) points no other point beats: as little storage and as high a score, one strictly.

    Returns a boolean array aligned with ``points``; identical points are all kept.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    storage, score = pts[:, 0], pts[:, 1]
    no_worse = (storage[None, :] <= storage[:, None]) & (score[None, :] >= score[:, None])
    better = (storage[None, :] < storage[:, None]) | (score[None, :] > score[:, None])
    return ~(no_worse & better).any(axis=1)


def _labels(cells: pd.DataFrame) -> list[str]:
    return sorted(cells["label"].unique(), key=label_rank)


def _panels(n: int, ncols: int, size: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    nrows = -(-n // ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _figure_legend(fig: Figure, axes: Sequence) -> None:
    """One legend for all panels, each label once, even if panels show different subsets."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    ncols = max(1, min(len(entries), int(fig.get_figwidth() // 2.3)))
    fig.legend(entries.values(), entries.keys(), loc="outside lower center", ncols=ncols, fontsize="small")


def plot_score_vs_storage(cells: pd.DataFrame) -> Figure:
    """Per task: score against the minimum a task stores (log x; :data:`propetl.tables.MIN_COL`), mean ± 95% confidence
    interval over seeds, with the Pareto front."""
    tasks = sorted(cells["task"].unique())
    marker = {label: MARKERS[i % len(MARKERS)] for i, label in enumerate(_labels(cells))}
    fig, axes = _panels(len(tasks), ncols=min(len(tasks), 3), size=(4.5, 3.6))
    for ax, task in zip(axes, tasks):
        here = cells[(cells["task"] == task) & cells["storage_min_pct"].gt(0)]
        for label in _labels(here):
            cell = here[here["label"] == label].sort_values("sparsity")
            ax.errorbar(cell["storage_min_pct"], cell[MEAN], yerr=cell[CI].fillna(0.0), marker=marker[label],
                        linestyle="none", capsize=3, label=label)
            swept = cell.dropna(subset=["sparsity"])
            if not swept.empty:  # storage does not depend on sparsity: a sweep is one column of points, one label
                top = swept.loc[swept[MEAN].idxmax()]
                values = f"{swept['sparsity'].min():g}-{swept['sparsity'].max():g}" if len(swept) > 1 else f"{top['sparsity']:g}"
                ax.annotate(f"s={values}", (top["storage_min_pct"], top[MEAN]), textcoords="offset points",
                            xytext=(4, 4), fontsize="x-small")
        front = here[pareto_front(here[["storage_min_pct", MEAN]].to_numpy())].sort_values("storage_min_pct")
        ax.step(front["storage_min_pct"], front[MEAN], where="post", color="0.5", linestyle="--", zorder=0,
                label="Pareto front")
        ax.set(xscale="log", title=task, xlabel="minimum stored (% of backbone)", ylabel=SCORE_LABEL)
        # plain 0.05 / 0.1 / 0.2 / 0.5 ticks: storage spans a few decades at most
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes)
    return fig


def plot_score_vs_sparsity(cells: pd.DataFrame) -> Figure:
    """Per task and ProPETL method: score against sparsity (band = ± std), each label a line.

    The method's dedicated PETL baseline (propetl-adapter → adapter, ...) is the
    horizontal reference: the question the figure answers is at which sparsity
    ProPETL still matches the unshared, unmasked module.
    """
    tasks = sorted(cells["task"].unique())
    methods = [m for m in PROPETL_METHODS if (cells["method"] == m).any()]
    if not methods:
        raise ValueError("no ProPETL runs to plot against sparsity")
    fig, axes = _panels(len(tasks) * len(methods), ncols=len(methods), size=(4.5, 3.4))
    panels = iter(axes)
    for task in tasks:
        here = cells[cells["task"] == task]
        for method in methods:
            ax = next(panels)
            ours = here[here["method"] == method]
            for label in _labels(ours.dropna(subset=["sparsity"])):
                cell = ours[ours["label"] == label].sort_values("sparsity")
                std = cell[STD].fillna(0.0)
                # error bars show the spread of a lone sparsity, the band that of a sweep
                bars = ax.errorbar(cell["sparsity"], cell[MEAN], yerr=std, marker="o", capsize=3, label=label)
                ax.fill_between(cell["sparsity"], cell[MEAN] - std, cell[MEAN] + std, color=bars.lines[0].get_color(),
                                alpha=0.2)
            # references without a sparsity: the dedicated baseline, and the prototype without masks
            references = pd.concat([here[here["method"] == dedicated_method(method)], ours[ours["sparsity"].isna()]])
            for (_, ref), style in zip(references.iterrows(), itertools.cycle(["--", ":", "-."])):
                kind = "baseline" if ref["method"] == dedicated_method(method) else "no masks"
                line = ax.axhline(ref[MEAN], color="k", linestyle=style, linewidth=1, label=f"{ref['label']} ({kind})")
                if ref["n_seeds"] > 1:
                    ax.axhspan(ref[MEAN] - ref[STD], ref[MEAN] + ref[STD], color=line.get_color(), alpha=0.1)
            ax.set(title=f"{task} · {method}", xlabel="sparsity (fraction of mask entries zero)", ylabel=SCORE_LABEL)
            ax.grid(alpha=0.3)
    _figure_legend(fig, axes)
    return fig


def plot_budget_gap(gaps: pd.DataFrame) -> Figure:
    """Per task: ProPETL minus its dedicated module (test points) against the training budget.

    Error bars are the standard deviation of the per-seed differences (paired by
    seed); zero is the line where ProPETL has caught up.
    """
    tasks = sorted(gaps["task"].unique())
    fig, axes = _panels(len(tasks), ncols=min(len(tasks), 3), size=(4.5, 3.4))
    for ax, task in zip(axes, tasks):
        here = gaps[gaps["task"] == task]
        for i, (method, rows) in enumerate(here.groupby("method")):
            rows = rows.sort_values("max_steps")
            ax.errorbar(rows["max_steps"], rows["gap_mean"], yerr=rows["gap_std"].fillna(0.0), marker=MARKERS[i],
                        capsize=3, label=f"{method} − {rows['dedicated'].iloc[0]}")
        ax.axhline(0.0, color="0.5", linestyle="--", zorder=0)
        ax.set(xscale="log", title=task, xlabel="training budget (max_steps)", ylabel="score gap (test points)")
        ax.set_xticks(sorted(here["max_steps"].unique()))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%d"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes)
    return fig


def mask_overlap(masks: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Layer × layer Jaccard similarity of the kept sets, averaged over the masked tensors.

    Masks are keyed ``layer.{i}.{name}``; for each ``name`` every pair of layers
    is compared (|A ∩ B| / |A ∪ B|, 1.0 for two empty masks, which are identical),
    then each pair is averaged over the names both layers have. High overlap means
    layers reuse the same part of the prototype; near the random expectation means
    each layer picked its own sub-network.
    """
    by_name: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    for key, mask in masks.items():
        prefix, layer, name = key.split(".", 2)
        if prefix != "layer" or not layer.isdigit():
            raise ValueError(f"mask key {key!r} is not of the form 'layer.<i>.<name>'")
        by_name[name][int(layer)] = mask.detach().cpu().numpy().astype(bool).ravel()
    layers = sorted({layer for per_layer in by_name.values() for layer in per_layer})
    index = {layer: i for i, layer in enumerate(layers)}
    total = np.zeros((len(layers), len(layers)))
    count = np.zeros_like(total)
    for per_layer in by_name.values():
        ids = [index[layer] for layer in per_layer]
        kept = np.stack(list(per_layer.values())).astype(float)
        inter = kept @ kept.T
        sizes = kept.sum(axis=1)
        union = sizes[:, None] + sizes[None, :] - inter
        jaccard = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
        total[np.ix_(ids, ids)] += jaccard
        count[np.ix_(ids, ids)] += 1
    overlap = np.divide(total, count, out=np.full_like(total, np.nan), where=count > 0)
    return pd.DataFrame(overlap, index=pd.Index(layers, name="layer"), columns=pd.Index(layers, name="layer"))


def random_mask_jaccard(keep: float) -> float:
    """Expected Jaccard of two independent random masks keeping a fraction ``keep`` each.

    Per entry, P(both kept) = keep² and P(either kept) = 2·keep − keep², so the
    ratio is keep / (2 − keep): the level of overlap that carries no information.
    """
    return keep / (2.0 - keep)


def plot_mask_overlap(masks: Mapping[str, torch.Tensor], title: str) -> Figure:
    """Heatmap of :func:`mask_overlap`, titled with the random-mask expectation at the masks' keep fraction."""
    overlap = mask_overlap(masks)
    keep = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    fig = Figure(figsize=(5.5, 5.0), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(overlap.to_numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
    fig.colorbar(image, ax=ax, label="Jaccard of kept entries")
    ticks = range(len(overlap))
    ax.set_xticks(ticks, overlap.columns)
    ax.set_yticks(ticks, overlap.index)
    if len(overlap) <= 12:
        for (i, j), value in np.ndenumerate(overlap.to_numpy()):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                    color="w" if value < 0.6 else "k")
    ax.set(xlabel="layer", ylabel="layer")
    ax.set_title(f"{title}\nindependent random masks, keep {keep:.2f}: E[Jaccard] = {random_mask_jaccard(keep):.2f}",
                 fontsize="medium")
    return fig


def mask_run(runs: pd.DataFrame, results_root: Path) -> pd.Series | None:
    """The run whose masks the overlap figure shows, or None if no ProPETL run kept its artifact.

    Deterministic: the first ProPETL label in table order (propetl-adapter first),
    the sparsity closest to that method's paper default, then the first task and seed.
    """
    candidates = runs[runs["method"].isin(PROPETL_METHODS) & runs["sparsity"].notna()]  # mask_mode none: no masks
    if "group" in candidates:  # a multi-task run's masks are compared across tasks (task_mask_overlap)
        candidates = candidates[candidates["group"].isna()]
    candidates = candidates[[RunFiles(results_root / d).artifact.is_dir() for d in candidates["run_dir"]]]
    if candidates.empty:
        return None
    label = min(candidates["label"].unique(), key=label_rank)
    chosen = candidates[candidates["label"] == label]
    default = effective_defaults(chosen["method"].iloc[0]).sparsity
    chosen = chosen.assign(distance=(chosen["sparsity"] - default).abs())
    return chosen.sort_values(["distance", "sparsity", "task", "seed"]).iloc[0]


def plot_storage_by_tasks(storage: pd.DataFrame) -> Figure:
    """Total storage against the number of tasks, one line per entry, its mean score at the line's end:
    with the task heads (what a deployment stores) and without them (the paper's convention).

    Dedicated modules and full fine-tuning grow by a whole module (model) per task; a
    multi-task ProPETL group or a frozen prototype by masks and a head per task.
    """
    fig, axes = _panels(2, ncols=2, size=(5.2, 4.4))
    entries = sorted(storage.groupby(["label", "sparsity"], dropna=False), key=lambda item: label_rank(item[0][0]))
    every = max(storage["tasks"], key=lambda tasks: tasks.count("+"))
    for ax, column, title in zip(axes, ("total_mb", "total_mb_without_heads"), ("with the task heads", "without the heads (paper)")):
        for i, ((label, sparsity), rows) in enumerate(entries):
            rows = rows.sort_values("n_tasks")
            name = label if pd.isna(sparsity) else f"{label} (s={sparsity:g})"
            if rows["tasks"].iloc[0] != every:  # its score is over fewer tasks: say which
                name += f" [{rows['tasks'].iloc[0]}]"
            ax.plot(rows["n_tasks"], rows[column], marker=MARKERS[i % len(MARKERS)], label=f"{name}: {rows['mean_score'].iloc[0]:.1f}")
        ax.set(yscale="log", xlabel="number of tasks", ylabel="total storage (MB)", title=title)
        ax.set_xticks(sorted(storage["n_tasks"].unique()))
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("storage for N tasks: 32-bit floats, 1-bit masks (legend: mean test combined score %)", fontsize="medium")
    _figure_legend(fig, axes)
    return fig


def task_mask_overlap(masks: Mapping[str, torch.Tensor], tasks: Sequence[str], layout: str) -> pd.DataFrame:
    """Per layer and task pair: Jaccard of the two tasks' kept entries over all of the layer's masked tensors.

    The masks are the ones each task computes with (for the combined layouts, its task
    mask OR / AND the layer mask), read from a multi-task artifact.
    """
    views = {task: task_view(dict(masks), task, layout) for task in tasks}
    rows = []
    for a, b in itertools.combinations(tasks, 2):
        by_layer: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        for key in views[a]:
            by_layer[int(key.split(".")[1])].append((views[a][key].ravel(), views[b][key].ravel()))
        for layer, pairs in sorted(by_layer.items()):
            left, right = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
            union = int((left | right).sum())
            rows.append({"layer": layer, "task_a": a, "task_b": b,
                         "jaccard": int((left & right).sum()) / union if union else 1.0,
                         "keep": float(torch.cat([left, right]).float().mean())})
    return pd.DataFrame(rows)


def plot_task_mask_overlap(overlaps: Mapping[str, pd.DataFrame]) -> Figure:
    """One panel per multi-task entry: Jaccard between tasks' masks per layer, against the random-mask level."""
    fig, axes = _panels(len(overlaps), ncols=min(len(overlaps), 3), size=(4.5, 3.4))
    pairs = sorted({pair for frame in overlaps.values() for pair in zip(frame["task_a"], frame["task_b"])})
    for ax, (title, frame) in zip(axes, overlaps.items()):
        for (a, b), rows in frame.groupby(["task_a", "task_b"]):
            i = pairs.index((a, b))  # a pair of tasks looks the same in every panel
            ax.plot(rows["layer"], rows["jaccard"], marker=MARKERS[i % len(MARKERS)], color=f"C{i}", label=f"{a} · {b}")
        ax.axhline(random_mask_jaccard(frame["keep"].mean()), color="0.5", linestyle="--", zorder=0,
                   label="independent random masks")
        ax.set(ylim=(0, 1), title=title, xlabel="layer", ylabel="Jaccard of kept entries")
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes)
    return fig


def _group_overlaps(runs: pd.DataFrame, root: Path) -> dict[str, pd.DataFrame]:
    """Task mask overlap of each multi-task entry's first seed that kept its artifact."""
    overlaps = {}
    groups = runs[runs["group"].notna()] if "group" in runs else runs.iloc[:0]
    for label, rows in sorted(groups.groupby("label"), key=lambda item: label_rank(item[0])):
        run = rows.sort_values("seed").iloc[0]
        artifact = RunFiles(root / run["run_dir"]).artifact
        if artifact.is_dir():
            described = read_artifact_config(artifact)
            layout = described["petl_config"]["task_masks"]
            overlaps[f"{label} ({layout}) · seed {run['seed']}"] = task_mask_overlap(load_masks(artifact), list(described["tasks"]), layout)
    return overlaps


def write_figures(
    results_root: str | Path, out_dir: str | Path, run_dirs: Sequence[str | Path] | None = None
) -> list[Path]:
    """Write score_vs_storage, score_vs_sparsity, mask_overlap, budget_gap, and with multi-task groups
    storage_by_tasks and task_mask_overlap, as PNG + PDF; returns the paths written.

    score_vs_sparsity needs a ProPETL run, mask_overlap a ProPETL run that kept its
    ``artifact/`` (read with ``propetl.artifacts.load_masks``); a figure without its
    input is skipped rather than drawn empty, and its files from an earlier call removed;
    budget_gap needs a budget ladder (:func:`propetl.tables.has_budget_ladder`).
    ``run_dirs``: see :func:`propetl.tables.collect_runs`.
    """
    root, out = Path(results_root), Path(out_dir)
    runs = collect_runs(root, run_dirs)
    cells = cell_summary(runs)
    written = save_figure(plot_score_vs_storage(cells), out / "score_vs_storage")
    if cells["method"].isin(PROPETL_METHODS).any():
        written += save_figure(plot_score_vs_sparsity(cells), out / "score_vs_sparsity")
    else:
        _drop(out / "score_vs_sparsity")
    run = mask_run(runs, root)
    if run is not None:
        title = f"{run['label']} · {run['task']} · s={run['sparsity']:g} · seed {run['seed']}"
        masks = load_masks(RunFiles(root / run["run_dir"]).artifact)
        written += save_figure(plot_mask_overlap(masks, title), out / "mask_overlap")
    else:
        _drop(out / "mask_overlap")
    gaps = budget_gaps(runs) if has_budget_ladder(runs) else pd.DataFrame()
    if gaps.empty:
        _drop(out / "budget_gap")
    else:
        written += save_figure(plot_budget_gap(gaps), out / "budget_gap")
    overlaps = _group_overlaps(runs, root) if has_groups(runs) else {}
    if has_groups(runs):
        written += save_figure(plot_storage_by_tasks(storage_by_tasks(runs)), out / "storage_by_tasks")
    else:
        _drop(out / "storage_by_tasks")
    if overlaps:
        written += save_figure(plot_task_mask_overlap(overlaps), out / "task_mask_overlap")
    else:
        _drop(out / "task_mask_overlap")
    return written
