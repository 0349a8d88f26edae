"""The competitors through PEFT's own code: they train, resume, save and reload like our methods, peft-lora equals our
LoRA, storage is counted three ways from PEFT's module shapes, and a bad PEFT type or argument fails in one line."""

import json
import math

import pytest
import torch
from conftest import quick_config as config
from conftest import tiny_batch, tiny_classifier
from transformers import TrainerCallback

from propetl import PETLConfig, load_petl, save_petl
from propetl.backbones import load_model, load_tokenizer
from propetl.cli import main as cli_main
from propetl.config import PEFT_METHODS
from propetl.peft_methods import PEFT_DIR, PEFT_FILES, check
from propetl.petl_model import apply_petl
from propetl.storage import storage_report
from propetl.training import fit

COMPETITORS = ("peft-lora", "dora", "vera", "vb-lora", "fourierft", "ia3")
HIDDEN, LAYERS, INTERMEDIATE = 32, 3, 64  # conftest.tiny_classifier: 3 layers of width 32, feed-forward 2 x 32


class _Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 10:
            raise KeyboardInterrupt("simulated kill")


@pytest.mark.parametrize("method", COMPETITORS)
def test_a_peft_method_trains_resumes_and_reloads_with_identical_logits(method, sentiment_csv, tmp_path):
    petl, batch = PETLConfig(method=method), tiny_batch()
    whole = fit(config(sentiment_csv, tmp_path / "whole", max_steps=12), petl).trainer.model.eval()
    with pytest.raises(KeyboardInterrupt):
        fit(config(sentiment_csv, tmp_path / "killed", max_steps=12), petl, callbacks=[_Kill()])
    resumed = fit(config(sentiment_csv, tmp_path / "killed", max_steps=12), petl).trainer.model.eval()
    assert "resuming from" in (tmp_path / "killed" / "train.log").read_text()
    assert torch.equal(resumed(**batch).logits, whole(**batch).logits)

    artifact = save_petl(whole, tmp_path / "artifact")
    assert sorted(p.name for p in (artifact / PEFT_DIR).iterdir()) == sorted(PEFT_FILES)  # PEFT's own save_pretrained files
    report = storage_report(whole)
    assert json.loads((artifact / PEFT_DIR / "adapter_config.json").read_text())["peft_type"] == report["peft"]["peft_type"]
    assert report["peft"]["file_bytes"]["as_configured"] == sum((artifact / PEFT_DIR / f).stat().st_size for f in PEFT_FILES)
    reloaded = load_petl(load_model("tiny-bert", 2, seed=1), artifact)
    assert torch.equal(reloaded(**batch).logits, whole(**batch).logits)
    fresh = apply_petl(load_model("tiny-bert", 2, seed=1), petl).eval()
    assert not torch.equal(reloaded(**batch).logits, fresh(**batch).logits)


def _copy_our_lora_into_peft(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    from propetl.modules.lora import LoRALinear

    with torch.no_grad():
        for path, layer in ours.named_modules():
            if isinstance(layer, LoRALinear):
                weights, peft_layer = layer.weights(), theirs.get_submodule(path)
                peft_layer.lora_A["default"].weight.copy_(weights["A"])
                peft_layer.lora_B["default"].weight.copy_(weights["B"])


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_peft_lora_trains_exactly_as_our_lora_from_the_same_start(family):
    """PEFT draws its LoRA init in another order than our prototypes, so a seed does not align them; from one start
    (B random, so that A's gradients are not zero), the same updates must give the same model."""
    ours = apply_petl(tiny_classifier(family, num_labels=2), PETLConfig(method="lora"))
    theirs = apply_petl(tiny_classifier(family, num_labels=2), PETLConfig(method="peft-lora"))
    with torch.no_grad():
        for prototype in ours.petl_prototypes.values():
            for tensor in prototype.parameters():
                tensor.normal_(0, 0.1)
    _copy_our_lora_into_peft(ours, theirs)
    theirs.load_state_dict({k: v for k, v in ours.state_dict().items() if "classifier" in k or "score" in k}, strict=False)
    trained = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    assert sum(p.numel() for p in trained(ours)) == sum(p.numel() for p in trained(theirs))
    optimisers = [torch.optim.AdamW(trained(m), lr=1e-2) for m in (ours, theirs)]
    labels = torch.tensor([0, 1, 1, 0])
    for step in range(5):
        batch = tiny_batch(seed=step)
        for model, optimiser in zip((ours, theirs), optimisers):
            optimiser.zero_grad()
            model(**batch, labels=labels).loss.backward()
            optimiser.step()
    held_out = tiny_batch(seed=99)
    before = apply_petl(tiny_classifier(family, num_labels=2), PETLConfig(method="lora"))
    assert not torch.allclose(ours(**held_out).logits, before(**held_out).logits, atol=1e-3)  # the steps moved the model
    torch.testing.assert_close(theirs(**held_out).logits, ours(**held_out).logits, atol=1e-5, rtol=1e-4)


def _report(method: str, **peft_args) -> dict:
    model = apply_petl(tiny_classifier("bert", num_labels=2, layers=LAYERS, hidden=HIDDEN),
                       PETLConfig(method=method, peft_args=peft_args or None))
    return storage_report(model)


def test_storage_of_each_peft_method_equals_hand_arithmetic_from_its_shapes():
    targets = 2 * LAYERS  # query and value of every layer (PEFT's table for BERT)
    lora_floats = targets * 32 * (HIDDEN + HIDDEN)  # r 32: A (32 x in) + B (out x 32)
    assert _report("peft-lora")["stored_float_params"] == lora_floats
    assert _report("dora")["stored_float_params"] == lora_floats + targets * HIDDEN  # + a magnitude per output

    vera = _report("vera")
    lambdas = targets * (256 + HIDDEN)  # r 256: lambda_d (r) and lambda_b (out) per layer
    assert vera["peft"]["convention_bits"] == vera["storage_min_bits"] == 32 * lambdas
    assert vera["peft"]["regenerable_params"] == 256 * HIDDEN + HIDDEN * 256  # one A (r x in) and one B (out x r) for all
    assert vera["peft"]["with_regenerable_bits"] == 32 * (lambdas + 2 * 256 * HIDDEN)

    fourier = _report("fourierft", n_frequency=100)
    assert fourier["stored_float_params"] == targets * 100
    assert fourier["peft"]["regenerable_params"] == targets * 2 * 100  # (row, column) of each coefficient, from the seed

    vb = _report("vb-lora")
    width = math.gcd(256, HIDDEN)  # vector_length: the widest divisor of 256 that divides every adapted width
    bank = 256 * width
    logits = targets * 2 * 4 * (HIDDEN // width) * 256  # A and B: r 4 sub-vectors per width / vector_length, 256 logits each
    assert vb["stored_float_params"] == bank + logits
    picks = logits // 256
    assert vb["storage_min_bits"] == 32 * bank + picks * (32 * (2 - 1) + 2 * 8)  # top-2: one free weight, two 8-bit indices

    ia3 = _report("ia3")  # key, value (a vector per output) and both output.dense (feed-forward: a vector per input)
    assert ia3["stored_float_params"] == LAYERS * (HIDDEN + HIDDEN + HIDDEN + INTERMEDIATE)


def test_peft_file_bytes_are_measured_both_ways_where_peft_offers_a_switch():
    vera = _report("vera")["peft"]["file_bytes"]
    assert set(vera) == {"as_configured", "save_projection=False"}
    assert vera["save_projection=False"] < vera["as_configured"] - 4 * 2 * 256 * HIDDEN * 0.99  # the projections' floats
    vb = _report("vb-lora")["peft"]["file_bytes"]
    assert set(vb) == {"as_configured", "save_only_topk_weights=True"} and vb["save_only_topk_weights=True"] < vb["as_configured"]


def test_tables_use_the_minimum_storage_and_our_methods_minimum_codes_their_masks():
    ours = storage_report(apply_petl(tiny_classifier("bert", num_labels=2), PETLConfig(method="propetl-lora", sparsity=0.99)))
    assert ours["storage_min_bits"] == 32 * ours["stored_float_params"] + ours["mask_bits_coded"] < ours["storage_bits"]
    dedicated = storage_report(apply_petl(tiny_classifier("bert", num_labels=2), PETLConfig(method="lora")))
    assert dedicated["storage_min_bits"] == dedicated["storage_bits"]


@pytest.mark.parametrize("petl, needles", [
    (dict(method="peft", peft_type="nope"), ["peft_type='nope'", "allowed:", "BOFT", "LORA"]),
    (dict(method="peft", peft_type="prefix_tuning"), ["peft_type='prefix_tuning'", "allowed:"]),
    (dict(method="vera", peft_args={"rank": 4}), ["['rank']", "VeraConfig", "allowed:", "projection_prng_key"]),
    (dict(method="peft", peft_type="boft", peft_args={"boft_block_size": 4, "boft_block_num": 4}), ["BOFTConfig", "refused"]),
])
def test_an_unknown_peft_type_or_argument_fails_in_one_line(petl, needles):
    with pytest.raises(ValueError) as error:
        check(PETLConfig(**petl))
    message = str(error.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_our_config_refuses_peft_keys_where_they_do_not_apply():
    with pytest.raises(ValueError, match="method 'peft' needs peft_type"):
        PETLConfig(method="peft")
    with pytest.raises(ValueError, match="peft_type='BOFT' given for method 'vera'"):
        PETLConfig(method="vera", peft_type="BOFT")
    with pytest.raises(ValueError, match="peft_args given for method 'lora'"):
        PETLConfig(method="lora", peft_args={"r": 4})


def test_any_peft_type_runs_by_name_from_the_command_line(sentiment_csv, tmp_path, capsys):
    cli_main(["train", "--model", "tiny-bert", "--task", sentiment_csv, "--out", str(tmp_path / "run"), "--max_steps", "4",
              "--eval_every", "4", "--batch_size", "8", "--threads", "1", "--method", "peft", "--peft_type", "LOKR",
              "--peft_args", '{"r": 4}'])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["storage"]["peft"]["peft_type"] == "LOKR" and metrics["storage"]["stored_float_params"] > 0
    assert json.loads((tmp_path / "run" / "artifact" / PEFT_DIR / "adapter_config.json").read_text())["r"] == 4


def test_a_malformed_peft_args_flag_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--method", "vera", "--peft_args", "r=4", "--out", str(tmp_path)])
    assert "--peft_args" in capsys.readouterr().err


def test_every_peft_entry_of_the_registry_is_a_method_here():
    assert set(COMPETITORS) | {"peft"} == set(PEFT_METHODS)


@pytest.mark.parametrize("family", ["roberta", "deberta", "llama", "qwen2", "gpt2", "t5"])
@pytest.mark.parametrize("method", COMPETITORS)
def test_a_peft_method_on_every_family_round_trips_or_is_refused_in_one_line(method, family, tmp_path):
    """Where PEFT supports a method on a family, its artifact reloads to identical logits; where it does not, the
    refusal is one line naming the method and the model type, before anything trains."""
    try:
        model = apply_petl(tiny_classifier(family, num_labels=2), PETLConfig(method=method))
    except ValueError as error:
        message = str(error)
        assert "\n" not in message and (family.replace("-", "") in message.replace("-", "") or "target" in message), message
        return
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    batch = load_tokenizer(f"tiny-{family}")(["hello there, you", "a b"], padding=True, return_tensors="pt")
    save_petl(model, tmp_path / "artifact")
    reloaded = load_petl(tiny_classifier(family, num_labels=2), tmp_path / "artifact")
    assert torch.equal(reloaded(**batch).logits, model(**batch).logits)
