"""What only changes speed changes nothing else: frozen linear weights cast once to bf16 leave every loss,
gradient and logit bit for bit as autocast computed them, for every method; the model comes back as it was;
CPU training steps run SDPA's math kernel."""

import contextlib

import pytest
import torch
from conftest import quick_config, tiny_batch
from torch.profiler import ProfilerActivity, profile

from propetl import METHODS, PETLConfig, apply_petl
from propetl import trainer as trainer_module
from propetl.backbones import tiny_classifier, tiny_generator
from propetl.kernels import castable, frozen_weights_in, training_attention
from propetl.param_groups import adamw
from propetl.training import fit

# a classifier, a decoder LM and T5 (whose feed-forward reads wo.weight.dtype, and ties its LM head)
BACKBONES = {"tiny-bert": tiny_classifier, "tiny-llama": tiny_generator, "tiny-t5": tiny_generator}
NEEDS_TYPE = ("peft",)  # the open PEFT entry needs a peft_type; its named types are the other entries


def _steps(name: str, method: str, cast: bool) -> list:
    """Two bf16 training steps and an evaluation: the losses, the gradients and the logits."""
    torch.manual_seed(0)  # the same PETL modules both ways
    model = apply_petl(BACKBONES[name](name, seed=0), PETLConfig(method=method)).train()
    batch = tiny_batch()
    if name == "tiny-bert":
        batch["labels"] = torch.tensor([0, 1, 0, 1])
    elif name == "tiny-t5":
        batch["labels"] = batch["input_ids"][:, :5].contiguous()
    else:
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = adamw([{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-2}])  # as a run
    seen = []
    with frozen_weights_in(model, torch.bfloat16 if cast else None):
        for step in range(2):
            torch.manual_seed(step)  # the same dropout masks both ways
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(**batch).loss
            loss.backward()
            seen += [loss.detach(), *[p.grad.clone() for p in model.parameters() if p.grad is not None]]
            optimizer.step()
            optimizer.zero_grad()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            seen.append(model.eval()(**batch).logits)
    return seen


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("method", [m for m in METHODS if m not in NEEDS_TYPE])
def test_frozen_weights_cast_once_change_no_loss_gradient_or_logit(name, method):
    try:
        plain = _steps(name, method, cast=False)
    except ValueError:  # a method the family does not take (prefix on T5 ...): refused either way
        pytest.skip(f"{method} does not apply to {name}")
    cast = _steps(name, method, cast=True)
    assert len(plain) == len(cast)
    assert all(torch.equal(a, b) for a, b in zip(plain, cast))


def test_within_the_context_frozen_linear_weights_are_bf16_and_after_it_the_original_parameters_are_back():
    model = apply_petl(tiny_generator("tiny-t5", seed=0), PETLConfig(method="adapter"))
    before = {name: p for name, p in model.named_parameters(remove_duplicate=False)}
    assert model.lm_head.weight is model.shared.weight  # T5 ties its LM head to the embeddings
    with frozen_weights_in(model, torch.bfloat16):
        assert model.lm_head.weight.dtype == torch.bfloat16
        assert model.shared.weight.dtype == torch.float32  # the lookup is not autocast: the embedding keeps fp32
        assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
        with frozen_weights_in(model, torch.bfloat16):  # an inner use (evaluation inside training) finds nothing left
            pass
        assert model.lm_head.weight.dtype == torch.bfloat16
    assert {name: p for name, p in model.named_parameters(remove_duplicate=False)} == before
    assert all(after is before[name] for name, after in model.named_parameters(remove_duplicate=False))


def test_base_weights_that_peft_reads_outside_the_forward_stay_fp32():
    def base_layers(method: str) -> int:
        model = apply_petl(tiny_classifier("tiny-bert", seed=0), PETLConfig(method=method))
        return sum(name.endswith("base_layer") for name, module in model.named_modules() if module in castable(model))

    assert base_layers("peft-lora") > 0
    assert base_layers("dora") == 0  # DoRA's weight norm reads the base weight


def test_nothing_is_cast_without_bf16():
    model = apply_petl(tiny_classifier("tiny-bert", seed=0), PETLConfig(method="adapter"))
    with frozen_weights_in(model, None):
        assert {p.dtype for p in model.parameters()} == {torch.float32}


def _attention_kernels(context) -> set[str]:
    model = tiny_generator("tiny-llama", seed=0, dropout=0.0).train()
    batch = tiny_batch()
    with profile(activities=[ProfilerActivity.CPU]) as trace, context:
        model(**batch, labels=batch["input_ids"]).loss.backward()
    return {event.key for event in trace.key_averages() if "scaled_dot_product" in event.key}


def test_cpu_training_steps_use_the_math_attention_kernel_where_flash_would_run():
    default = _attention_kernels(contextlib.nullcontext())
    assert any("flash" in kernel for kernel in default)  # without it, CPU picks flash attention
    assert not any("flash" in kernel for kernel in _attention_kernels(training_attention(torch.device("cpu"))))


def test_a_bf16_run_scores_the_same_with_and_without_the_frozen_casts(sentiment_csv, tmp_path, monkeypatch):
    petl = PETLConfig(method="propetl-adapter")
    cast = fit(quick_config(sentiment_csv, tmp_path / "cast", bf16=True), petl)
    assert {p.dtype for p in cast.trainer.model.parameters()} == {torch.float32}  # restored after training
    cast_test = cast.trainer.evaluate(cast.test, metric_key_prefix="test")
    monkeypatch.setattr(trainer_module, "frozen_weights_in", lambda model, dtype: contextlib.nullcontext())
    plain = fit(quick_config(sentiment_csv, tmp_path / "plain", bf16=True), petl)
    assert (tmp_path / "cast/history.jsonl").read_text() == (tmp_path / "plain/history.jsonl").read_text()
    assert cast_test == plain.trainer.evaluate(plain.test, metric_key_prefix="test")
