"""One prototype for several tasks: per-task masks and heads, task-pure batches, per-task artifacts, frozen prototypes."""

import json

import pytest
import torch
from conftest import ROOT, tiny_batch, tiny_classifier
from conftest import quick_config as config
from transformers import RobertaConfig, RobertaForSequenceClassification, TrainerCallback

from propetl import PETLConfig, apply_petl, load_petl, save_petl, storage_report
from propetl.artifacts import PROTOTYPE_FILE
from propetl.backbones import load_model
from propetl.cli import main
from propetl.config import TrainConfig
from propetl.multitask import set_task
from propetl.petl_model import apply_multitask_petl, layer_masks, prototype_layers, prototypes
from propetl.task_sampler import TemperatureBatchSampler, task_probabilities
from propetl.param_groups import adamw, parameter_groups
from propetl.training import fit, train

LAYOUTS = ["per_layer", "task_or_layer", "task_and_layer"]


def two_task_model(layout: str = "per_layer", method: str = "propetl-adapter", **kwargs):
    """Task a: 2 classes, task b: 3 classes, one tiny BERT body (seed 0 like tiny_classifier's)."""
    models = {"a": tiny_classifier(num_labels=2), "b": tiny_classifier(num_labels=3, seed=1)}
    return apply_multitask_petl(models, PETLConfig(method=method, task_masks=layout, **kwargs))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_prototype_and_distinct_mask_parameters_per_task(layout):
    model = two_task_model(layout)
    assert len(prototypes(model)) == 1
    masks = layer_masks(model)
    scores = [mask.scores for mask in masks.values()]
    assert len({id(s) for s in scores}) == len(scores)  # no Parameter serves two masks (unlike the official layer mask)
    own = {key.split("/")[0] for key in masks if "/" in key}
    assert own == {"a", "b"}
    layers = 3
    per_task = layers * 2 if layout == "per_layer" else 2  # down + up per layer, or one task mask per tensor
    assert sum(key.startswith("a/") for key in masks) == per_task
    assert sum("/" not in key for key in masks) == (0 if layout == "per_layer" else layers * 2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_step_on_task_a_leaves_task_b_untouched(layout):
    model = two_task_model(layout).train()
    cfg = TrainConfig(lr=1e-2, mask_lr=1e-1, head_lr=1e-2, weight_decay=0.1, mask_weight_decay=0.1)
    optimizer = adamw(parameter_groups(model, cfg, [n for n, _ in model.named_parameters()]))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    set_task(model, "a")
    model(**tiny_batch(), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    optimizer.step()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert any(".heads.a." in k for k in changed) and not any(".heads.b." in k for k in changed)
    b_scores = {id(m.scores) for key, m in layer_masks(model).items() if key.startswith("b/")}
    named = dict(model.named_parameters())
    assert not any(id(named[k]) in b_scores for k in changed)
    assert any(id(named[k]) in {id(m.scores) for key, m in layer_masks(model).items() if key.startswith("a/")} for k in changed)


def test_each_task_computes_with_its_own_head_and_loss():
    model = two_task_model()
    for task, classes in (("a", 2), ("b", 3)):
        set_task(model, task)
        out = model(**tiny_batch(), labels=torch.tensor([0, 1, 1, 0]))
        assert out.logits.shape == (4, classes) and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="'c' is not one of this model's tasks: a, b"):
        set_task(model, "c")


def test_or_layout_keeps_what_either_mask_keeps_and_and_what_both_keep():
    for layout, combine in (("task_or_layer", torch.logical_or), ("task_and_layer", torch.logical_and)):
        model = two_task_model(layout, sparsity=0.5)
        set_task(model, "b")
        layer = prototype_layers(model)["layer.1.ffn"]
        expected = combine(layer_masks(model)["b/ffn.down"].bits(), layer_masks(model)["layer.1.ffn.down"].bits())
        assert torch.equal(layer.masks["down"]().bool(), expected)


def test_dedicated_methods_and_fixed_masks_are_refused_for_several_tasks():
    with pytest.raises(ValueError, match="got method 'adapter'. Dedicated methods run once per task"):
        two_task_model(method="adapter")
    with pytest.raises(ValueError, match="got method 'propetl-adapter', mask_mode 'random'"):
        two_task_model(mask_mode="random")


@pytest.mark.parametrize("temperature", [1.0, 10.0])
def test_the_sampler_draws_tasks_in_proportion_to_size_to_the_power_one_over_t(temperature):
    sizes = [900, 100]
    expected = torch.tensor([900 ** (1 / temperature), 100 ** (1 / temperature)])
    expected = expected / expected.sum()
    assert torch.allclose(task_probabilities(sizes, temperature), expected.double())
    sampler = TemperatureBatchSampler(sizes, batch_size=4, temperature=temperature, seed=0)
    counts = torch.zeros(2)
    for epoch in range(10):
        sampler.set_epoch(epoch)
        for batch in sampler:
            tasks = {int(index >= 900) for index in batch}
            assert len(tasks) == 1 and len(batch) == 4  # every batch from one task
            counts[tasks.pop()] += 1
    share = counts[0] / counts.sum()
    assert share == pytest.approx(expected[0].item(), abs=0.03)  # 2500 draws: 3 standard errors


def test_the_sampler_replays_an_epoch_exactly_and_draws_another_next_epoch():
    sampler = TemperatureBatchSampler([50, 30], batch_size=8, temperature=10, seed=3)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_task_round_trips_through_the_artifact_with_identical_logits(layout, tmp_path):
    model = two_task_model(layout).eval()
    with torch.no_grad():  # scores away from their init so that the masks are not the untrained ones
        for mask in layer_masks(model).values():
            mask.scores.normal_()
    save_petl(model, tmp_path / "artifact")
    assert (tmp_path / "artifact" / PROTOTYPE_FILE).is_file()
    assert sorted(p.name for p in (tmp_path / "artifact" / "tasks").iterdir()) == ["a", "b"]
    batch = tiny_batch()
    for task, classes in (("a", 2), ("b", 3)):
        set_task(model, task)
        with torch.no_grad():
            expected = model(**batch).logits
            loaded = load_petl(tiny_classifier(num_labels=classes), tmp_path / "artifact", task=task)
            assert torch.equal(loaded(**batch).logits, expected)
    with pytest.raises(ValueError, match="holds the tasks a, b; pass task= one of them"):
        load_petl(tiny_classifier(num_labels=2), tmp_path / "artifact")


def test_storage_of_n_tasks_on_roberta_base_is_one_prototype_plus_masks_and_a_head_per_task():
    per_layer, biases, layers, hidden = 98_304, 64 + 768, 12, 768
    head = hidden * hidden + hidden + 2 * hidden + 2  # RoBERTa's classification head, 2 labels
    for n in (2, 3, 5):
        with torch.device("meta"):
            models = {f"t{i}": RobertaForSequenceClassification(RobertaConfig(num_labels=2)) for i in range(n)}
        report = storage_report(apply_multitask_petl(models, PETLConfig(method="propetl-adapter", reduction_factor=12)))
        assert report["shared"] == {"stored_float_params": per_layer + biases, "mask_entries": 0,
                                    "storage_bits": 32 * (per_layer + biases)}
        for task in models:
            assert report["per_task"][task]["mask_entries"] == layers * per_layer
            assert report["per_task"][task]["task_bits"] == layers * per_layer + 32 * head
        assert report["storage_bits"] == 32 * (per_layer + biases) + n * layers * per_layer
        # storage for N tasks = shared_bits + N * task_bits; a dedicated adapter shares nothing
        assert report["shared_bits"] == 32 * (per_layer + biases) and report["task_bits"] == layers * per_layer + 32 * head
    with torch.device("meta"):
        dedicated = storage_report(apply_petl(RobertaForSequenceClassification(RobertaConfig(num_labels=2)),
                                              PETLConfig(method="adapter", reduction_factor=12)))
    assert dedicated["shared_bits"] == 0 and dedicated["task_bits"] == 32 * (layers * (per_layer + biases) + head)


def test_a_repeated_task_flag_trains_one_model_on_both_tasks(sentiment_csv, topic_csv, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--model", "tiny-bert", "--task", sentiment_csv, "--task", topic_csv, "--method", "propetl-adapter",
            "--out", str(run), "--max-steps", "16", "--eval-every", "8", "--batch-size", "16", "--lr", "5e-3", "--threads", "1"]
    main(args)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "sentiment+topic" and metrics["task_names"] == ["sentiment", "topic"]
    assert set(metrics["tasks"]) == {"sentiment", "topic"}
    for task in ("sentiment", "topic"):
        assert {"accuracy", "combined_score"} <= metrics["tasks"][task]["test"].keys()
    mean = (metrics["tasks"]["sentiment"]["test"]["combined_score"] + metrics["tasks"]["topic"]["test"]["combined_score"]) / 2
    assert metrics["test"]["combined_score"] == pytest.approx(mean)
    assert metrics["split_sizes"]["topic"]["train"] == 120 and metrics["storage"]["per_task"]["topic"]["head_params"] > 0
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert max(h["combined_score"] for h in history) == pytest.approx(metrics["val"]["combined_score"])
    # the run's artifact gives each task's model with the test score it reported
    artifact = run / "artifact"
    for task, classes in (("sentiment", 2), ("topic", 3)):
        assert load_petl(load_model("tiny-bert", classes, seed=1), artifact, task=task).num_labels == classes


def test_a_repeated_task_is_refused_and_a_dedicated_method_cannot_train_several_tasks(sentiment_csv, tmp_path):
    with pytest.raises(ValueError, match="is given more than once"):
        TrainConfig(task=[sentiment_csv, sentiment_csv])
    with pytest.raises(ValueError, match="several --task needs a ProPETL method .* with learned masks; got method 'adapter'"):
        train(config([sentiment_csv, str(ROOT / "tests/fixtures/sentiment.csv") + "x"], tmp_path), PETLConfig(method="adapter"))


def test_a_new_task_trains_masks_and_head_on_a_frozen_prototype(sentiment_csv, topic_csv, tmp_path):
    petl = PETLConfig(method="propetl-adapter")
    train(config(sentiment_csv, tmp_path / "base"), petl)
    base = tmp_path / "base" / "artifact"
    result = train(config(topic_csv, tmp_path / "new", prototype=str(base)), petl)
    artifact = tmp_path / "new" / "artifact"
    assert not (artifact / PROTOTYPE_FILE).exists()  # no prototype floats: only masks and head
    described = json.loads((artifact / "petl_config.json").read_text())
    assert len(described["prototype_ref"]["sha256"]) == 64
    model = load_petl(load_model("tiny-bert", 3, seed=1), artifact)
    base_proto = load_petl(load_model("tiny-bert", 2, seed=1), base)
    for (_, a), (_, b) in zip(prototypes(model)["ffn"].named_parameters(), prototypes(base_proto)["ffn"].named_parameters()):
        assert torch.equal(a, b)  # training never moved the frozen prototype
    assert result["status"] == "ok"
    storage = result["storage"]  # the new task costs its masks and head; the prototype is shared
    assert storage["shared_bits"] == 32 * storage["stored_float_params"]
    assert storage["task_bits"] == storage["mask_entries"] + 32 * storage["head_params"]
    other = tmp_path / "other.safetensors"
    other.write_bytes((base / PROTOTYPE_FILE).read_bytes())
    with torch.no_grad():
        save_petl(two_task_model(), tmp_path / "foreign")
    with pytest.raises(ValueError, match="another prototype"):
        load_petl(load_model("tiny-bert", 3, seed=1), artifact, prototype=tmp_path / "foreign")
    assert load_petl(load_model("tiny-bert", 3, seed=1), artifact, prototype=other).num_labels == 3  # same bytes elsewhere


class _Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 10:
            raise KeyboardInterrupt("simulated kill")


def test_a_killed_multi_task_run_resumes_and_ends_like_an_uninterrupted_one(sentiment_csv, topic_csv, tmp_path):
    petl = PETLConfig(method="propetl-adapter", task_masks="task_or_layer")
    uninterrupted = train(config([sentiment_csv, topic_csv], tmp_path / "whole"), petl)
    with pytest.raises(KeyboardInterrupt):
        fit(config([sentiment_csv, topic_csv], tmp_path / "killed"), petl, callbacks=[_Kill()])
    assert not (tmp_path / "killed" / "metrics.json").exists()
    resumed = train(config([sentiment_csv, topic_csv], tmp_path / "killed"), petl)
    assert resumed["tasks"] == uninterrupted["tasks"]  # the same batches, tasks and scores after the resume
    assert (tmp_path / "killed" / "history.jsonl").read_text() == (tmp_path / "whole" / "history.jsonl").read_text()
