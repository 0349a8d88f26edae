"""Tables built from the fixture results set (tests/fixtures/results).

The fixture: tasks glue-mrpc (accuracy, f1) and glue-rte (accuracy); labels bitfit
(1 seed), adapter (2 seeds), propetl-adapter at s=0.5 and s=0.9 (2 seeds each) and
propetl-adapter-random at s=0.5 on glue-rte only (1 seed): 15 runs.
"""

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from propetl import tables

FIXTURE = Path(__file__).parent / "fixtures" / "results"
PUBLISHED = Path(__file__).parents[1] / "results" / "published" / "propetl_table1.csv"
COMPETITORS = PUBLISHED.with_name("competitors_table2.csv")


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return tables.collect_runs(FIXTURE)


def test_collect_runs_gives_one_flat_row_per_metrics_file(runs):
    assert len(runs) == len(list(FIXTURE.glob("runs/*/*/*/*/metrics.json"))) == 15
    for column in ["task", "label", "method", "sparsity", "seed", "val_combined_score", "test_accuracy", "test_f1",
                   "test_combined_score", "storage_pct", "mask_entries", "artifact_bytes", "run_dir"]:
        assert column in runs.columns
    # storage.trainable_params would clash with the top-level field, so it keeps a prefix
    assert {"trainable_params", "storage_trainable_params"} <= set(runs.columns)
    assert runs["run_dir"].iloc[0] == "runs/glue-mrpc/adapter/s-/seed1"
    assert runs["test_f1"].isna().tolist() == (runs["task"] == "glue-rte").tolist()


def test_collect_runs_order_is_deterministic(runs):
    reordered = runs.sample(frac=1, random_state=0)
    expected = reordered.sort_values(["task", "label", "sparsity", "seed"], na_position="first", ignore_index=True)
    pd.testing.assert_frame_equal(runs, expected)


def test_collect_runs_fails_clearly_on_an_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="no runs found"):
        tables.collect_runs(tmp_path)


def test_collect_runs_given_run_dirs_reads_exactly_those_runs(runs):
    # what the pipeline does, so runs of an earlier grid in the same root stay out of the means
    chosen = ["runs/glue-rte/adapter/s-/seed2", "runs/glue-mrpc/bitfit/s-/seed1/metrics.json"]
    picked = tables.collect_runs(FIXTURE, [FIXTURE / path for path in chosen])
    assert picked["run_dir"].tolist() == ["runs/glue-mrpc/bitfit/s-/seed1", "runs/glue-rte/adapter/s-/seed2"]
    same = runs[runs["run_dir"].isin(picked["run_dir"])].reset_index(drop=True)
    columns = ["task", "label", "seed", "val_combined_score", "test_combined_score", "storage_pct"]
    pd.testing.assert_frame_equal(picked[columns], same[columns])


def test_collect_runs_follows_a_symlinked_runs_folder_and_counts_a_run_once(tmp_path):
    # clusters often keep runs/ on scratch space behind a symlink
    shutil.copytree(FIXTURE / "runs", tmp_path / "scratch")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "runs").symlink_to(tmp_path / "scratch")
    root = tmp_path / "results"
    assert len(tables.collect_runs(root)) == 15
    run = root / "runs" / "glue-rte" / "adapter" / "s-" / "seed2"
    picked = tables.collect_runs(root, [run, run / "metrics.json"])
    assert picked["run_dir"].tolist() == ["runs/glue-rte/adapter/s-/seed2"]


def test_collect_runs_rejects_an_unfinished_run_and_a_run_outside_the_root(tmp_path):
    (tmp_path / "runs" / "t" / "l" / "s-" / "seed1").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="seed1 has no metrics.json"):
        tables.collect_runs(tmp_path, [tmp_path / "runs" / "t" / "l" / "s-" / "seed1"])
    with pytest.raises(ValueError, match="not below the results root"):
        tables.collect_runs(tmp_path, [FIXTURE / "runs" / "glue-rte" / "adapter" / "s-" / "seed2"])


def test_cell_summary_is_mean_std_over_seeds_in_percent(runs):
    cells = tables.cell_summary(runs)
    assert len(cells) == 9
    cell = cells[(cells["task"] == "glue-mrpc") & (cells["label"] == "propetl-adapter") & (cells["sparsity"] == 0.5)]
    cell = cell.squeeze()
    # seeds: combined 0.82 / 0.86, accuracy 0.78 / 0.82, f1 0.86 / 0.90
    assert cell["n_seeds"] == 2
    assert cell["test_combined_score_mean"] == pytest.approx(84.0)
    assert cell["test_combined_score_std"] == pytest.approx(math.sqrt(8))  # sample std of 82 and 86
    assert cell["test_accuracy_mean"] == pytest.approx(80.0)
    assert cell["test_f1_mean"] == pytest.approx(88.0)
    assert cell["storage_pct"] == pytest.approx(0.08)
    assert cell["artifact_bytes"] == 76000


def test_cell_summary_single_seed_has_no_std(runs):
    cells = tables.cell_summary(runs)
    bitfit = cells[(cells["task"] == "glue-rte") & (cells["label"] == "bitfit")].squeeze()
    assert bitfit["n_seeds"] == 1
    assert bitfit["test_combined_score_mean"] == pytest.approx(60.0)
    assert math.isnan(bitfit["test_combined_score_std"])


def test_paper_table_rows_follow_the_method_order_with_ablations_last(runs):
    table = tables.paper_table(runs)
    assert table.index.tolist() == [
        "bitfit",
        "adapter",
        "propetl-adapter (s=0.5)",
        "propetl-adapter (s=0.9)",
        "propetl-adapter-random (s=0.5)",
    ]
    assert table.columns.tolist() == ["glue-mrpc", "glue-rte", "Avg", tables.MIN_COL, tables.STORED_COL, tables.BYTES_COL]


def test_paper_table_avg_is_the_mean_of_the_tasks(runs):
    table = tables.paper_table(runs)
    assert table.loc["adapter", "glue-mrpc"] == pytest.approx(82.0)
    assert table.loc["adapter", "Avg"] == pytest.approx((82.0 + 64.0) / 2)
    complete = table.drop(index="propetl-adapter-random (s=0.5)")
    pd.testing.assert_series_equal(complete["Avg"], complete[["glue-mrpc", "glue-rte"]].mean(axis=1), check_names=False)
    # a row missing a task gets no average rather than one over fewer tasks
    assert math.isnan(table.loc["propetl-adapter-random (s=0.5)", "Avg"])
    assert table.loc["propetl-adapter (s=0.9)", tables.STORED_COL] == pytest.approx(0.05)


def test_rendered_table_shows_mean_pm_the_95_percent_interval_over_seeds(runs):
    shown = tables.render_paper_table(runs)
    # two seeds, 64 and 70: std 4.243, t(0.975, 1) = 12.706, half-width 12.706 * 4.243 / sqrt(2) = 38.12
    assert shown.loc["propetl-adapter (s=0.5)", "glue-rte"] == "67.00 ± 38.12"
    assert shown.loc["bitfit", "glue-mrpc"] == "75.00"  # one seed: no interval
    assert shown.loc["propetl-adapter-random (s=0.5)", "glue-mrpc"] == "–"
    assert shown.loc["adapter", "Avg"] == "73.00"


def test_write_tables_writes_every_format_with_the_numbers(tmp_path):
    written = tables.write_tables(FIXTURE, tmp_path, published_csvs=[PUBLISHED])
    names = {p.name for p in written}
    assert names == {"runs.csv", "cells.csv", "paper_table.csv", "paper_table.md", "paper_table.tex",
                     "comparison.csv", "comparison.md", "published_vs_ours.csv"}
    assert all(p.stat().st_size > 0 for p in written)
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 15
    assert len(pd.read_csv(tmp_path / "cells.csv")) == 9
    markdown = (tmp_path / "paper_table.md").read_text()
    assert "| propetl-adapter (s=0.5)" in markdown and "84.00 ± 25.41" in markdown  # 95% interval of two seeds
    latex = (tmp_path / "paper_table.tex").read_text()
    assert latex.startswith("\\begin{tabular}")
    assert "propetl-adapter (s=0.5) & 84.00 $\\pm$ 25.41 & 67.00 $\\pm$ 38.12 & 75.50" in latex
    assert "stored params (\\%)" in latex
    assert pd.read_csv(tmp_path / "paper_table.csv", index_col=0).loc["adapter", "glue-mrpc"] == "82.00 ± 25.41"
    assert {p.name for p in tmp_path.iterdir()} == names  # written atomically: no temporary files left
    # the fixture's runs are from before test predictions were kept: a comparison table with no rows, not a guess
    assert pd.read_csv(tmp_path / "comparison.csv").empty


def test_published_comparison_matches_main_entries_by_method_and_task(runs):
    comparison = tables.published_comparison(runs, [PUBLISHED, COMPETITORS])
    assert set(comparison["method"]) == {"propetl-adapter"}  # the -random ablation has no published counterpart
    assert {"published", "ours"} <= set(comparison.columns)
    mrpc = comparison[(comparison["task"] == "glue-mrpc") & (comparison["sparsity"] == 0.5)].squeeze()
    assert mrpc["published"] == pytest.approx((88.24 + 91.41) / 2)  # published accuracy and F1, averaged
    assert mrpc["ours"] == pytest.approx(84.0)
    assert mrpc["ours_minus_published"] == pytest.approx(84.0 - 89.825)
    assert mrpc["published_sparsity"] == 0.5
    assert len(comparison) == 4  # 2 tasks x 2 sparsities


def test_a_competitor_run_meets_its_own_papers_published_row(runs):
    vera = runs[(runs["label"] == "adapter") & (runs["task"] == "glue-mrpc")].assign(method="vera", label="vera")
    comparison = tables.published_comparison(pd.concat([runs, vera]), [PUBLISHED, COMPETITORS])
    row = comparison[comparison["method"] == "vera"].squeeze()
    assert (row["task"], row["published_metrics"], row["published"]) == ("glue-mrpc", "accuracy", 89.5)  # VeRA Table 2
    assert row["ours"] == pytest.approx(82.0)  # the adapter runs' mean, relabelled (the paper table's 82.00)


def test_without_overlap_the_comparison_is_a_header_and_without_published_numbers_it_is_gone(tmp_path):
    # a declared output of the pipeline's tables rule: always written while the published file exists
    only_lora = tmp_path / "published.csv"
    published = pd.read_csv(PUBLISHED)
    published[published["method"] == "propetl-lora"].to_csv(only_lora, index=False)
    comparison = tmp_path / "out" / "published_vs_ours.csv"
    comparison.parent.mkdir()
    comparison.write_text("old\n")
    assert comparison in tables.write_tables(FIXTURE, tmp_path / "out", published_csvs=[only_lora])
    assert pd.read_csv(comparison).empty and "ours_minus_published" in comparison.read_text()
    written = tables.write_tables(FIXTURE, tmp_path / "out", published_csvs=[])
    assert comparison not in written and not comparison.exists()


def test_published_numbers_are_transcribed_consistently():
    published = pd.read_csv(PUBLISHED)
    glue = {"glue-cola", "glue-sst2", "glue-mrpc", "glue-qqp", "glue-stsb", "glue-mnli", "glue-qnli", "glue-rte"}
    for method, rows in published.groupby("method"):
        assert set(rows["task"]) == glue | {"avg"}, method
        assert rows["source"].str.startswith("https://github.com/ChaosCodes/ProPETL/").all()
        # the README's Avg is the mean of the eleven numbers in its row: a check on every transcribed value
        per_metric = rows[rows["task"] != "avg"]["value"]
        assert len(per_metric) == 11
        assert per_metric.mean() == pytest.approx(rows[rows["task"] == "avg"]["value"].item(), abs=0.01)


# ---------------------------------------------------------------- the training-budget ladder


def test_a_budget_ladder_is_recognised_only_where_a_method_ran_at_several_max_steps(budget_ladder):
    assert tables.has_budget_ladder(tables.collect_runs(budget_ladder))
    assert not tables.has_budget_ladder(tables.collect_runs(FIXTURE))


def test_budget_cells_group_by_method_and_max_steps_and_leave_ablations_out(budget_ladder):
    cells = tables.budget_cells(tables.collect_runs(budget_ladder)).set_index(["method", "max_steps"])
    assert cells.loc[("propetl-adapter", 200), "test_combined_score_mean"] == pytest.approx(84.0)  # not the 10% ablation
    assert cells.loc[("adapter", 200), "n_seeds"] == 3
    assert cells.loc[("adapter", 100), "test_combined_score_std"] == pytest.approx(math.sqrt(2.0))


def test_budget_gap_is_propetl_minus_dedicated_paired_by_seed(budget_ladder):
    gaps = tables.budget_gaps(tables.collect_runs(budget_ladder)).set_index("max_steps")
    assert gaps.loc[100, "gap_mean"] == pytest.approx(-4.5)  # (75-80 + 78-82) / 2
    assert gaps.loc[200, "n_seeds"] == 2  # adapter's seed 3 has no partner
    assert gaps.loc[200, "gap_mean"] == pytest.approx(0.0)  # (85-84 + 83-84) / 2
    assert gaps.loc[200, "gap_std"] == pytest.approx(math.sqrt(2.0))
    assert gaps.loc[200, "gap_se"] == pytest.approx(1.0)
    assert (gaps["dedicated"] == "adapter").all()


def test_budget_tables_are_written_for_a_ladder_and_removed_without_one(budget_ladder, tmp_path):
    out = tmp_path / "tables"
    written = {path.name for path in tables.write_tables(budget_ladder, out)}
    assert {"budget.csv", "budget_gap.csv", "budget_gap.md"} <= written
    assert pd.read_csv(out / "budget_gap.csv")["max_steps"].tolist() == [100, 200]
    single = [budget_ladder / "runs/rt/adapter-100/s-/seed1", budget_ladder / "runs/rt/propetl-adapter-100/s0.5/seed1"]
    tables.write_tables(budget_ladder, out, run_dirs=single)
    assert not (out / "budget.csv").exists() and not (out / "budget_gap.md").exists()


def test_a_diverged_run_is_counted_beside_the_mean_never_averaged_in(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "root")
    run = tmp_path / "root/runs/glue-rte/adapter/s-/seed3"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({
        "task": "glue-rte", "label": "adapter", "method": "adapter", "sparsity": None, "seed": 3, "status": "diverged",
        "diverged_at_step": 7, "reason": "loss 1e+05", "val": {}, "test": {}}))
    before = tables.cell_summary(tables.collect_runs(FIXTURE)).set_index(["task", "label"])
    after = tables.cell_summary(tables.collect_runs(tmp_path / "root")).set_index(["task", "label"])
    assert after.loc[("glue-rte", "adapter"), "n_diverged"] == 1 and before.loc[("glue-rte", "adapter"), "n_diverged"] == 0
    assert after.loc[("glue-rte", "adapter"), "n_seeds"] == 2
    assert after.loc[("glue-rte", "adapter"), "test_combined_score_mean"] == before.loc[("glue-rte", "adapter"), "test_combined_score_mean"]
    shown = tables.render_paper_table(tables.collect_runs(tmp_path / "root"))
    assert shown.loc["adapter", "glue-rte"].endswith(" (1 diverged)")


def _write(root: Path, run_dir: str, record: dict) -> None:
    (root / run_dir).mkdir(parents=True)
    (root / run_dir / "metrics.json").write_text(json.dumps(record))


def test_a_multi_task_run_is_a_row_per_task_and_storage_grows_by_what_a_task_adds(tmp_path):
    base = {"method": "propetl-adapter", "sparsity": 0.5, "seed": 1, "status": "ok", "artifact_bytes": 100}
    for task, score in (("a", 0.6), ("b", 0.8)):  # a dedicated adapter: one whole module per task
        _write(tmp_path, f"runs/{task}/adapter/s-/seed1", {
            **base, "task": task, "label": "adapter", "method": "adapter", "sparsity": None,
            "test": {"combined_score": score}, "storage": {"storage_pct": 1.0, "shared_bits": 0, "task_bits": 1000, "head_params": 10}})
    _write(tmp_path, "runs/a/propetl-adapter/s0.5/seed1", {  # the single-task run, at a third of the group's steps
        **base, "task": "a", "label": "propetl-adapter", "max_steps": 100, "test": {"combined_score": 0.65},
        "storage": {"storage_pct": 0.1, "shared_bits": 0, "task_bits": 900, "head_params": 1}})
    _write(tmp_path, "runs/a+b/joint/s0.5/seed1", {
        **base, "task": "a+b", "label": "joint", "max_steps": 200, "test": {"combined_score": 0.75},
        "tasks": {"a": {"val": {"combined_score": 0.5}, "test": {"combined_score": 0.7}},
                  "b": {"val": {"combined_score": 0.6}, "test": {"combined_score": 0.8}}},
        "storage": {"storage_pct": 0.2, "shared_bits": 800, "task_bits": 100, "head_params": 2, "per_task": {"a": {}, "b": {}}}})
    runs = tables.collect_runs(tmp_path)
    joint = runs[runs["label"] == "joint"].set_index("task")
    assert list(joint.index) == ["a", "b"] and set(joint["group"]) == {"a+b"} and set(joint["n_tasks"]) == {2}
    assert joint.loc["a", "test_combined_score"] == 0.7 and joint.loc["b", "val_combined_score"] == 0.6
    storage = tables.storage_by_tasks(runs).set_index(["label", "n_tasks"])
    assert storage.loc[("adapter", 2), "total_bits"] == 2000 and storage.loc[("joint", 2), "total_bits"] == 1000
    assert storage.loc[("joint", 1), "total_bits"] == 900 and storage.loc[("joint", 2), "mean_score"] == pytest.approx(75.0)
    # without heads (32 bits per head parameter; a group's head_params are both tasks' heads)
    assert storage.loc[("adapter", 2), "total_mb_without_heads"] * 8e6 == pytest.approx(2 * (1000 - 320))
    assert storage.loc[("joint", 2), "total_mb_without_heads"] * 8e6 == pytest.approx(800 + 2 * (100 - 32))
    assert not tables.has_budget_ladder(runs)  # the group's max_steps are not a budget rung of the method
    written = tables.write_tables(tmp_path, tmp_path / "tables")
    assert tmp_path / "tables" / "multitask.md" in written
    table = pd.read_csv(tmp_path / "tables" / "multitask.csv", index_col=0)
    assert table.loc["joint (s=0.5)", "mean"] == pytest.approx(75.0) and table.loc["adapter", "total KB (all tasks)"] == 0.25


def test_the_paper_table_shows_the_minimum_storage_beside_the_papers_count(tmp_path):
    """The minimum a task stores: as recorded; for runs from before it was recorded their coded masks, for older
    runs still the paper's count (32 bits per float, 1 bit per mask entry)."""
    for seed, storage in ((1, {"storage_min_pct": 0.40, "storage_pct_coded": 0.45}), (2, {"storage_pct_coded": 0.42})):
        _write(tmp_path, f"runs/a/propetl-lora/s0.9/seed{seed}", {
            "task": "a", "label": "propetl-lora", "method": "propetl-lora", "sparsity": 0.9, "seed": seed, "status": "ok",
            "artifact_bytes": 100, "test": {"combined_score": 0.8}, "storage": {"storage_pct": 0.47, **storage}})
    table = tables.paper_table(tables.collect_runs(tmp_path))
    assert table.loc["propetl-lora (s=0.9)", tables.STORED_COL] == 0.47
    assert table.loc["propetl-lora (s=0.9)", tables.MIN_COL] == pytest.approx(0.41)
    old = tables.paper_table(tables.collect_runs(FIXTURE))  # runs from before the coded size: the paper's count
    assert (old[tables.MIN_COL] == old[tables.STORED_COL]).all()


def test_a_file_task_is_named_by_its_stem_as_its_run_folder_is(tmp_path):
    record = {"task": "data/reviews.csv", "label": "adapter", "method": "adapter", "sparsity": None, "seed": 1,
              "status": "ok", "artifact_bytes": 100, "test": {"combined_score": 0.7}, "storage": {"storage_pct": 1.0}}
    _write(tmp_path, "runs/reviews/adapter/s-/seed1", record)
    runs = tables.collect_runs(tmp_path)
    assert list(runs["task"]) == ["reviews"]
    assert list(tables.paper_table(runs).columns[:2]) == ["reviews", "Avg"]  # the column header, not the path


def test_the_published_competitor_rows_are_transcribed_consistently():
    """Each paper's printed average is the mean of its six task scores (to its rounding): a check on the transcription."""
    published = pd.read_csv(Path(__file__).resolve().parents[1] / "results/published/competitors_table2.csv")
    for method, rows in published.groupby("method"):
        tasks = rows[rows["task"] != "avg"]
        assert len(tasks) == 6 and set(tasks["task"]) == {"glue-sst2", "glue-mrpc", "glue-cola", "glue-qnli", "glue-rte", "glue-stsb"}
        assert abs(tasks["value"].mean() - rows.loc[rows["task"] == "avg", "value"].item()) <= 0.05 + 1e-9, method  # 85.15 prints as 85.2
        assert rows["source"].str.contains("Table 2").all()
