"""`propetl export --to peft`: ProPETL-LoRA served by any stack that reads PEFT LoRA adapters."""

import json

import pytest
import torch
from conftest import tiny_batch, tiny_classifier
from peft import PeftModel
from test_artifacts import trained_like

from propetl import save_petl
from propetl.cli import main
from propetl.export import export_peft


@pytest.mark.parametrize("method, kwargs", [("propetl-lora", {"sparsity": 0.9}), ("lora", {})])
def test_an_exported_adapter_loads_in_peft_with_our_logits(method, kwargs, family, tmp_path):
    ours = trained_like(method, family, lora_r=4, lora_alpha=6, **kwargs)
    save_petl(ours, tmp_path / "artifact")
    export_peft(tmp_path / "artifact", tmp_path / "peft", backbone=tiny_classifier(family), fresh_backbone=tiny_classifier(family))
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and sorted(config["target_modules"]) == ["query", "value"]
    served = PeftModel.from_pretrained(tiny_classifier(family), tmp_path / "peft").eval()
    batch = tiny_batch()
    with torch.no_grad():
        expected, got = ours(**batch).logits, served(**batch).logits
    assert not torch.allclose(got, tiny_classifier(family)(**batch).logits, atol=1e-4)  # the adapter and head are in
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_other_methods_are_refused_in_one_line(tmp_path):
    save_petl(trained_like("propetl-adapter"), tmp_path / "artifact")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--to", "peft", str(tmp_path / "artifact"), str(tmp_path / "peft")])
    assert str(exit_info.value.code) == ("propetl export: error: method 'propetl-adapter' is not exportable to PEFT; "
                                         "exportable: lora, propetl-lora (PEFT's LoRA format has no bottleneck adapters, "
                                         "prefixes or full/bitfit weights)")
    assert not (tmp_path / "peft").exists()


def test_a_trained_run_exports_from_the_command_line(sentiment_csv, tmp_path):
    from conftest import quick_config

    from propetl import PETLConfig, load_petl
    from propetl.backbones import load_model
    from propetl.training import train

    train(quick_config(sentiment_csv, tmp_path / "run", seed=3, max_steps=4, eval_every=4),
          PETLConfig(method="propetl-lora", lora_r=4, lora_alpha=8))
    main(["export", "--to", "peft", str(tmp_path / "run"), str(tmp_path / "peft")])
    ours = load_petl(load_model("tiny-bert", 2, seed=3), tmp_path / "run" / "artifact")
    served = PeftModel.from_pretrained(load_model("tiny-bert", 2, seed=3), tmp_path / "peft").eval()
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(served(**batch).logits, ours(**batch).logits, atol=1e-5, rtol=0)
