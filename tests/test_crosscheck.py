"""Our modules against independent implementations, numerically.

* ``lora`` and ``prefix`` against the real peft package (a dev dependency);
* ``adapter`` against AdapterHub's Pfeiffer (``seq_bn``) adapter, through a committed
  fixture (tests/fixtures/reference/README.md): ``adapters`` pins transformers 4.x and
  cannot share this environment.
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_batch, tiny_classifier
from peft import LoraConfig, PrefixTuningConfig, get_peft_model
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

from propetl import PETLConfig, apply_petl
from propetl.petl_model import prototypes

REFERENCE = Path(__file__).parent / "fixtures" / "reference"


def _peft(family: str, r: int, alpha: float):
    # BERT's pooler is part of our head (trained per task), so PEFT must train it too
    modules_to_save = ["classifier", "pooler"] if family == "bert" else ["classifier"]
    config = LoraConfig(task_type="SEQ_CLS", r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=["query", "value"], modules_to_save=modules_to_save)
    return get_peft_model(tiny_classifier(family), config)


def test_trainable_parameter_count_equals_peft(family):
    ours = apply_petl(tiny_classifier(family), PETLConfig(method="lora", lora_r=8, lora_alpha=12))
    peft_trainable, _ = _peft(family, 8, 12).get_nb_trainable_parameters()
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == peft_trainable


def test_forward_equals_peft_lora_with_the_same_a_b_and_scaling(family):
    r, alpha = 4, 10
    ours = apply_petl(tiny_classifier(family), PETLConfig(method="lora", lora_r=r, lora_alpha=alpha)).eval()
    peft_model = _peft(family, r, alpha).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for target in ("query", "value"):
            proto = prototypes(ours)[target]
            proto.weights["B"].copy_(torch.randn(proto.weights["B"].shape, generator=generator))
            for layer in range(proto.copies):
                lora = peft_model.base_model.model.base_model.encoder.layer[layer].attention.self.get_submodule(target)
                lora.lora_A["default"].weight.copy_(proto.weights["A"][layer])
                lora.lora_B["default"].weight.copy_(proto.weights["B"][layer])
    batch = tiny_batch()
    expected = peft_model(**batch).logits
    assert not torch.allclose(expected, tiny_classifier(family)(**batch).logits, atol=1e-3)
    torch.testing.assert_close(ours(**batch).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("r, alpha", [(8, 16), (32, 48)])
def test_scaling_is_alpha_over_r(r, alpha):
    model = apply_petl(tiny_classifier(), PETLConfig(method="lora", lora_r=r, lora_alpha=alpha))
    layer = model.bert.encoder.layer[0].attention.self.query
    assert layer.scaling == alpha / r


def test_prefix_attention_equals_peft_prefix_tuning_with_the_same_prefixes(family):
    length, hidden = 5, 32
    peft_model = get_peft_model(
        tiny_classifier(family), PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=length, prefix_projection=False)
    ).eval()
    embedding = peft_model.prompt_encoder["default"].embedding.weight  # [P, layers * 2 * hidden]: per layer key, value
    ours = apply_petl(tiny_classifier(family), PETLConfig(method="prefix", prefix_length=length)).eval()
    prototype = prototypes(ours)["attn"]
    prototype.fold()
    with torch.no_grad():
        embedding.copy_(torch.randn(embedding.shape, generator=torch.Generator().manual_seed(1)))
        for layer in range(prototype.copies):
            prototype.weights["prefix"][layer].copy_(embedding[:, layer * 2 * hidden : (layer + 1) * 2 * hidden])
    batch = tiny_batch()
    size, tokens = batch["input_ids"].shape
    # PEFT hands the prefixes to transformers as a cache, which also shifts position ids by the
    # prefix length; the official code (and ours) does not, so positions are pinned for both
    positions = torch.arange(tokens).expand(size, tokens) + (2 if family == "roberta" else 0)
    with torch.no_grad():
        expected = peft_model.base_model(
            input_ids=batch["input_ids"], position_ids=positions, output_hidden_states=True,
            attention_mask=torch.cat([torch.ones(size, length, dtype=torch.long), batch["attention_mask"]], dim=1),
            cache=peft_model.get_prompt(batch_size=size),
        )
        got = ours(**batch, position_ids=positions, output_hidden_states=True)
        plain = tiny_classifier(family)(**batch, position_ids=positions, output_hidden_states=True)
    assert (expected.hidden_states[-1] - plain.hidden_states[-1]).abs().max() > 0.01  # the prefixes matter (1000x the tolerance)
    torch.testing.assert_close(got.hidden_states[-1], expected.hidden_states[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=0)


def test_adapter_equals_adapterhub_pfeiffer_seq_bn_for_the_same_weights():
    fixture = load_file(REFERENCE / "adapterhub_seq_bn.safetensors")
    described = json.loads((REFERENCE / "adapterhub_seq_bn.json").read_text())
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
            "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id")
    config = BertConfig(**{key: described["bert_config"][key] for key in keys}, num_labels=3)
    backbone = BertForSequenceClassification(config).eval()
    state = {key.removeprefix("backbone."): value for key, value in fixture.items() if key.startswith("backbone.")}
    backbone.load_state_dict(state, strict=True)
    inputs = {key: fixture[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():  # first the backbone alone: same model, same numbers
        torch.testing.assert_close(backbone(**inputs).logits, fixture["logits_no_adapter"], atol=1e-5, rtol=0)
    model = apply_petl(backbone, PETLConfig(method="adapter", reduction_factor=4)).eval()
    weights = prototypes(model)["ffn"].weights
    with torch.no_grad():
        for layer in range(config.num_hidden_layers):
            for ours, theirs in (("down", "down.weight"), ("down_bias", "down.bias"), ("up", "up.weight"), ("up_bias", "up.bias")):
                weights[ours][layer].copy_(fixture[f"adapter.layer.{layer}.{theirs}"])
        out = model(**inputs, output_hidden_states=True)
    assert (fixture["last_hidden_state"] - fixture["last_hidden_state_no_adapter"]).abs().max() > 0.1
    torch.testing.assert_close(out.hidden_states[-1], fixture["last_hidden_state"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, fixture["logits"], atol=1e-5, rtol=0)
