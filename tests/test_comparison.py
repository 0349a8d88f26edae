"""The paired bootstrap and the comparison table: a method against itself differs by exactly 0, a real difference
gets an interval that excludes 0, runs on other test examples are refused, and the table reads kept predictions."""

import json

import numpy as np
import pandas as pd
import pytest

from propetl import tables
from propetl.comparison import paired_bootstrap
from propetl.predictions import read_predictions, write_predictions


def _runs(correct_rate: float, seeds=(1, 2, 3), n: int = 400, classes: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    references = np.arange(n) % classes
    out = {}
    for s in seeds:
        right = rng.random(n) < correct_rate
        out[s] = (np.where(right, references, (references + 1) % classes), references)
    return out


def test_a_method_against_itself_differs_by_exactly_zero():
    runs = _runs(0.8)
    for metrics in (["accuracy"], ["f1", "matthews_correlation"]):
        difference = paired_bootstrap(runs, runs, metrics, draws=200)
        assert (difference.mean, difference.low, difference.high, difference.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_a_clear_difference_has_an_interval_excluding_zero_and_a_small_p_value():
    better, worse = _runs(0.9, seed=1), _runs(0.6, seed=2)
    difference = paired_bootstrap(better, worse, ["accuracy"], draws=500)
    observed = np.mean([np.mean(better[s][0] == better[s][1]) - np.mean(worse[s][0] == worse[s][1]) for s in (1, 2, 3)]) * 100
    assert difference.mean == pytest.approx(observed)
    assert 0 < difference.low < difference.mean < difference.high and difference.p_value < 0.01
    assert difference.n_seeds == 3 and difference.n_examples == 400


def test_noise_gives_an_interval_containing_zero():
    difference = paired_bootstrap(_runs(0.7, seed=3), _runs(0.7, seed=4), ["accuracy"], draws=500)
    assert difference.low < 0 < difference.high and difference.p_value > 0.05


def test_the_vectorised_accuracy_path_equals_the_general_one():
    a, b = _runs(0.75, seed=5, n=120), _runs(0.7, seed=6, n=120)
    fast = paired_bootstrap(a, b, ["accuracy"], draws=300, seed=7)
    slow = paired_bootstrap(a, b, ["accuracy", "accuracy"], draws=300, seed=7)  # two names: the general path, same mean
    assert (fast.mean, fast.low, fast.high, fast.p_value) == pytest.approx((slow.mean, slow.low, slow.high, slow.p_value))


def test_generated_texts_are_compared_with_their_corpus_metric():
    references = np.array(["a cat", "the dog", "one bird", "two fish"] * 10, dtype=object)
    a = {1: (references.copy(), references)}
    b = {1: (np.array(["a cat"] * 40, dtype=object), references)}
    difference = paired_bootstrap(a, b, ["chrf"], draws=100)
    assert difference.mean > 0 and difference.low > 0


def test_runs_on_other_test_examples_are_refused():
    a, b = _runs(0.8), _runs(0.8)
    b[1] = (b[1][0], 1 - b[1][1])
    with pytest.raises(ValueError, match="seed 1: the runs scored other test examples"):
        paired_bootstrap(a, b, ["accuracy"])
    with pytest.raises(ValueError, match="no seed in common"):
        paired_bootstrap(_runs(0.8, seeds=(1,)), _runs(0.8, seeds=(2,)), ["accuracy"])


def _write_run(root, label, method, sparsity, seed, predictions, references, storage_min, mask_mode=None, share=None,
               max_steps=100):
    run = root / "runs" / "t" / label / (f"s{sparsity:g}" if sparsity else "s-") / f"seed{seed}"
    run.mkdir(parents=True)
    accuracy = float(np.mean(predictions == references))
    propetl = method.startswith("propetl")
    (run / "metrics.json").write_text(json.dumps({
        "task": "t", "label": label, "method": method, "sparsity": sparsity, "seed": seed, "status": "ok", "max_steps": max_steps,
        "mask_mode": mask_mode or ("learned" if propetl else None), "share": share or ("layers" if propetl else None),
        "artifact_bytes": 100, "test": {"accuracy": accuracy, "combined_score": accuracy},
        "storage": {"storage_pct": storage_min, "storage_min_pct": storage_min}}))
    write_predictions(run / "test_predictions.parquet", {"t": (predictions, references, np.arange(len(references)))})


def test_the_comparison_table_pairs_propetl_with_its_baseline_and_every_smaller_entry(tmp_path):
    runs = {("adapter", "adapter", None, 1.0): _runs(0.8, seed=1), ("propetl-adapter", "propetl-adapter", 0.5, 0.1): _runs(0.8, seed=2),
            ("vera", "vera", None, 0.05): _runs(0.6, seed=3), ("lora", "lora", None, 2.0): _runs(0.7, seed=4)}
    for (label, method, sparsity, storage), by_seed in runs.items():
        for seed, (predictions, references) in by_seed.items():
            _write_run(tmp_path, label, method, sparsity, seed, predictions, references, storage)
    written = tables.write_tables(tmp_path, tmp_path / "tables")
    assert tmp_path / "tables" / "comparison.md" in written
    table = pd.read_csv(tmp_path / "tables" / "comparison.csv")
    # adapter: its dedicated baseline (larger); vera: smaller; lora: larger and not its baseline -> left out
    assert list(zip(table["other"], table["relation"])) == [("adapter", "dedicated baseline"), ("vera", "stores at most as much")]
    vera = table.set_index("other").loc["vera"]
    assert vera["difference"] == pytest.approx(vera["propetl_mean"] - vera["other_mean"])
    assert vera["ci_low"] > 0 and vera["p_value"] < 0.01 and vera["n_seeds"] == 3
    shown = (tmp_path / "tables" / "comparison.md").read_text()
    assert f"{vera['difference']:+.2f} [{vera['ci_low']:+.2f}, {vera['ci_high']:+.2f}]" in shown


def test_a_budget_ladder_compares_each_rung_with_its_own_baseline_and_never_across_budgets(tmp_path):
    """A budget study holds each method at several max_steps under labels like adapter-x2: ProPETL at 2x stands
    against the adapter at 2x (its dedicated baseline, though the label is not the method's name), not against
    itself at 1x, which stores as much but trained half as long."""
    runs = {("adapter-x1", "adapter", None, 1.0, 100): _runs(0.7, seed=1),
            ("adapter-x2", "adapter", None, 1.0, 200): _runs(0.8, seed=2),
            ("propetl-adapter-x1", "propetl-adapter", 0.5, 0.1, 100): _runs(0.7, seed=3),
            ("propetl-adapter-x2", "propetl-adapter", 0.5, 0.1, 200): _runs(0.8, seed=4)}
    for (label, method, sparsity, storage, max_steps), by_seed in runs.items():
        for seed, (predictions, references) in by_seed.items():
            _write_run(tmp_path, label, method, sparsity, seed, predictions, references, storage, max_steps=max_steps)
    tables.write_tables(tmp_path, tmp_path / "tables")
    table = pd.read_csv(tmp_path / "tables" / "comparison.csv")
    assert list(zip(table["propetl"], table["other"], table["relation"])) == [
        ("propetl-adapter-x1 (s=0.5)", "adapter-x1", "dedicated baseline"),
        ("propetl-adapter-x2 (s=0.5)", "adapter-x2", "dedicated baseline")]


def test_an_ablation_is_compared_only_with_the_learned_shared_cells_of_its_method(tmp_path):
    """Random masks at the learned cell's sparsity; no masks at every sparsity; never an ablation against anything
    else (an ablation is no method of its own), and the headline says each in words."""
    runs = {("propetl-adapter", 0.5, None, None, 0.1): _runs(0.9, seed=1), ("propetl-adapter", 0.9, None, None, 0.08): _runs(0.85, seed=2),
            ("propetl-adapter-random", 0.5, "random", None, 0.1): _runs(0.6, seed=3),
            ("propetl-adapter-nomask", None, "none", None, 0.07): _runs(0.7, seed=4),
            ("propetl-adapter-noshare", 0.5, None, "none", 0.6): _runs(0.9, seed=5)}
    for (label, sparsity, mask_mode, share, storage), by_seed in runs.items():
        for seed, (predictions, references) in by_seed.items():
            _write_run(tmp_path, label, "propetl-adapter", sparsity, seed, predictions, references, storage, mask_mode, share)
    tables.write_tables(tmp_path, tmp_path / "tables")
    table = pd.read_csv(tmp_path / "tables" / "comparison.csv")
    assert list(zip(table["propetl"], table["other"], table["relation"])) == [
        ("propetl-adapter (s=0.5)", "propetl-adapter (s=0.9)", "stores at most as much"),
        ("propetl-adapter (s=0.5)", "propetl-adapter-nomask", "ablation: no masks"),
        ("propetl-adapter (s=0.5)", "propetl-adapter-noshare (s=0.5)", "ablation: a prototype per layer"),
        ("propetl-adapter (s=0.5)", "propetl-adapter-random (s=0.5)", "ablation: fixed random masks"),
        ("propetl-adapter (s=0.9)", "propetl-adapter-nomask", "ablation: no masks")]
    random = table.set_index("other").loc["propetl-adapter-random (s=0.5)"]
    assert random["difference"] == pytest.approx(random["propetl_mean"] - random["other_mean"]) and random["ci_low"] > 0
    from propetl.comparison import headline

    first = headline(table)[0]
    assert "against propetl-adapter-random (s=0.5) (fixed random masks): +" in first
    assert "against propetl-adapter (s=0.9), which stores at most as much" in first


def test_kept_predictions_round_trip():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        # evaluation visited a's rows 1 then 0: kept by row
        classes = read_predictions(write_predictions(Path(tmp) / "c.parquet", {"a": (np.array([1, 0]), np.array([1, 1]), [1, 0]),
                                                                               "b": (np.array([2]), np.array([0]), [0])}))
        texts = read_predictions(write_predictions(Path(tmp) / "t.parquet", {"g": (["x y", "z"], ["x y", "w"], [0, 1])}))
    assert classes["task"].tolist() == ["a", "a", "b"] and classes["example"].tolist() == [0, 1, 0]
    assert classes["prediction"].tolist() == [0, 1, 2] and classes["reference"].tolist() == [1, 1, 0]
    assert texts["prediction"].tolist() == ["x y", "z"] and texts["reference"].tolist() == ["x y", "w"]


def test_the_headline_says_each_propetl_row_in_words_and_numbers():
    from propetl.comparison import headline

    table = pd.DataFrame([
        {"task": "t", "propetl": "propetl-adapter (s=0.5)", "other": "adapter", "relation": "dedicated baseline", "n_seeds": 3,
         "n_examples": 100, "propetl_mean": 80.0, "other_mean": 81.2, "difference": -1.2, "ci_low": -2.0, "ci_high": -0.4,
         "p_value": 0.004, "propetl_storage_pct": 0.2, "other_storage_pct": 1.2},
        {"task": "t", "propetl": "propetl-adapter (s=0.5)", "other": "vera", "relation": "stores at most as much", "n_seeds": 3,
         "n_examples": 100, "propetl_mean": 80.0, "other_mean": 75.0, "difference": 5.0, "ci_low": 3.0, "ci_high": 7.0,
         "p_value": 0.001, "propetl_storage_pct": 0.2, "other_storage_pct": 0.03}])
    [line] = headline(table)
    assert line == ("On t, propetl-adapter (s=0.5) scores 80.00 storing 0.2% of the backbone; against its dedicated adapter (1.2%): "
                    "-1.20 points [-2.00, -0.40], p = 0.004; against vera, which stores at most as much: +5.00 points [+3.00, +7.00], "
                    "p = 0.001.")


def test_a_seed_that_gave_one_answer_for_every_test_example_is_named_in_the_table_and_the_headline(tmp_path):
    from propetl.comparison import headline, one_answer_seeds

    adapter, propetl = _runs(0.8, seed=1), _runs(0.8, seed=2)
    references = adapter[2][1]
    adapter[2] = (np.zeros_like(references), references)  # seed 2 never left class 0
    assert one_answer_seeds(adapter) == [2] and one_answer_seeds(propetl) == []
    for (label, method, sparsity, storage), by_seed in {("adapter", "adapter", None, 1.0): adapter,
                                                        ("propetl-adapter", "propetl-adapter", 0.5, 0.1): propetl}.items():
        for seed, (predictions, refs) in by_seed.items():
            _write_run(tmp_path, label, method, sparsity, seed, predictions, refs, storage)
    tables.write_tables(tmp_path, tmp_path / "tables")
    table = pd.read_csv(tmp_path / "tables" / "comparison.csv")
    [row] = table.to_dict("records")
    assert row["other_one_answer_seeds"] == 2 and pd.isna(row["propetl_one_answer_seeds"])
    assert "– / 2" in (tmp_path / "tables" / "comparison.md").read_text()
    [line] = headline(table)  # read back from the CSV, as the report reads it
    assert line.endswith("(adapter seed 2 gave one answer for every test example).")
