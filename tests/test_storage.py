"""Storage accounting: the paper's RoBERTa-base numbers, exactly."""

import json

import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

from propetl import PETLConfig, apply_petl, save_petl, storage_report
from propetl.artifacts import load_masks
from propetl.mask_coding import entropy_bits
from propetl.petl_model import layer_masks

PER_LAYER = 98_304  # adapter 768x64x2, LoRA r=32 on query+value, prefix 64x(2x768)
ADAPTER_BIASES = 64 + 768
PAPER = {
    "adapter": {"reduction_factor": 12},
    "lora": {"lora_r": 32, "lora_alpha": 48},
    "prefix": {"prefix_length": 64},
}


def roberta_base(method: str, **kwargs):
    with torch.device("meta"):  # shapes only: no memory, no download
        model = RobertaForSequenceClassification(RobertaConfig(num_labels=2))
    return storage_report(apply_petl(model, PETLConfig(method=method, **kwargs)))


@pytest.mark.parametrize("kind", ["adapter", "lora", "prefix"])
def test_dedicated_baselines_store_twelve_layers_of_weights(kind):
    report = roberta_base(kind, **PAPER[kind])
    biases = 12 * ADAPTER_BIASES if kind == "adapter" else 0
    assert report["stored_float_params"] == 12 * PER_LAYER + biases
    assert report["mask_entries"] == 0
    assert report["storage_bits"] == 32 * report["stored_float_params"]
    assert report["storage_pct"] == pytest.approx(0.95, abs=0.01)


@pytest.mark.parametrize("kind, sparsity", [("adapter", 0.5), ("lora", 0.9), ("prefix", 0.9)])
def test_propetl_stores_one_prototype_plus_one_bit_per_mask_entry(kind, sparsity):
    report = roberta_base(f"propetl-{kind}", sparsity=sparsity, **PAPER[kind])
    biases = ADAPTER_BIASES if kind == "adapter" else 0
    assert report["stored_float_params"] == PER_LAYER + biases
    assert report["mask_entries"] == 12 * PER_LAYER
    assert report["storage_bits"] == 32 * (PER_LAYER + biases) + 12 * PER_LAYER
    assert report["storage_pct"] == pytest.approx(0.11, abs=0.005)
    baseline = roberta_base(kind, **PAPER[kind])
    assert report["storage_bits"] / baseline["storage_bits"] == pytest.approx(0.115, abs=0.005)


def test_backbone_and_head_are_counted_apart():
    report = roberta_base("lora")
    config = RobertaConfig()
    assert report["head_params"] == config.hidden_size * config.hidden_size + config.hidden_size + 2 * config.hidden_size + 2
    assert report["storage_pct"] == report["storage_bits"] / 32 / report["backbone_params"] * 100
    full = roberta_base("full")
    assert full["stored_float_params"] == full["backbone_params"] == report["backbone_params"]
    assert full["trainable_params"] == full["backbone_params"] + full["head_params"]


def test_prefix_counts_the_folded_prefixes_not_the_reparameterisation():
    report = roberta_base("prefix", prefix_length=64, prefix_mid_dim=512)
    assert report["trainable_params"] > report["stored_float_params"] + report["head_params"]


def test_bitfit_stores_only_bias_terms():
    report = roberta_base("bitfit")
    config = RobertaConfig()
    per_layer = 3 * 768 + 768 + 768 + 3072 + 768 + 768  # q,k,v; attn out; LN; ffn in; ffn out; LN
    assert report["stored_float_params"] == 12 * per_layer + 768  # + embedding LayerNorm bias
    assert report["mask_entries"] == 0 and config.hidden_size == 768


def test_propetl_lora_masks_at_sparsity_09_take_under_0_6_bit_per_entry_on_disk(tmp_path):
    # RoBERTa-base's attention shapes (12 layers, hidden 768, LoRA r 32 on query and value), a small
    # vocabulary and feed-forward so that the model is cheap to build: only the masked shapes matter
    config = RobertaConfig(num_labels=2, vocab_size=64, intermediate_size=8, max_position_embeddings=40)
    model = apply_petl(RobertaForSequenceClassification(config), PETLConfig(method="propetl-lora", sparsity=0.9, **PAPER["lora"]))
    report = storage_report(model)
    assert report["mask_entries"] == 12 * PER_LAYER
    artifact = save_petl(model, tmp_path / "artifact")
    on_disk = 8 * (artifact / "masks.safetensors").stat().st_size  # coded masks and the file's header, all of it
    assert on_disk / report["mask_entries"] <= 0.6
    assert report["mask_bits_coded"] / report["mask_entries"] <= 0.6 < 1.0  # the coded size storage_report gives
    assert report["mask_bits_coded"] / report["mask_entries"] >= entropy_bits(0.1)  # no lossless coding beats H(p)
    assert report["storage_pct_coded"] < report["storage_pct"]
    loaded = load_masks(artifact)
    assert all(torch.equal(loaded[key], mask.bits()) for key, mask in layer_masks(model).items())  # exact round trip


def test_half_kept_masks_stay_at_one_bit_since_no_coding_is_smaller(tmp_path):
    model = apply_petl(RobertaForSequenceClassification(RobertaConfig(num_labels=2, vocab_size=64, intermediate_size=8,
                                                                      max_position_embeddings=40, num_hidden_layers=2)),
                       PETLConfig(method="propetl-adapter", sparsity=0.5, reduction_factor=12))
    report = storage_report(model)
    assert report["mask_bits_coded"] == report["mask_entries"]  # bit-packing wins at entropy 1
    save_petl(model, tmp_path / "a")
    assert set(json.loads((tmp_path / "a" / "petl_config.json").read_text())["mask_coding"].values()) == {"bits"}
