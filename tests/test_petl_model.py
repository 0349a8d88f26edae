"""apply_petl: which parameters train, how prototypes are shared, ablation modes, errors."""

import pytest
import torch
from conftest import tiny_batch, tiny_classifier
from transformers import OPTConfig, OPTForSequenceClassification

from propetl import METHODS, PETLConfig, apply_petl
from propetl.config import PEFT_METHODS
from propetl.peft_methods import added_parameters
from propetl.petl_model import head_modules, layer_masks, prototype_layers, prototypes

PROPETL = ["propetl-adapter", "propetl-lora", "propetl-prefix"]


def _loss(model) -> torch.Tensor:
    out = model(**tiny_batch(), labels=torch.tensor([0, 1, 2, 1]))
    return out.loss


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_only_its_own_parameters_and_the_head(method, family):
    model = apply_petl(tiny_classifier(family), PETLConfig(method=method, **({"peft_type": "LOKR"} if method == "peft" else {})))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    head = {id(p) for h in head_modules(model).values() for p in h.parameters()}
    assert all(p.requires_grad for p in model.parameters() if id(p) in head)
    if method == "full":
        assert all(p.requires_grad for p in model.parameters())
    elif method == "bitfit":
        assert {n for n in trainable if not n.startswith(("classifier", "bert.pooler"))} == {
            n for n, _ in model.base_model.named_parameters(prefix=model.base_model_prefix) if n.endswith(".bias") and "pooler" not in n
        }
    elif method in PEFT_METHODS:  # exactly the parameters PEFT's layers added
        added = added_parameters(model)
        assert added and {id(p) for p in model.parameters() if p.requires_grad} == set(added) | head
    else:
        backbone_trainable = [n for n in trainable if n.startswith(model.base_model_prefix) and "pooler" not in n]
        assert all(".masks." in n for n in backbone_trainable), backbone_trainable
    _loss(model.train()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("method", PROPETL)
def test_prototype_is_one_parameter_shared_by_every_layer(method, family):
    model = apply_petl(tiny_classifier(family, layers=3), PETLConfig(method=method, sparsity=0.5))
    layers = prototype_layers(model)
    assert len(layers) == 3 * len(prototypes(model))
    for site, proto in prototypes(model).items():
        site_layers = [layer for key, layer in layers.items() if key.endswith(f".{site}")]
        assert all(layer.prototype is proto and layer.index == 0 for layer in site_layers)
        assert proto.copies == 1
    # shared tensors are counted once however many layers use them
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(set(names)) and sum("petl_prototypes" in n for n in names) == sum(
        len(list(p.parameters())) for p in prototypes(model).values()
    )


def test_shared_prototype_gradient_is_the_sum_of_the_layers_gradients():
    """Same weights and masks, once shared and once as per-layer copies: grad(shared) = sum of grad(copies)."""
    shared = apply_petl(tiny_classifier(layers=3), PETLConfig(method="propetl-lora", sparsity=0.5))
    copies = apply_petl(tiny_classifier(layers=3), PETLConfig(method="propetl-lora", sparsity=0.5, share="none"))
    with torch.no_grad():
        for site, proto in prototypes(shared).items():
            proto.weights["B"].normal_()
            for name, weight in proto.weights.items():
                prototypes(copies)[site].weights[name].copy_(weight.expand_as(prototypes(copies)[site].weights[name]))
    for key, layer in prototype_layers(copies).items():
        layer.masks.load_state_dict(prototype_layers(shared)[key].masks.state_dict())
    _loss(shared).backward()
    _loss(copies).backward()
    for site, proto in prototypes(shared).items():
        for name, weight in proto.weights.items():
            per_layer = prototypes(copies)[site].weights[name].grad
            assert per_layer.abs().sum() > 0
            torch.testing.assert_close(weight.grad[0], per_layer.sum(0))


@pytest.mark.parametrize("method", PROPETL)
def test_share_none_gives_every_layer_its_own_masked_copy(method):
    model = apply_petl(tiny_classifier("roberta", layers=3), PETLConfig(method=method, share="none", sparsity=0.5))
    assert all(p.copies == 3 for p in prototypes(model).values())
    assert sorted({layer.index for layer in prototype_layers(model).values()}) == [0, 1, 2]
    assert len(layer_masks(model)) > 0


def random_masks(mask_seed: int | None, torch_seed: int) -> dict[str, torch.Tensor]:
    model = tiny_classifier()
    torch.manual_seed(torch_seed)  # what `propetl train` does with the training seed
    config = PETLConfig(method="propetl-adapter", mask_mode="random", sparsity=0.5, mask_seed=mask_seed)
    return {name: mask() for name, mask in layer_masks(apply_petl(model, config)).items()}


def test_random_masks_are_fixed_and_none_means_no_masks():
    random = apply_petl(tiny_classifier(), PETLConfig(method="propetl-adapter", mask_mode="random", sparsity=0.5))
    masks = layer_masks(random)
    assert masks and all(not m.learned for m in masks.values())
    assert not any(".masks." in n for n, p in random.named_parameters() if p.requires_grad)
    # layers get different random masks
    assert not torch.equal(masks["layer.0.ffn.down"](), masks["layer.1.ffn.down"]())
    config = PETLConfig(method="propetl-adapter", mask_mode="none")
    assert config.sparsity is None  # nothing is masked, so tables show no s=
    assert layer_masks(apply_petl(tiny_classifier(), config)) == {}


def test_random_masks_follow_the_training_seed_unless_a_mask_seed_pins_them():
    def same(a, b):
        return all(torch.equal(a[name], b[name]) for name in a)

    assert same(random_masks(None, torch_seed=1), random_masks(None, torch_seed=1))
    assert not same(random_masks(None, torch_seed=1), random_masks(None, torch_seed=2))
    assert same(random_masks(7, torch_seed=1), random_masks(7, torch_seed=2))
    assert not same(random_masks(7, torch_seed=1), random_masks(8, torch_seed=1))


def test_untrained_lora_leaves_the_backbone_output_unchanged(family):
    batch = tiny_batch()
    reference = tiny_classifier(family)(**batch).logits
    for method in ["lora", "propetl-lora"]:
        model = apply_petl(tiny_classifier(family), PETLConfig(method=method))
        torch.testing.assert_close(model(**batch).logits, reference)


def test_untrained_adapter_starts_from_the_official_bert_init_near_the_backbone(family):
    # init_weights="bert": N(0, 0.02) down AND up weights, zero biases; so the untrained
    # adapter is close to, not exactly, the identity, and every mask has a gradient at step 0
    batch = tiny_batch()
    reference = tiny_classifier(family)(**batch).logits
    model = apply_petl(tiny_classifier(family), PETLConfig(method="propetl-adapter", reduction_factor=1))
    weights = prototypes(model)["ffn"].weights  # 32 x 32 each: enough entries to see the distribution
    for name in ("down", "up"):
        assert 0.018 < weights[name].std().item() < 0.022 and abs(weights[name].mean().item()) < 0.003
    assert not weights["down_bias"].any() and not weights["up_bias"].any()
    model = apply_petl(tiny_classifier(family), PETLConfig(method="adapter"))
    logits = model(**batch).logits
    assert not torch.equal(logits, reference)
    torch.testing.assert_close(logits, reference, atol=0.05, rtol=0.0)
    masked = apply_petl(tiny_classifier(family), PETLConfig(method="propetl-adapter"))
    _loss(masked.train()).backward()
    assert all(mask.scores.grad.abs().sum() > 0 for mask in layer_masks(masked).values())


def test_prefix_changes_attention_and_respects_padding(family):
    model = apply_petl(tiny_classifier(family), PETLConfig(method="prefix", prefix_length=5))
    batch = tiny_batch()
    logits = model(**batch).logits
    assert not torch.allclose(logits, tiny_classifier(family)(**batch).logits)
    # a padded row gives the same result as the same row without its padding
    row = 3
    keep = batch["attention_mask"][row].bool()
    alone = model(input_ids=batch["input_ids"][row : row + 1, keep], attention_mask=batch["attention_mask"][row : row + 1, keep]).logits
    torch.testing.assert_close(alone[0], logits[row], atol=1e-5, rtol=1e-5)


def test_unsupported_architecture_fails_before_any_change():
    opt = OPTForSequenceClassification(OPTConfig(num_hidden_layers=1, hidden_size=16, ffn_dim=32, num_attention_heads=2,
                                                 vocab_size=50, word_embed_proj_dim=16))
    with pytest.raises(ValueError, match="unsupported architecture 'opt'.*supported model types: bert, roberta, .*gpt2, t5"):
        apply_petl(opt, PETLConfig(method="lora"))
    assert all(p.requires_grad for p in opt.parameters())
