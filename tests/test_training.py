"""`propetl train`: outputs, resumability, reproducibility, parameter groups."""

import json
import shutil
import time

import pytest
import torch
from conftest import quick_config as config
from transformers import Trainer, TrainerCallback

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from propetl import PETLConfig, load_petl, training
from propetl.petl_model import apply_petl
from propetl.backbones import load_model
from propetl.config import TrainConfig
from propetl.data import get_task_spec, load_prepared
from propetl.param_groups import adamw, parameter_groups
from propetl.training import fit, resolve, train, warn_of_emulated_bf16


def test_a_run_writes_the_documented_outputs(sentiment_csv, tmp_path):
    get_task_spec(str(sentiment_csv))  # the file reader's first-use imports: a cost of this process, not of the run
    started = time.perf_counter()
    result = train(config(sentiment_csv, tmp_path / "run", label="pa"), PETLConfig(method="propetl-adapter", sparsity=0.5))
    wall = time.perf_counter() - started
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["artifact", "data", "history.jsonl", "metrics.json", "provenance.json", "test_predictions.parquet", "train.log"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    for key in ("task", "label", "method", "sparsity", "seed", "data_seed", "model", "val", "test", "storage", "trainable_params",
                "steps", "best_step", "train_time_s", "examples_per_s", "peak_memory_mb", "artifact_bytes", "timing"):
        assert key in metrics, key
    # where the run's time went: the phases cover the call, each one happened, none overlaps another
    phases = dict(metrics["timing"])
    assert phases.pop("warm_start") is False  # trained in this process, not forked by a warm-start server
    assert list(phases) == ["startup_s", "load_s", "train_steps_s", "validation_s", "checkpoint_s", "test_s", "save_s"]
    assert all(phases[key] > 0 for key in phases)
    assert 0.7 * wall < sum(value for key, value in phases.items() if key != "startup_s") <= wall
    assert metrics["label"] == "pa" and metrics["steps"] == 16 and metrics["best_step"] in (4, 8, 12, 16)
    assert {"accuracy", "combined_score"} <= metrics["test"].keys()
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [4, 8, 12, 16]
    assert max(h["combined_score"] for h in history) == pytest.approx(metrics["val"]["combined_score"])
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["config"]["train"]["seed"] == 1 and provenance["config"]["petl"]["method"] == "propetl-adapter"
    assert provenance["packages"]["torch"] == torch.__version__.split("+")[0] or provenance["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    assert {"commit", "dirty"} <= provenance["git"].keys() and provenance["hardware"]["cpu_count"] >= 1
    assert not (run / "checkpoints").exists()


def test_the_artifact_reproduces_the_reported_test_score(sentiment_csv, tmp_path):
    result = train(config(sentiment_csv, tmp_path / "run"), PETLConfig(method="propetl-lora", lora_r=4, lora_alpha=8))
    data, info = load_prepared(tmp_path / "run" / "data")
    model = load_petl(load_model("tiny-bert", info["num_labels"]), tmp_path / "run" / "artifact")
    test = data["test"]
    correct = 0
    with torch.no_grad():
        for row in test:
            logits = model(input_ids=torch.tensor([row["input_ids"]]), attention_mask=torch.tensor([row["attention_mask"]])).logits
            correct += int(logits.argmax(-1).item() == row["labels"])
    assert correct / len(test) == pytest.approx(result["test"]["accuracy"])


def test_same_seed_same_numbers_and_another_seed_differs(sentiment_csv, tmp_path):
    petl = PETLConfig(method="propetl-adapter")
    first = train(config(sentiment_csv, tmp_path / "a"), petl)
    second = train(config(sentiment_csv, tmp_path / "b"), petl)
    train(config(sentiment_csv, tmp_path / "c", seed=2), petl)
    assert first["val"] == second["val"] and first["test"] == second["test"]
    history = lambda run: (tmp_path / run / "history.jsonl").read_text()  # noqa: E731
    assert history("a") == history("b") != history("c")


class _Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 10:
            raise KeyboardInterrupt("simulated kill")


def test_a_killed_run_resumes_and_ends_like_an_uninterrupted_one(sentiment_csv, tmp_path):
    petl = PETLConfig(method="propetl-adapter")
    uninterrupted = train(config(sentiment_csv, tmp_path / "whole"), petl)
    with pytest.raises(KeyboardInterrupt):
        fit(config(sentiment_csv, tmp_path / "killed"), petl, callbacks=[_Kill()])
    assert (tmp_path / "killed" / "checkpoints" / "checkpoint-8").is_dir()
    assert not (tmp_path / "killed" / "metrics.json").exists()
    # the checkpoint holds what training changes, never the frozen backbone a resumed run rebuilds
    model = apply_petl(load_model("tiny-bert", 2, seed=1), petl)
    with safe_open(tmp_path / "killed" / "checkpoints" / "checkpoint-8" / "model.safetensors", "pt") as weights:
        saved = set(weights.keys())
    params = dict(model.named_parameters())
    assert {name for name, p in params.items() if p.requires_grad} <= saved
    assert not saved & {name for name, p in params.items() if not p.requires_grad}
    with (tmp_path / "killed" / "history.jsonl").open("a") as f:
        f.write('{"step": 12, "accur')  # a kill in the middle of writing a record
    clock = tmp_path / "killed" / "checkpoints" / "checkpoint-8" / "train_clock.json"
    assert json.loads(clock.read_text())["train_time_s"] > 0
    clock.write_text('{"train_time_s": 1000.0}')  # pretend the first session was long
    resumed = train(config(sentiment_csv, tmp_path / "killed"), petl)
    assert 1000 < resumed["train_time_s"] < 1000 + uninterrupted["train_time_s"] * 10  # the whole cost
    assert resumed["examples_per_s"] == pytest.approx(resumed["steps"] * 16 / resumed["train_time_s"])
    assert resumed["val"] == uninterrupted["val"] and resumed["test"] == uninterrupted["test"]
    assert (tmp_path / "killed" / "history.jsonl").read_text() == (tmp_path / "whole" / "history.jsonl").read_text()
    assert "resuming from" in (tmp_path / "killed" / "train.log").read_text()


def test_a_checkpoint_without_a_trained_tensor_is_refused_not_resumed_with_fresh_weights(sentiment_csv, tmp_path):
    petl = PETLConfig(method="adapter")
    with pytest.raises(KeyboardInterrupt):
        fit(config(sentiment_csv, tmp_path), petl, callbacks=[_Kill()])
    weights = tmp_path / "checkpoints" / "checkpoint-8" / "model.safetensors"
    tensors = load_file(weights)
    save_file({name: tensor for name, tensor in tensors.items() if "classifier" not in name}, weights)
    with pytest.raises(RuntimeError, match=r"checkpoint does not fit the model: missing trained tensors \['classifier"):
        train(config(sentiment_csv, tmp_path), petl)


def test_resuming_reads_trainer_checkpoints_as_weights_only(sentiment_csv, tmp_path, monkeypatch):
    # no pickle from a checkpoint folder is ever executed: every torch.load is weights_only
    petl = PETLConfig(method="adapter")
    with pytest.raises(KeyboardInterrupt):
        fit(config(sentiment_csv, tmp_path / "killed"), petl, callbacks=[_Kill()])
    calls, real_load = [], torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    train(config(sentiment_csv, tmp_path / "killed"), petl)
    assert calls and all(weights_only is True for weights_only in calls)


def test_a_checkpoint_without_its_clock_gives_an_unknown_train_time_not_a_wrong_one(sentiment_csv, tmp_path):
    petl = PETLConfig(method="adapter")
    with pytest.raises(KeyboardInterrupt):
        fit(config(sentiment_csv, tmp_path), petl, callbacks=[_Kill()])
    (tmp_path / "checkpoints" / "checkpoint-8" / "train_clock.json").unlink()  # killed before on_save wrote it
    resumed = train(config(sentiment_csv, tmp_path), petl)
    assert resumed["train_time_s"] is None and resumed["examples_per_s"] is None
    assert "train_time_s will be null" in (tmp_path / "train.log").read_text()


def test_a_rerun_with_another_config_starts_afresh_instead_of_resuming(sentiment_csv, tmp_path):
    petl = PETLConfig(method="propetl-adapter")
    with pytest.raises(KeyboardInterrupt):
        fit(config(sentiment_csv, tmp_path / "run"), petl, callbacks=[_Kill()])
    changed = train(config(sentiment_csv, tmp_path / "run", lr=1e-3), petl)
    fresh = train(config(sentiment_csv, tmp_path / "fresh", lr=1e-3), petl)
    assert "discarding checkpoints of another config" in (tmp_path / "run" / "train.log").read_text()
    assert changed["val"] == fresh["val"] and changed["test"] == fresh["test"]


def test_prepared_data_of_another_split_is_refused(sentiment_csv, tmp_path):
    from propetl.data import prepare_task

    prepared = prepare_task(sentiment_csv, "tiny-bert", tmp_path / "prepared", data_seed=0)
    with pytest.raises(ValueError, match="was made with data_seed=0, but this run has data_seed=1"):
        train(config(sentiment_csv, tmp_path / "run", data_seed=1, prepared=str(prepared)), PETLConfig(method="adapter"))


def test_mask_scores_head_and_petl_parameters_get_their_own_learning_rates():
    from propetl import apply_petl

    model = apply_petl(load_model("tiny-bert", 2), PETLConfig(method="propetl-adapter"))
    cfg = resolve(TrainConfig(lr=1e-3, head_lr=5e-3), PETLConfig(method="propetl-adapter"))
    decay = Trainer.get_decay_parameter_names(None, model)
    groups = {g["name"]: g for g in parameter_groups(model, cfg, decay)}
    assert groups["petl"]["lr"] == 1e-3 and groups["head"]["lr"] == 5e-3 and groups["mask_scores"]["lr"] == 3e-3  # paper mask_lr
    assert all(p.dim() >= 2 for p in groups["mask_scores"]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == sum(1 for p in model.parameters() if p.requires_grad)


def test_weight_decay_reaches_weights_and_mask_scores_but_never_biases():
    # official trainer.py: every parameter decays except biases and LayerNorm weights, the mask
    # scores included (with the mask learning rate)
    from propetl import apply_petl

    model = apply_petl(load_model("tiny-bert", 2), PETLConfig(method="propetl-adapter"))
    cfg = resolve(TrainConfig(weight_decay=0.1, mask_weight_decay=0.2), PETLConfig(method="propetl-adapter"))
    groups = {g["name"]: g for g in parameter_groups(model, cfg, Trainer.get_decay_parameter_names(None, model))}
    names = {id(p): n for n, p in model.named_parameters()}
    assert groups["mask_scores"]["weight_decay"] == 0.2 and "mask_scores/no_decay" not in groups
    assert groups["petl"]["weight_decay"] == groups["head"]["weight_decay"] == 0.1
    assert {names[id(p)].rsplit(".", 1)[1] for p in groups["petl"]["params"]} == {"down", "up"}
    for name in ("petl/no_decay", "head/no_decay"):
        assert groups[name]["weight_decay"] == 0.0
        assert all("bias" in names[id(p)] for p in groups[name]["params"])


def test_paper_defaults_fill_unset_learning_rates():
    cfg = resolve(TrainConfig(), PETLConfig(method="propetl-lora"))
    assert (cfg.lr, cfg.mask_lr, cfg.head_lr) == (1e-4, 3e-2, 1e-4)  # run_lora.sh


def test_a_diverging_run_stops_and_is_recorded_as_diverged_not_scored(sentiment_csv, tmp_path):
    result = train(config(sentiment_csv, tmp_path / "run", lr=1e4, head_lr=1e4), PETLConfig(method="adapter"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    assert metrics["status"] == "diverged" and 1 <= metrics["diverged_at_step"] <= 16
    assert metrics["test"] == {} and metrics["reason"].startswith(("loss", "non-finite"))
    assert not (tmp_path / "run" / "artifact").exists() and not (tmp_path / "run" / "checkpoints").exists()
    assert (tmp_path / "run" / "provenance.json").is_file()


def test_a_finished_run_says_ok(sentiment_csv, tmp_path):
    assert train(config(sentiment_csv, tmp_path / "run", max_steps=4, eval_every=4), PETLConfig(method="bitfit"))["status"] == "ok"


@pytest.mark.parametrize("gpu, bf16_supported, asked, expected", [
    (False, False, {}, (False, False)),                 # CPU: no autocast unless asked
    (False, False, {"bf16": True}, (True, False)),
    (True, True, {}, (True, False)),                    # a GPU with bf16: bf16
    (True, False, {}, (False, True)),                   # an older GPU: fp16
    (True, True, {"fp16": True}, (False, True)),        # what is asked wins
    (True, True, {"bf16": False}, (False, True)),
])
def test_an_unset_precision_follows_the_hardware(monkeypatch, gpu, bf16_supported, asked, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)
    cfg = resolve(TrainConfig(**asked), PETLConfig(method="adapter"))
    assert (cfg.bf16, cfg.fp16) == expected


@pytest.mark.parametrize("gpu, native, asked, expected", [
    (False, True, {"bf16": "auto"}, (True, False)),     # a CPU with AVX512 / AMX: bf16
    (False, False, {"bf16": "auto"}, (False, False)),   # an AVX2-only CPU: fp32
    (True, True, {"bf16": "auto"}, (True, False)),      # a GPU with bf16: bf16
    (True, False, {"bf16": "auto"}, (False, True)),     # an older GPU: fp16
    (True, True, {"bf16": "auto", "fp16": True}, (False, True)),
])
def test_auto_asks_for_bf16_only_where_the_machine_computes_it_natively(monkeypatch, gpu, native, asked, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: native)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native and not gpu)
    cfg = resolve(TrainConfig(**asked), PETLConfig(method="adapter"))
    assert (cfg.bf16, cfg.fp16) == expected


def test_auto_is_fp32_on_a_torch_built_without_onednn(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert resolve(TrainConfig(bf16="auto"), PETLConfig(method="adapter")).bf16 is False


@pytest.mark.parametrize("native", [True, False])
def test_bf16_asked_for_on_a_cpu_without_it_is_honoured_with_a_warning(monkeypatch, caplog, native):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    with caplog.at_level("WARNING", logger="propetl.train"):
        cfg = resolve(TrainConfig(bf16=True), PETLConfig(method="adapter"))
        assert cfg.bf16 is True and not caplog.text  # resolving says nothing: the run says it once, at its start
        warn_of_emulated_bf16(cfg)
    assert ("without native bf16" in caplog.text) == (not native)


def test_a_run_without_native_bf16_says_so_once_in_its_log_even_when_it_diverges(monkeypatch, caplog, sentiment_csv, tmp_path):
    monkeypatch.setattr(training, "native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="propetl.train"):
        result = train(config(sentiment_csv, tmp_path / "run", lr=1e4, head_lr=1e4, bf16=True), PETLConfig(method="adapter"))
    assert result["status"] == "diverged"  # a diverged run resolves its config a second time, for its record
    assert sum("without native bf16" in record.message for record in caplog.records) == 1
    assert (tmp_path / "run" / "train.log").read_text().count("without native bf16") == 1


def test_a_checkpoint_cut_short_by_a_kill_is_dropped_and_the_run_resumes_from_the_one_before(sentiment_csv, tmp_path):
    petl = PETLConfig(method="propetl-adapter")
    uninterrupted = train(config(sentiment_csv, tmp_path / "whole", keep_checkpoints=True), petl)
    with pytest.raises(KeyboardInterrupt):
        fit(config(sentiment_csv, tmp_path / "killed"), petl, callbacks=[_Kill()])
    checkpoints = tmp_path / "killed" / "checkpoints"
    cut = checkpoints / "checkpoint-12"  # what a kill while saving step 12 leaves: weights, no trainer_state.json
    shutil.copytree(checkpoints / "checkpoint-8", cut)
    (cut / "trainer_state.json").unlink()
    resumed = train(config(sentiment_csv, tmp_path / "killed"), petl)
    assert resumed["val"] == uninterrupted["val"] and resumed["test"] == uninterrupted["test"]
    assert "checkpoint-12 was cut short by a kill" in (tmp_path / "killed" / "train.log").read_text()


def test_kept_test_predictions_score_the_reported_test_metrics_and_name_examples_alike_across_seeds(sentiment_csv, tmp_path):
    from propetl.metrics import compute_metrics
    from propetl.predictions import read_predictions

    kept = {}
    for seed in (1, 2):
        result = train(config(sentiment_csv, tmp_path / f"s{seed}", seed=seed), PETLConfig(method="adapter"))
        kept[seed] = read_predictions(tmp_path / f"s{seed}" / "test_predictions.parquet")
        assert compute_metrics(["accuracy"], kept[seed]["prediction"], kept[seed]["reference"]) == result["test"]
    # evaluation visits the test rows in a seed-dependent order (transformers' length-grouped sampler breaks ties by
    # the seed); the kept rows are the split's, the same for every seed
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = load_prepared(tmp_path / "s1" / "data")[0]["test"].sort("length")["length"]
    visits = [list(LengthGroupedSampler(32, lengths=lengths, generator=torch.Generator().manual_seed(s))) for s in (1, 2)]
    assert visits[0] != visits[1]
    assert kept[1]["example"].tolist() == list(range(len(kept[1])))
    assert kept[1]["reference"].tolist() == kept[2]["reference"].tolist()


class _KeepOptimizer(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.optimizer = optimizer


def test_a_run_trains_with_fused_adamw_over_its_parameter_groups(sentiment_csv, tmp_path):
    kept = _KeepOptimizer()
    fit(config(sentiment_csv, tmp_path / "run"), PETLConfig(method="propetl-adapter"), callbacks=[kept])
    assert kept.optimizer.defaults["fused"] is True
    assert {g["name"] for g in kept.optimizer.param_groups} >= {"petl", "mask_scores", "head"}


def test_fused_adamw_makes_the_per_tensor_loops_update_up_to_rounding():
    torch.manual_seed(0)
    start = [torch.randn(64, 32), torch.randn(32)]
    grads = [torch.randn_like(p) for p in start]
    updated = []
    for make in (adamw, lambda groups: torch.optim.AdamW(groups, foreach=False)):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = make([{"params": params[:1], "lr": 1e-2, "weight_decay": 0.1}, {"params": params[1:], "lr": 3e-2, "weight_decay": 0.0}])
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
        updated.append(params)
    for fused, loop, before in zip(*updated, start):
        assert not torch.equal(fused, before)
        torch.testing.assert_close(fused, loop, rtol=1e-6, atol=1e-7)
