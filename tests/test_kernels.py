"""What only changes speed changes nothing else: frozen linear weights cast once to bf16 leave every loss,
gradient and logit bit for bit as autocast computed them, for every method; the model comes back as it was;
CPU training steps run SDPA's math kernel, or eager attention where attention drops out, and draw dropout
masks from numpy's PCG64 with torch's dropout distribution."""

import contextlib

import pytest
import torch
from conftest import quick_config, tiny_batch
from torch.profiler import ProfilerActivity, profile
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from propetl import METHODS, PETLConfig, apply_petl
from propetl import trainer as trainer_module
from propetl.backbones import tiny_classifier, tiny_generator
from propetl.kernels import DropoutMasks, castable, frozen_weights_in, training_attention, training_kernels
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


def _kernels(model: torch.nn.Module, context, padded: bool = True) -> set[str]:
    """The attention and random-number kernels of one training step of ``model``."""
    batch = tiny_batch() if padded else {"input_ids": tiny_batch()["input_ids"]}
    with profile(activities=[ProfilerActivity.CPU]) as trace, context:
        labels = torch.tensor([0, 1, 0, 1]) if model.config.model_type == "bert" else batch["input_ids"]
        model.train()(**batch, labels=labels).loss.backward()
    return {event.key for event in trace.key_averages() if "scaled_dot_product" in event.key or "bernoulli" in event.key}


def test_cpu_training_steps_use_the_math_attention_kernel_where_flash_would_run():
    decoder = tiny_generator("tiny-llama", seed=0, dropout=0.0)
    assert any("flash" in kernel for kernel in _kernels(decoder, contextlib.nullcontext()))  # without it, CPU picks flash
    assert not any("flash" in kernel for kernel in _kernels(decoder, training_attention(torch.device("cpu"))))
    assert any("math" in kernel for kernel in _kernels(decoder, training_attention(torch.device("cpu"))))


@pytest.mark.parametrize("padded", [True, False])
def test_cpu_training_steps_run_eager_attention_where_a_bidirectional_attention_drops_out(padded):
    encoder = tiny_classifier("tiny-bert", seed=0, dropout=0.1)
    assert any("scaled_dot_product" in kernel for kernel in _kernels(encoder, contextlib.nullcontext(), padded))
    assert not any("scaled_dot_product" in kernel for kernel in _kernels(encoder, training_kernels(torch.device("cpu")), padded))


@pytest.mark.parametrize("method", ["adapter", "propetl-prefix"])
def test_the_eager_route_computes_the_attention_sdpa_computes(method):
    """With a dropout too small to drop anything the two routes must give one model output, padding included."""
    torch.manual_seed(0)
    model = apply_petl(tiny_classifier("tiny-bert", seed=0, dropout=1e-12), PETLConfig(method=method)).train()
    batch = tiny_batch()
    sdpa = model(**batch).logits
    with training_kernels(torch.device("cpu")):
        assert not any("scaled_dot_product" in kernel for kernel in _kernels(model, contextlib.nullcontext()))
        eager = model(**batch).logits
    torch.testing.assert_close(eager, sdpa, rtol=1e-5, atol=1e-6)


def test_the_attention_registry_is_as_it_was_after_a_training_step_even_a_failed_one():
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    with pytest.raises(RuntimeError, match="diverged"), training_kernels(torch.device("cpu")):
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is not sdpa
        with training_kernels(torch.device("cpu")):  # an inner use leaves it to the outer one
            pass
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is not sdpa
        raise RuntimeError("diverged")
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa
    assert "sdpa" not in dict(ALL_ATTENTION_FUNCTIONS._local_mapping)


def test_a_cpu_training_step_draws_its_dropout_masks_from_pcg64_not_torchs_bernoulli():
    encoder = tiny_classifier("tiny-bert", seed=0, dropout=0.1)
    assert any("bernoulli" in kernel for kernel in _kernels(encoder, contextlib.nullcontext()))
    assert not any("bernoulli" in kernel for kernel in _kernels(encoder, training_kernels(torch.device("cpu"))))


def test_dropout_masks_keep_an_element_with_probability_1_minus_p_and_scale_it_by_its_inverse():
    ones = torch.ones(1_000_000, requires_grad=True)
    with DropoutMasks(seed=7):
        dropped = torch.nn.functional.dropout(ones, p=0.1)
    kept = dropped != 0
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.002  # binomial sd 0.0003
    assert dropped[kept].unique().tolist() == [pytest.approx(1 / 0.9)]
    dropped.sum().backward()
    assert torch.equal(ones.grad, dropped.detach())  # the gradient passes the kept elements, scaled alike
    with DropoutMasks(seed=7):
        again = torch.nn.Dropout(0.1).train()(torch.ones(1_000_000))
    with DropoutMasks(seed=8):
        other = torch.nn.Dropout(0.1).train()(torch.ones(1_000_000))
    assert torch.equal(again, dropped.detach()) and not torch.equal(other, again)


def test_dropout_masks_leave_what_drops_nothing_or_everything_to_torch():
    x = torch.randn(100)
    with DropoutMasks(seed=0):
        assert torch.equal(torch.nn.functional.dropout(x, p=0.1, training=False), x)
        assert torch.equal(torch.nn.functional.dropout(x, p=0.0), x)
        assert torch.equal(torch.nn.functional.dropout(x, p=1.0), torch.zeros(100))


def test_a_steps_masks_follow_torchs_seed_so_a_run_is_reproducible():
    def masks(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        with training_kernels(torch.device("cpu")):
            return torch.nn.functional.dropout(torch.ones(1000), p=0.5)

    assert torch.equal(masks(0), masks(0)) and not torch.equal(masks(0), masks(1))


def test_a_step_without_dropout_leaves_torchs_random_stream_as_it_was():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with training_kernels(torch.device("cpu")):
        torch.nn.functional.dropout(torch.ones(10), p=0.1, training=False)
    assert torch.equal(torch.rand(3), expected)


def test_a_bf16_run_scores_the_same_with_and_without_the_frozen_casts(sentiment_csv, tmp_path, monkeypatch):
    petl = PETLConfig(method="propetl-adapter")
    cast = fit(quick_config(sentiment_csv, tmp_path / "cast", bf16=True), petl)
    assert {p.dtype for p in cast.trainer.model.parameters()} == {torch.float32}  # restored after training
    cast_test = cast.trainer.evaluate(cast.test, metric_key_prefix="test")
    monkeypatch.setattr(trainer_module, "frozen_weights_in", lambda model, dtype: contextlib.nullcontext())
    plain = fit(quick_config(sentiment_csv, tmp_path / "plain", bf16=True), petl)
    assert (tmp_path / "cast/history.jsonl").read_text() == (tmp_path / "plain/history.jsonl").read_text()
    assert cast_test == plain.trainer.evaluate(plain.test, metric_key_prefix="test")
