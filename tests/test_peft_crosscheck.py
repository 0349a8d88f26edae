"""Our `lora` against the real peft package: same trainable count, same forward."""

import pytest
import torch
from conftest import tiny_batch, tiny_classifier
from peft import LoraConfig, get_peft_model

from propetl import PETLConfig, apply_petl
from propetl.model import prototypes


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
