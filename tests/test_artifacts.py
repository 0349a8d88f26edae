"""Merging for inference, and artifacts: smallest bytes on disk, bit-for-bit reload, clear errors."""

import json
import math
import re

import pytest
import torch
from conftest import tiny_batch, tiny_classifier

from propetl import METHODS, PETLConfig, apply_petl, load_petl, mask_coding, merge_masks, save_petl, storage_report
from propetl.artifacts import artifact_bytes, load_masks
from propetl.mask_coding import pack_bits, unpack_bits
from propetl.masks import topk_mask
from propetl.petl_model import layer_masks, prototype_layers, prototypes


def trained_like(method: str, family: str = "bert", **kwargs):
    """A PETL model whose trainable tensors are random, as after training (method peft: PEFT's LoKr)."""
    kwargs = {"peft_type": "LOKR", **kwargs} if method == "peft" else kwargs
    model = apply_petl(tiny_classifier(family), PETLConfig(method=method, **kwargs))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize("method", METHODS)
def test_merged_model_gives_the_same_outputs_without_top_k(method, family, monkeypatch):
    model = trained_like(method, family)
    batch = tiny_batch()
    with torch.no_grad():
        before = model(**batch).logits
        merge_masks(model)
        monkeypatch.setattr("propetl.masks.topk_mask", lambda *a: pytest.fail("top-k after merge"))
        after = model(**batch).logits
    assert (before - after).abs().max() <= 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_artifact_round_trip_reproduces_the_logits(method, family, tmp_path):
    model = trained_like(method, family)
    batch = tiny_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    save_petl(model, tmp_path / "artifact", backbone={"id": "tiny", "revision": "r0"})
    loaded = load_petl(tiny_classifier(family), tmp_path / "artifact")
    with torch.no_grad():
        assert (loaded(**batch).logits - expected).abs().max() <= 1e-6
    described = json.loads((tmp_path / "artifact" / "petl_config.json").read_text())
    assert described["method"] == method and described["backbone"]["id"] == "tiny" and described["backbone"]["revision"] == "r0"


@pytest.mark.parametrize("method", ["adapter", "lora", "prefix", "propetl-adapter", "propetl-lora", "propetl-prefix", "bitfit"])
def test_artifact_bytes_match_the_storage_report(method, tmp_path):
    model = trained_like(method, "roberta")
    report = storage_report(model)
    size = artifact_bytes(save_petl(model, tmp_path / "a"))
    ideal = (report["storage_bits"] + 32 * report["head_params"]) / 8
    assert ideal <= size <= ideal * 1.05 + 8192


def test_artifact_holds_exactly_prototype_masks_and_head(tmp_path):
    from safetensors import safe_open

    save_petl(trained_like("propetl-adapter"), tmp_path / "a")
    keys = {}
    for name in ("prototype", "masks", "head"):
        with safe_open(tmp_path / "a" / f"{name}.safetensors", "pt") as f:
            keys[name] = set(f.keys())
    assert keys["prototype"] == {"ffn.down", "ffn.down_bias", "ffn.up", "ffn.up_bias"}
    assert keys["masks"] == {f"layer.{i}.ffn.{t}" for i in range(3) for t in ("down", "up")}
    assert keys["head"] == {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias"}


def test_stored_masks_are_the_learned_top_k_masks(tmp_path):
    model = trained_like("propetl-lora", sparsity=0.75)
    save_petl(model, tmp_path / "a")
    stored = load_masks(tmp_path / "a")
    assert stored.keys() == layer_masks(model).keys()
    for key, mask in layer_masks(model).items():
        assert stored[key].dtype == torch.bool
        assert torch.equal(stored[key], topk_mask(mask.scores, 0.75).bool())
        assert stored[key].sum() == round(0.25 * mask.numel)


def test_bit_packing_round_trips_any_length():
    for numel in (1, 7, 8, 9, 1000):
        bits = torch.rand(numel) > 0.5
        packed = pack_bits(bits)
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel / 8)
        assert torch.equal(unpack_bits(packed, (numel,)), bits)


def test_prototype_masks_and_head_are_separate_files(tmp_path):
    save_petl(trained_like("propetl-prefix"), tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["head.safetensors", "masks.safetensors", "petl_config.json", "prototype.safetensors"]


def test_loading_onto_a_backbone_of_the_wrong_shape_fails_clearly(tmp_path):
    save_petl(trained_like("propetl-adapter"), tmp_path / "a")
    with pytest.raises(ValueError, match="another backbone shape.*hidden_size 32 vs 48"):
        load_petl(tiny_classifier(hidden=48), tmp_path / "a")
    with pytest.raises(ValueError, match="num_layers 3 vs 2"):
        load_petl(tiny_classifier(layers=2), tmp_path / "a")
    with pytest.raises(ValueError, match="model_type bert vs roberta"):
        load_petl(tiny_classifier("roberta"), tmp_path / "a")


def test_missing_or_corrupt_files_fail_clearly(tmp_path):
    save_petl(trained_like("propetl-adapter"), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="not a PETL artifact"):
        load_petl(tiny_classifier(), tmp_path / "nowhere")
    (tmp_path / "a" / "masks.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="masks.safetensors is corrupt"):
        load_petl(tiny_classifier(), tmp_path / "a")
    (tmp_path / "a" / "head.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="head.safetensors is missing"):
        load_petl(tiny_classifier(), tmp_path / "a")


def test_saving_over_an_artifact_replaces_it_whole(tmp_path):
    first, second = trained_like("propetl-adapter"), trained_like("lora")
    save_petl(first, tmp_path / "a")
    save_petl(second, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "petl_config.json").read_text())["method"] == "lora"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_merge_materialises_each_layers_masked_tensors_as_buffers():
    model = merge_masks(trained_like("propetl-adapter"))
    layer = prototype_layers(model)["layer.1.ffn"]
    assert layer.merged and set(dict(layer.named_buffers(recurse=False))) == {"down", "down_bias", "up", "up_bias"}
    proto = prototypes(model)["ffn"]
    expected = proto.weights["down"][0] * layer.masks["down"]()
    torch.testing.assert_close(layer.down, expected)


# ---------------------------------------------------------------- tampered artifacts


def _tamper_config(directory, **changes):
    path = directory / "petl_config.json"
    described = json.loads(path.read_text())
    for key, value in changes.items():
        target = described
        *parents, last = key.split(".")
        for part in parents:
            target = target[part]
        target[last] = value
    path.write_text(json.dumps(described))


def _rewrite_mask(directory, change):
    from safetensors.torch import load_file, save_file

    masks = load_file(directory / "masks.safetensors")
    key = sorted(masks)[0]
    masks[key] = change(masks[key])
    save_file(masks, str(directory / "masks.safetensors"))
    return key


TAMPERED = {
    # case: (how the saved propetl-adapter artifact is changed, what the one line says)
    "unknown method": (lambda d: _tamper_config(d, **{"petl_config.method": "compacter", "method": "compacter"}),
                       r"petl_config\.json: method='compacter' is not supported"),
    "config of other shapes": (lambda d: _tamper_config(d, **{"petl_config.reduction_factor": 4}),
                               r"prototype tensor 'down' has shape \(1, 2, 32\) in the artifact but \(1, 8, 32\) in this model"),
    "newer format": (lambda d: _tamper_config(d, format="propetl-artifact/99"), r"has format 'propetl-artifact/99'; this version reads"),
    "truncated mask": (lambda d: _rewrite_mask(d, lambda t: t[:-1].clone()), r"mask layer\.0\.ffn\.down in \S*/masks\.safetensors has 7 bytes, expected 8 for shape \(2, 32\)"),
    "padded mask": (lambda d: _rewrite_mask(d, lambda t: torch.cat([t, t[:1]])), r"has 9 bytes, expected 8"),
    "wrong number of ones": (lambda d: _rewrite_mask(d, lambda t: torch.full_like(t, 255)),
                             r"mask layer\.0\.ffn\.down keeps 64 of 64 entries; sparsity 0\.5 keeps 32"),
    "truncated file": (lambda d: (d / "masks.safetensors").write_bytes((d / "masks.safetensors").read_bytes()[:-5]),
                       r"masks\.safetensors is corrupt or not a safetensors file"),
    "foreign safetensors": (lambda d: __import__("safetensors.torch").torch.save_file({"weight": torch.ones(3)}, str(d / "prototype.safetensors")),
                            r"prototype tensor 'down' missing from artifact"),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_a_tampered_artifact_fails_with_one_clear_line(case, tmp_path):
    save_petl(trained_like("propetl-adapter"), tmp_path / "a")
    tamper, message = TAMPERED[case]
    tamper(tmp_path / "a")
    with pytest.raises(ValueError) as error:
        load_petl(tiny_classifier(), tmp_path / "a")
    assert re.search(message, str(error.value)), str(error.value)
    assert "\n" not in str(error.value)


def test_loading_an_artifact_never_unpickles(tmp_path, monkeypatch):
    import pickle

    save_petl(trained_like("propetl-lora"), tmp_path / "a")
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, lambda *a, **k: pytest.fail("an artifact was unpickled"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load reads pickles"))
    load_petl(tiny_classifier(), tmp_path / "a")


@pytest.mark.parametrize("shape, kept", [((32, 768), 0.1), ((768, 32), 0.1), ((64, 768), 0.5), ((24576,), 0.7),
                                         ((7, 3), 0.05), ((16,), 0.0), ((16,), 1.0), ((5000,), 0.02)])
def test_every_mask_coding_round_trips_exactly_and_the_smaller_one_is_kept(shape, kept):
    numel = math.prod(shape)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=torch.Generator().manual_seed(numel))[: round(kept * numel)]] = True
    mask = mask.view(shape)
    coding, data = mask_coding.encode(mask)
    assert torch.equal(mask_coding.decode(coding, data, shape), mask)
    assert data.numel() <= (numel + 7) // 8  # never more than bit-packing
    if 0.05 <= min(kept, 1 - kept) <= 0.1 and numel > 10_000:  # a rare value: within 3% of the entropy
        assert coding == "rice" and 8 * data.numel() / numel <= 1.03 * mask_coding.entropy_bits(kept)


def test_a_truncated_rice_mask_fails_with_one_clear_line():
    mask = torch.zeros(5000, dtype=torch.bool)
    mask[::20] = True
    coding, data = mask_coding.encode(mask)
    assert coding == "rice"
    with pytest.raises(ValueError, match=r"packed mask ends inside codeword \d+ of 250"):
        mask_coding.decode(coding, data[:-10].clone(), (5000,))
