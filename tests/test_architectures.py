"""Every backbone family: found by name, shaped from its modules, saved and loaded exactly, equal to PEFT."""

import pytest
import torch
from conftest import tiny_classifier
from peft import LoraConfig, PeftModel, PrefixTuningConfig, get_peft_model
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_LORA_TARGETS

from propetl import PETLConfig, apply_petl, load_petl, save_petl, storage_report
from propetl.architectures import FAMILIES, all_layers, family_of, named_targets, projection_shape, role_targets
from propetl.backbones import TINY_MODELS, load_tokenizer
from propetl.config import METHODS, PEFT_METHODS
from propetl.export import export_peft
from propetl.petl_model import prototype_layers, prototypes

FAMILY_MODELS = [name.removeprefix("tiny-") for name in TINY_MODELS]


def _model(family: str, **kwargs):
    return tiny_classifier(family, **kwargs)


def _batch(family: str) -> dict[str, torch.Tensor]:
    """Two texts of different lengths, padded: the mask matters."""
    return load_tokenizer(f"tiny-{family}")(["hello there, you", "a b"], padding=True, return_tensors="pt")


def _supported(family: str, method: str) -> bool:
    model = _model(family)
    if method == "bitfit":
        return any(name.endswith(".bias") for name, _ in model.base_model.named_parameters())
    return not (method.endswith("prefix") and not family_of(model).prefix)


def test_every_family_has_a_tiny_model_and_every_role_resolves_on_it():
    covered = {_model(name).config.model_type for name in FAMILY_MODELS}
    assert covered == set(FAMILIES)
    for name in FAMILY_MODELS:
        model = _model(name)
        layers = len(all_layers(model))
        for role in ("query", "key", "value", "ffn"):
            targets = role_targets(model, role)
            assert len(targets) >= layers, (name, role)
            assert all(isinstance(t.module, torch.nn.Module) for t in targets)
        assert list(family_of(model).lora_targets) == PEFT_LORA_TARGETS[model.config.model_type]


OURS = tuple(m for m in METHODS if m not in PEFT_METHODS)  # PEFT's methods on every family: tests/test_peft_methods.py


@pytest.mark.parametrize("family", FAMILY_MODELS)
@pytest.mark.parametrize("method", OURS)
def test_apply_save_load_gives_identical_logits(family, method, tmp_path):
    if not _supported(family, method):
        with pytest.raises(ValueError, match=f"method '{method}' is not supported on model type"):
            apply_petl(_model(family), PETLConfig(method=method))
        return
    model = apply_petl(_model(family), PETLConfig(method=method)).train()
    torch.manual_seed(0)
    with torch.no_grad():  # move every trainable tensor off its init so that loading has something to restore
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    model.eval()
    batch = _batch(family)
    expected = model(**batch).logits
    save_petl(model, tmp_path / "artifact")
    loaded = load_petl(_model(family), tmp_path / "artifact").eval()  # the same pretrained backbone, fresh
    torch.testing.assert_close(loaded(**batch).logits, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5", "deberta"])
def test_stored_floats_and_mask_entries_equal_arithmetic_from_module_shapes(family):
    model = _model(family)
    r, reduction, prefix = 4, 8, 5
    floats = entries = 0
    for name in family_of(model).lora_targets:
        targets = named_targets(model, name)
        fan_in, fan_out = projection_shape(targets[0].module, targets[0].parts)
        floats += r * (fan_in + fan_out)  # one prototype per target...
        entries += len(targets) * r * (fan_in + fan_out)  # ...a mask per module it acts on, in every stack
    report = storage_report(apply_petl(_model(family), PETLConfig(method="propetl-lora", lora_r=r)))
    assert (report["stored_float_params"], report["mask_entries"]) == (floats, entries)

    width, bottleneck = model.config.hidden_size, model.config.hidden_size // reduction
    adapter = storage_report(apply_petl(_model(family), PETLConfig(method="adapter", reduction_factor=reduction)))
    assert adapter["stored_float_params"] == len(role_targets(model, "ffn")) * (2 * width * bottleneck + width + bottleneck)

    if family_of(model).prefix:
        sites = [role_targets(model, "attention"), role_targets(model, "cross_attention")]
        report = storage_report(apply_petl(_model(family), PETLConfig(method="propetl-prefix", prefix_length=prefix)))
        assert report["stored_float_params"] == sum(prefix * 2 * site[0].width for site in sites if site)
        assert report["mask_entries"] == sum(prefix * 2 * t.width for site in sites for t in site)


def test_grouped_query_attention_shapes_come_from_the_modules():
    model = apply_petl(_model("llama"), PETLConfig(method="lora", lora_r=4, lora_targets=["k_proj"]))
    assert prototypes(model)["k_proj"].shapes == {"A": (4, 32), "B": (16, 4)}  # 2 key/value heads of 8
    prefix = apply_petl(_model("llama"), PETLConfig(method="prefix", prefix_length=3))
    assert prototypes(prefix)["attn"].shapes == {"prefix": (3, 2 * 16)}


def test_a_t5_prototype_is_one_tensor_shared_by_encoder_and_decoder():
    model = apply_petl(_model("t5"), PETLConfig(method="propetl-adapter"))
    layers = prototype_layers(model)
    assert len(layers) == 6  # 3 encoder + 3 decoder blocks
    assert all(layer.prototype is prototypes(model)["ffn"] and layer.index == 0 for layer in layers.values())
    assert prototypes(model)["ffn"].weights["down"].shape[0] == 1
    lora = apply_petl(_model("t5"), PETLConfig(method="propetl-lora"))
    # q: 3 encoder self-attentions, 3 decoder self-attentions, 3 decoder cross-attentions; one prototype
    assert sum(key.endswith(".q") for key in prototype_layers(lora)) == 9
    assert prototypes(lora)["q"].weights["A"].shape[0] == 1


def test_fused_qkv_masks_act_on_their_slice_only():
    model = apply_petl(_model("gpt2"), PETLConfig(method="propetl-lora", lora_targets=["value"], sparsity=0.5)).eval()
    with torch.no_grad():
        prototypes(model)["value"].weights["B"].normal_()
    c_attn = model.transformer.h[0].attn.c_attn
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out, base = c_attn(x), c_attn.base(x)
    assert torch.equal(out[..., :64], base[..., :64])  # query and key slices untouched
    assert not torch.allclose(out[..., 64:], base[..., 64:])
    assert prototypes(model)["value"].shapes["B"] == (32, 32)
    assert prototype_layers(model)["layer.0.value"].masks["B"].shape == (32, 32)


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
def test_lora_equals_peft_lora_on_the_same_targets(family):
    r, alpha = 4, 10
    ours = apply_petl(_model(family), PETLConfig(method="lora", lora_r=r, lora_alpha=alpha)).eval()
    theirs = get_peft_model(_model(family), LoraConfig(task_type="SEQ_CLS", r=r, lora_alpha=alpha, lora_dropout=0.0)).eval()
    generator = torch.Generator().manual_seed(1)
    layers = prototype_layers(ours)
    paths = {id(layer): path for path, layer in ours.named_modules()}
    with torch.no_grad():
        for site, proto in prototypes(ours).items():
            proto.weights["B"].copy_(torch.randn(proto.weights["B"].shape, generator=generator))
        for key, layer in layers.items():
            peft_layer = theirs.base_model.model.get_submodule(paths[id(layer)])
            peft_layer.lora_A["default"].weight.copy_(layer.weights()["A"])
            peft_layer.lora_B["default"].weight.copy_(layer.weights()["B"])
    assert len(layers) == sum(1 for _, m in theirs.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    batch = _batch(family)
    expected = theirs(**batch).logits
    assert not torch.allclose(expected, _model(family)(**batch).logits, atol=1e-3)
    torch.testing.assert_close(ours(**batch).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_prefix_equals_peft_prefix_tuning_on_decoders(family):
    length = 3
    theirs = get_peft_model(_model(family), PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=length)).eval()
    ours = apply_petl(_model(family), PETLConfig(method="prefix", prefix_length=length)).eval()
    prototype = prototypes(ours)["attn"]
    prototype.fold()
    width = prototype.shapes["prefix"][1] // 2
    embedding = theirs.prompt_encoder["default"].embedding.weight  # [P, layers * 2 * width]: per layer key, value
    with torch.no_grad():
        embedding.copy_(torch.randn(embedding.shape, generator=torch.Generator().manual_seed(1)))
        for layer in range(prototype.copies):
            prototype.weights["prefix"][layer].copy_(embedding[:, layer * 2 * width : (layer + 1) * 2 * width])
    batch = _batch(family)
    size, tokens = batch["input_ids"].shape
    positions = torch.arange(tokens).expand(size, tokens)  # PEFT's cache would shift them by the prefix length; ours does not
    with torch.no_grad():
        expected = theirs.base_model(input_ids=batch["input_ids"], position_ids=positions,
                                     attention_mask=torch.cat([torch.ones(size, length, dtype=torch.long), batch["attention_mask"]], 1),
                                     cache=theirs.get_prompt(batch_size=size)).logits
        got = ours(**batch, position_ids=positions).logits
    assert not torch.allclose(got, _model(family)(**batch, position_ids=positions).logits, atol=1e-3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5", "deberta"])
def test_lora_exports_to_peft_with_the_same_logits(family, tmp_path):
    model = apply_petl(_model(family), PETLConfig(method="propetl-lora", lora_r=4, sparsity=0.5)).eval()
    with torch.no_grad():
        for proto in prototypes(model).values():
            proto.weights["B"].normal_(std=0.5)
    batch = _batch(family)
    expected = model(**batch).logits
    save_petl(model, tmp_path / "artifact", backbone={"id": f"tiny-{family}"})
    export_peft(tmp_path / "artifact", tmp_path / "peft", backbone=_model(family), fresh_backbone=_model(family))
    served = PeftModel.from_pretrained(_model(family), tmp_path / "peft").eval()
    torch.testing.assert_close(served(**batch).logits, expected, atol=1e-5, rtol=0)


def test_unsupported_pairs_fail_in_one_line_naming_model_method_and_what_is_supported():
    with pytest.raises(ValueError, match=r"method 'bitfit' is not supported on model type 'llama': .*no bias") as error:
        apply_petl(_model("llama"), PETLConfig(method="bitfit"))
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"method 'propetl-prefix' is not supported on model type 'deberta-v2'.*run on bert"):
        apply_petl(_model("deberta"), PETLConfig(method="propetl-prefix"))
    with pytest.raises(ValueError, match=r"lora target 'nope' matches no linear layer of llama.*q_proj"):
        apply_petl(_model("llama"), PETLConfig(method="lora", lora_targets=["nope"]))


def _adapter(weights: dict[str, torch.Tensor], stream: torch.Tensor) -> torch.Tensor:
    down = torch.relu(stream @ weights["down"][0].T + weights["down_bias"][0])
    return down @ weights["up"][0].T + weights["up_bias"][0]


def _randomised_adapter(family: str):
    model = apply_petl(_model(family), PETLConfig(method="propetl-adapter", mask_mode="none")).eval()
    weights = prototypes(model)["ffn"].weights
    with torch.no_grad():
        for tensor in weights.values():
            tensor.normal_(std=0.3)
    return model, weights


def test_a_t5_adapter_follows_the_official_controller_x_plus_y_plus_adapter_of_x_plus_y():
    """propetl-t5: y = DenseReluDense(LN(x)) after dropout; the adapter reads y + x and adds to y; then the layer adds x."""
    model, weights = _randomised_adapter("t5")
    block = model.transformer.encoder.block[0].layer[1]
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out = block(x)
        y = block.DenseReluDense(block.layer_norm(x))
    torch.testing.assert_close(out, x + y + _adapter(weights, x + y), atol=1e-5, rtol=0)


def test_a_llama_adapter_reads_the_residual_stream_where_the_feed_forward_norm_does():
    model, weights = _randomised_adapter("llama")
    layer = model.model.layers[0]
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        normed = layer.post_attention_layernorm(x)  # as in the layer's forward: x passes this norm, then the MLP
        out = layer.mlp(normed)
        y = layer.mlp.base(normed)
    torch.testing.assert_close(out, y + _adapter(weights, x + y), atol=1e-5, rtol=0)
