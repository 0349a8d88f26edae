"""Is a difference between two methods real? A paired bootstrap over test examples and seeds, and the comparison table.

Two grid entries of one task are paired when they ran with the same seeds on the same test examples (same task,
split seed and backbone: their kept references are checked to be identical). One bootstrap draw resamples the
seeds with replacement and, independently, the test examples with replacement (the same examples for both
entries and every drawn seed), and takes the mean over the drawn seeds of

    combined_score(A_seed on the examples) - combined_score(B_seed on the examples)

in points (scores in %). So both sources of doubt enter: which test examples we happened to draw, and which
training seeds. ``scipy.stats.bootstrap`` resamples one level of paired observations only, so the two levels are
drawn here with numpy's generator; the interval is the percentile interval (2.5th and 97.5th percentiles of the
draws) and the p-value two-sided, of the draws shifted to the null hypothesis (how often a draw lies at least as
far from the observed difference as the observed difference from 0: ``(1 + count) / (1 + draws)``). Identical
predictions give the interval [0, 0] and p = 1.

The metrics are the task's own (the run's ``test`` keys): accuracy, F1, correlations or ROUGE / BLEU are recomputed
on every draw, never averaged per example where they are not averages (BLEU and chrF sum their sentence statistics
over the draw, as sacrebleu's own paired bootstrap does: :func:`propetl.metrics.resampled_score`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import runs as layout
from .config import PROPETL_METHODS, dedicated_method
from .metrics import resampled_score
from .predictions import read_predictions

N_DRAWS = 1000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Difference:
    """A minus B in points (scores in %), with its bootstrap interval and p-value."""

    mean: float
    low: float
    high: float
    p_value: float
    n_seeds: int
    n_examples: int


Runs = Mapping[int, tuple[np.ndarray, np.ndarray]]
"""seed -> (predictions, references) of one entry on one task."""


def _paired(a: Runs, b: Runs) -> tuple[list[int], np.ndarray]:
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed in common: {sorted(a)} vs {sorted(b)}")
    references = np.asarray(a[seeds[0]][1])
    for runs in (a, b):
        for seed in seeds:
            if len(runs[seed][1]) != len(references) or not np.array_equal(np.asarray(runs[seed][1]), references):
                raise ValueError(f"seed {seed}: the runs scored other test examples (references differ); "
                                 "only runs on the same test split (task, data_seed, backbone) pair")
    return seeds, references


def paired_bootstrap(a: Runs, b: Runs, metric_names: Sequence[str], draws: int = N_DRAWS, seed: int = SEED) -> Difference:
    """A minus B (see the module docstring), over the seeds both ran."""
    seeds, references = _paired(a, b)
    n = len(references)
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, len(seeds), size=(draws, len(seeds)))
    example_draws = rng.integers(0, n, size=(draws, n))
    if list(metric_names) == ["accuracy"]:  # an average per example: vectorised over the draws
        hits = lambda runs, s: (np.asarray(runs[s][0]) == references).astype(float)  # noqa: E731
        delta = np.stack([hits(a, s) - hits(b, s) for s in seeds]) * 100.0  # seeds x examples
        observed = float(delta.mean())
        per_seed = delta[:, example_draws].mean(axis=2)  # seeds x draws: each seed on each draw's examples
        values = per_seed[seed_draws, np.arange(draws)[:, None]].mean(axis=1)
    else:  # each run's metrics rescored on every draw (per-example statistics computed once: metrics.resampled_score)
        scored = {(side, s): resampled_score(metric_names, runs[s][0], references) for side, runs in (("a", a), ("b", b)) for s in seeds}
        whole = np.arange(n)
        observed = float(np.mean([scored["a", s](whole) - scored["b", s](whole) for s in seeds]) * 100.0)
        values = np.empty(draws)
        for d in range(draws):
            idx = example_draws[d]
            per_seed = {s: scored["a", s](idx) - scored["b", s](idx) for s in {seeds[i] for i in seed_draws[d]}}
            values[d] = np.mean([per_seed[seeds[i]] for i in seed_draws[d]]) * 100.0
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    far = int(np.sum(np.abs(values - observed) >= abs(observed))) if observed != 0 else draws
    return Difference(mean=observed, low=float(low), high=float(high), p_value=(1 + far) / (1 + draws),
                      n_seeds=len(seeds), n_examples=n)


def one_answer_seeds(runs: Runs) -> list[int]:
    """The seeds whose run gave one answer for every test example (a classifier that never left one class).

    Such a run decides a comparison on its own: with three seeds, the percentile interval can exclude 0 while the
    p-value says the seeds disagree. The table names them so that a reader sees which cells it is.
    """
    return sorted(seed for seed, (predictions, _) in runs.items() if len(pd.unique(np.asarray(predictions))) == 1)


def _entry_runs(results_root: Path, frame: pd.DataFrame, task: str) -> Runs | None:
    """seed -> (predictions, references) of one cell's finished runs; None where a run kept no predictions."""
    out = {}
    for _, run in frame.iterrows():
        path = results_root / run["run_dir"] / layout.PREDICTIONS
        if not path.is_file():
            return None
        kept = read_predictions(path)
        kept = kept[kept["task"] == task].sort_values("example")
        out[int(run["seed"])] = (kept["prediction"].to_numpy(), kept["reference"].to_numpy())
    return out


COMPARISON_COLUMNS = ["task", "propetl", "other", "relation", "n_seeds", "n_examples", "propetl_mean", "other_mean",
                      "difference", "ci_low", "ci_high", "p_value", "propetl_storage_pct", "other_storage_pct",
                      "propetl_one_answer_seeds", "other_one_answer_seeds"]


ABLATION_WORDS = {("mask_mode", "random"): "fixed random masks", ("mask_mode", "none"): "no masks",
                  ("share", "none"): "a prototype per layer"}


def _ablation(cell: pd.DataFrame) -> str:
    """The relation of a learned cell to an ablation of it, e.g. ``ablation: fixed random masks``."""
    changes = [words for (key, value), words in ABLATION_WORDS.items() if key in cell and cell[key].iloc[0] == value]
    return "ablation: " + " and ".join(changes)


def _budget(cell: pd.DataFrame) -> int | None:
    """A cell's training steps: cells are compared at equal budgets only (a budget study's ladder holds a method at
    several, and what more steps buy is ``budget_gap``'s question, not a comparison of methods)."""
    steps = cell["max_steps"].iloc[0] if "max_steps" in cell else None
    return None if steps is None or pd.isna(steps) else int(steps)


def _is_dedicated(label: str, method: str, other_label: str, other_method: str) -> bool:
    """The other cell is ProPETL's dedicated module: the plain entry of that method (``adapter``), or the entry named
    as ProPETL's with the method swapped (``propetl-adapter-x2`` -> ``adapter-x2``, a budget study's rung)."""
    dedicated = dedicated_method(method)
    return other_method == dedicated and other_label in (other_method, label.replace(method, dedicated, 1))


def comparison_table(runs: pd.DataFrame, results_root: str | Path, draws: int = N_DRAWS) -> pd.DataFrame:
    """Each ProPETL cell against its dedicated baseline, against every cell that stores at most as much (minimum
    storage, :mod:`propetl.storage`) and against its ablations, per task and at equal training steps: the
    difference in points with its interval and p-value.

    ``runs`` are :func:`propetl.tables.collect_runs` rows; only single-task runs enter (multi-task groups are not
    the method), and only pairs whose runs all kept their test predictions. An ablation (random or no masks, a
    prototype per layer) is no method of its own: it is compared only with the learned, shared cells of its
    method, at its sparsity (without masks, at every sparsity), so that the ablation's question gets an interval.
    """
    from .tables import ablation_runs, main_method_runs, row_name

    root = Path(results_root)
    main, ablations = main_method_runs(runs), ablation_runs(runs)
    rows = []
    for task, frame in pd.concat([main, ablations]).groupby("task", sort=True):
        cells = {(label, sparsity): cell for (label, sparsity), cell in frame.groupby(["label", "sparsity"], dropna=False, sort=False)}
        ablated = [key for key, cell in cells.items() if cell.index.isin(ablations.index).all()]  # in the cells' order
        metric_names = [c.removeprefix("test_") for c in frame.columns
                        if c.startswith("test_") and c != "test_combined_score" and frame[c].notna().all()]
        kept = {key: _entry_runs(root, cell, task) for key, cell in cells.items()}  # each cell's predictions, read once
        size = {key: cell["storage_min_pct"].mean() for key, cell in cells.items()}
        budget = {key: _budget(cell) for key, cell in cells.items()}
        stuck = {key: one_answer_seeds(runs) for key, runs in kept.items() if runs is not None}  # once per cell
        pairs = []  # (ProPETL cell, the other cell, relation)
        for key, cell in cells.items():
            method = cell["method"].iloc[0]
            if method not in PROPETL_METHODS or key in ablated:
                continue
            for other_key, other in cells.items():
                if other_key == key or other_key in ablated or budget[other_key] != budget[key]:
                    continue
                dedicated = _is_dedicated(key[0], method, other_key[0], other["method"].iloc[0])
                if dedicated or size[other_key] <= size[key]:
                    pairs.append((key, other_key, "dedicated baseline" if dedicated else "stores at most as much"))
            pairs += [(key, ablation, _ablation(cells[ablation])) for ablation in ablated
                      if cells[ablation]["method"].iloc[0] == method and (pd.isna(ablation[1]) or ablation[1] == key[1])
                      and budget[ablation] == budget[key]]
        for (label, sparsity), (other_label, other_sparsity), relation in pairs:
            mine, theirs = kept[label, sparsity], kept[other_label, other_sparsity]
            if mine is None or theirs is None:
                continue
            cell, other = cells[label, sparsity], cells[other_label, other_sparsity]
            difference = paired_bootstrap(mine, theirs, metric_names, draws=draws)
            seeds = sorted(set(mine) & set(theirs))
            rows.append({
                "task": task, "propetl": row_name(label, sparsity), "other": row_name(other_label, other_sparsity),
                "relation": relation, "n_seeds": difference.n_seeds, "n_examples": difference.n_examples,
                "propetl_mean": cell.set_index("seed").loc[seeds, "test_combined_score"].mean() * 100,
                "other_mean": other.set_index("seed").loc[seeds, "test_combined_score"].mean() * 100,
                "difference": difference.mean, "ci_low": difference.low, "ci_high": difference.high,
                "p_value": difference.p_value, "propetl_storage_pct": size[label, sparsity],
                "other_storage_pct": size[other_label, other_sparsity],
                "propetl_one_answer_seeds": _seed_list(s for s in stuck[label, sparsity] if s in seeds),
                "other_one_answer_seeds": _seed_list(s for s in stuck[other_label, other_sparsity] if s in seeds),
            })
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def render_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison as display strings: ``-1.20 [-2.00, -0.40]``, the p-value, storage in % of the backbone."""
    shown = table[["task", "propetl", "other", "relation", "n_seeds"]].copy()
    shown["difference [95% CI] (points)"] = [f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" for d, lo, hi in
                                              zip(table["difference"], table["ci_low"], table["ci_high"])]
    shown["p"] = [f"{p:.3f}" for p in table["p_value"]]
    shown["storage (%): ProPETL / other"] = [f"{a:.3g} / {b:.3g}" for a, b in zip(table["propetl_storage_pct"], table["other_storage_pct"])]
    shown["seeds with one answer for all: ProPETL / other"] = [
        f"{_shown_seeds(a)} / {_shown_seeds(b)}" for a, b in zip(table["propetl_one_answer_seeds"], table["other_one_answer_seeds"])]
    return shown


def _seed_list(seeds: Iterable[int]) -> str:
    return ",".join(map(str, seeds))


def _shown_seeds(seeds: object) -> str:
    """A seed list as the CSV keeps it ("2", "1,3"; empty: none) for display; read back, one seed may be a number
    (2.0 in a column with empty cells) and none NaN."""
    if pd.isna(seeds) or seeds == "":
        return "–"
    return str(int(seeds)) if isinstance(seeds, (int, float, np.number)) else str(seeds)


def headline(table: pd.DataFrame) -> list[str]:
    """The comparison table's ProPETL rows in words and numbers, one sentence per ProPETL cell and task: against its
    dedicated baseline and its ablations, then the best and the worst for it of the entries that store at most as much."""
    lines = []
    for (task, propetl), rows in table.groupby(["task", "propetl"], sort=False):
        mine = rows.iloc[0]
        said = [f"On {task}, {propetl} scores {mine['propetl_mean']:.2f} storing {mine['propetl_storage_pct']:.3g}% of the backbone"]
        for _, row in rows.iterrows():
            if row["relation"] == "dedicated baseline":
                said.append(f"against its dedicated {row['other']} ({row['other_storage_pct']:.3g}%): {_difference(row)}")
        for _, row in rows[rows["relation"].str.startswith("ablation")].iterrows():
            said.append(f"against {row['other']} ({row['relation'].removeprefix('ablation: ')}): {_difference(row)}")
        smaller = rows[rows["relation"] == "stores at most as much"].sort_values("difference")
        if len(smaller):
            worst, best = smaller.iloc[0], smaller.iloc[-1]
            said.append(f"of the {len(smaller)} entries storing at most as much, its largest lead is over {best['other']} "
                        f"({_difference(best)}), its smallest over {worst['other']} ({_difference(worst)})"
                        if len(smaller) > 1 else f"against {best['other']}, which stores at most as much: {_difference(best)}")
        lines.append("; ".join(said) + ".")
    return lines


def _difference(row: pd.Series) -> str:
    said = f"{row['difference']:+.2f} points [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}], p = {row['p_value']:.3f}"
    stuck = [f"{row[side]} seed {seeds}" for side in ("propetl", "other")
             if (seeds := _shown_seeds(row.get(f"{side}_one_answer_seeds", ""))) != "–"]
    return said + (f" ({' and '.join(stuck)} gave one answer for every test example)" if stuck else "")
