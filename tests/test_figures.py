"""Figures: the Pareto front, the mask-overlap statistic, and the files written from a results root."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_classifier

from propetl import PETLConfig, apply_petl, figures, save_petl
from propetl.artifacts import load_masks

FIXTURE = Path(__file__).parent / "fixtures" / "results"


def synthetic_masks(kept_per_layer: dict[str, list[set[int]]], size: int = 8) -> dict[str, torch.Tensor]:
    """Bool masks keyed like the core's ``layer.{i}.{name}``, from the kept indices of each layer."""
    masks = {}
    for name, per_layer in kept_per_layer.items():
        for layer, kept in enumerate(per_layer):
            mask = torch.zeros(size, dtype=torch.bool)
            mask[list(kept)] = True
            masks[f"layer.{layer}.{name}"] = mask.view(2, size // 2)
    return masks


def test_pareto_front_keeps_exactly_the_undominated_points():
    points = [
        (0.5, 40.0),  # least storage: on the front
        (1.0, 50.0),  # on the front
        (1.0, 45.0),  # same storage as (1, 50), lower score: dominated
        (2.0, 60.0),  # on the front
        (2.0, 60.0),  # an identical point is not "better": both stay
        (3.0, 55.0),  # more storage than (2, 60) for less score: dominated
        (4.0, 70.0),  # best score: on the front
    ]
    assert figures.pareto_front(points).tolist() == [True, True, False, True, True, False, True]


def test_pareto_front_of_a_single_point_is_that_point():
    assert figures.pareto_front([(0.1, 80.0)]).tolist() == [True]


def test_identical_masks_overlap_completely():
    layer = {0, 2, 5}
    overlap = figures.mask_overlap(synthetic_masks({"down": [layer] * 4, "up": [{1, 7}] * 4}))
    assert overlap.shape == (4, 4)
    assert np.allclose(overlap.to_numpy(), 1.0)


def test_disjoint_masks_do_not_overlap():
    overlap = figures.mask_overlap(synthetic_masks({"down": [{0, 1}, {2, 3}, {4, 5}, {6, 7}]}))
    assert np.allclose(overlap.to_numpy(), np.eye(4))


def test_overlap_is_jaccard_averaged_over_tensor_names():
    masks = synthetic_masks({
        "down": [{0, 1, 2, 3}, {2, 3, 4, 5}],  # |∩| = 2, |∪| = 6: Jaccard 1/3
        "up": [{0, 1}, {0, 1}],  # identical: 1
        "query.A": [{0}, {7}],  # disjoint: 0
    })
    overlap = figures.mask_overlap(masks)
    assert overlap.loc[0, 1] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert overlap.loc[1, 0] == overlap.loc[0, 1]


def test_mask_keys_must_name_a_layer():
    with pytest.raises(ValueError, match="layer.<i>.<name>"):
        figures.mask_overlap({"encoder.0.down": torch.ones(3, dtype=torch.bool)})


def test_random_mask_expectation_matches_simulation():
    assert figures.random_mask_jaccard(0.5) == pytest.approx(1 / 3)
    assert figures.random_mask_jaccard(1.0) == 1.0
    generator = torch.Generator().manual_seed(0)
    masks = {f"layer.{i}.down": torch.rand(20_000, generator=generator) < 0.3 for i in range(4)}
    overlap = figures.mask_overlap(masks).to_numpy()
    off_diagonal = overlap[~np.eye(4, dtype=bool)]
    assert off_diagonal.mean() == pytest.approx(figures.random_mask_jaccard(0.3), abs=0.01)


def assert_png_and_pdf(paths: list[Path], stem: str) -> None:
    png, pdf = (p for p in paths if p.stem == stem)
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 1000
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1000


def test_write_figures_draws_storage_and_sparsity_figures(tmp_path):
    stale = tmp_path / "mask_overlap.png"  # from an earlier results set that had an artifact
    stale.write_bytes(b"old")
    written = figures.write_figures(FIXTURE, tmp_path)
    assert sorted(p.name for p in written) == [
        "score_vs_sparsity.pdf", "score_vs_sparsity.png", "score_vs_storage.pdf", "score_vs_storage.png",
    ]
    assert_png_and_pdf(written, "score_vs_storage")
    assert_png_and_pdf(written, "score_vs_sparsity")
    # no temp files left, and no mask figure the current results cannot back
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)


def test_write_figures_shows_masks_of_the_propetl_adapter_run_at_the_paper_sparsity(tmp_path, monkeypatch):
    root = tmp_path / "results"
    shutil.copytree(FIXTURE, root)
    # a real artifact of a tiny 3-layer ProPETL-Adapter, stored in every ProPETL run of the fixture
    artifact = save_petl(apply_petl(tiny_classifier(), PETLConfig(method="propetl-adapter")), tmp_path / "artifact")
    for run in root.glob("runs/*/propetl-adapter*/*/seed*"):
        shutil.copytree(artifact, run / "artifact")
    loaded = []

    def recording_load_masks(artifact_dir: Path) -> dict[str, torch.Tensor]:
        loaded.append(Path(artifact_dir).relative_to(root).as_posix())
        return load_masks(artifact_dir)

    monkeypatch.setattr(figures, "load_masks", recording_load_masks)
    written = figures.write_figures(root, tmp_path / "figures")
    # propetl-adapter before its -random ablation, s=0.5 (the paper's), first task, first seed
    assert loaded == ["runs/glue-mrpc/propetl-adapter/s0.5/seed1/artifact"]
    assert_png_and_pdf(written, "mask_overlap")
    assert figures.mask_overlap(load_masks(artifact)).shape == (3, 3)



def test_a_sparsity_sweep_is_labelled_once_per_panel():
    # storage does not depend on sparsity, so a sweep's points sit in one column: one label, not one per point
    cells = figures.cell_summary(figures.collect_runs(FIXTURE))
    fig = figures.plot_score_vs_storage(cells)
    labels = sorted(text.get_text() for ax in fig.axes for text in ax.texts)
    assert labels == ["s=0.5", "s=0.5-0.9", "s=0.5-0.9"]  # propetl-adapter on both tasks, -random on glue-rte


def test_a_prototype_without_masks_is_a_reference_line_in_score_vs_sparsity():
    cells = figures.cell_summary(figures.collect_runs(FIXTURE))
    nomask = cells[(cells["label"] == "propetl-adapter") & (cells["sparsity"] == 0.5)].assign(
        label="propetl-adapter-nomask", sparsity=float("nan"))
    fig = figures.plot_score_vs_sparsity(pd.concat([cells, nomask], ignore_index=True))
    for ax in fig.axes:
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert "propetl-adapter-nomask (no masks)" in lines and "propetl-adapter-nomask" not in lines
        assert "adapter (baseline)" in lines
        assert set(lines["propetl-adapter-nomask (no masks)"].get_ydata()) == set(
            nomask.loc[nomask["task"] == ax.get_title().split(" · ")[0], figures.MEAN])


def test_a_budget_ladder_gets_its_gap_figure_and_other_results_do_not(budget_ladder, tmp_path):
    written = figures.write_figures(budget_ladder, tmp_path / "figures")
    assert_png_and_pdf(written, "budget_gap")
    assert not any("budget_gap" in p.name for p in figures.write_figures(FIXTURE, tmp_path / "figures"))
    assert not (tmp_path / "figures" / "budget_gap.png").exists()  # the stale one is gone


def test_task_mask_overlap_compares_the_masks_each_task_computes_with_per_layer():
    kept = torch.tensor([True, True, False, False])
    masks = {"a/layer.0.ffn.down": kept, "b/layer.0.ffn.down": kept,       # layer 0: the same entries
             "a/layer.1.ffn.down": kept, "b/layer.1.ffn.down": ~kept}      # layer 1: disjoint
    overlap = figures.task_mask_overlap(masks, ["a", "b"], "per_layer").set_index("layer")
    assert overlap.loc[0, "jaccard"] == 1.0 and overlap.loc[1, "jaccard"] == 0.0
    # OR layout: a task mask for every layer OR-ed with the layer's own mask
    layered = {"a/ffn.down": torch.tensor([True, False, False, False]), "b/ffn.down": torch.tensor([False, True, False, False]),
               "layer.0.ffn.down": torch.tensor([False, False, True, False])}
    assert figures.task_mask_overlap(layered, ["a", "b"], "task_or_layer")["jaccard"].item() == pytest.approx(1 / 3)
