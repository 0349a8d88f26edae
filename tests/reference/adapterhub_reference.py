"""Produce a numeric reference fixture from AdapterHub's ``adapters`` package.

Runs INSIDE a throwaway venv that has ``adapters`` (which pins transformers
4.x), not in the propetl environment (transformers 5.x). Use
``bash tests/reference/make_adapterhub_fixture.sh`` from the repository root.

Writes, relative to the repository root:
  tests/fixtures/reference/adapterhub_seq_bn.safetensors
  tests/fixtures/reference/adapterhub_seq_bn.json

The fixture lets propetl's test suite check that its Pfeiffer (sequential
bottleneck, "seq_bn") adapter reproduces AdapterHub's forward pass for the
same backbone and adapter weights.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification

import adapters
from adapters import BnConfig, SeqBnConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = REPO_ROOT / "tests" / "fixtures" / "reference"
OUT_STEM = "adapterhub_seq_bn"

ADAPTER_NAME = "seq_bn"
REDUCTION_FACTOR = 4
ADAPTER_INIT_SEED = 1
ADAPTER_INIT_STD = 0.2
INPUT_SEED = 2
BATCH, LENGTH, N_PAD_LAST = 3, 7, 2

# AdapterHub parameter name of the output-site bottleneck adapter in BERT layer i.
HUB_PATTERN = re.compile(
    r"^bert\.encoder\.layer\.(\d+)\.output\.adapters\." + re.escape(ADAPTER_NAME) + r"\.(adapter_down\.0|adapter_up)\.(weight|bias)$"
)
HUB_TO_OURS = {"adapter_down.0": "down", "adapter_up": "up"}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "adapters", "safetensors", "numpy"):
        out[dist] = metadata.version(dist)
    return out


def build_config() -> BertConfig:
    return BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
        num_labels=3,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )


def make_inputs(config: BertConfig) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(INPUT_SEED)
    input_ids = torch.randint(1, config.vocab_size, (BATCH, LENGTH), generator=gen, dtype=torch.long)
    attention_mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    attention_mask[-1, LENGTH - N_PAD_LAST :] = 0
    # padded positions carry the pad token id (0), as a tokenizer would emit
    input_ids[attention_mask == 0] = config.pad_token_id
    token_type_ids = torch.zeros(BATCH, LENGTH, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


@torch.no_grad()
def run(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(**inputs, output_hidden_states=True, return_dict=True)
    return out.logits.detach().clone(), out.hidden_states[-1].detach().clone()


def run_manual_pfeiffer(plain, inputs, named_params, name_map):
    """Forward of the plain transformers model with the Pfeiffer adapter written out by hand.

    In each BertOutput (FFN output sub-layer), with h = dropout(dense(intermediate)),
    x = the residual input_tensor and LN = the pretrained output LayerNorm:
        residual = h                     # residual_before_ln=True
        a = LN(h + x)                    # original_ln_before=True
        out = up(relu(down(a))) * 1.0 + residual
        y = LN(out + x)                  # original_ln_after=True
    The attention-output sub-layer (BertSelfOutput) is left unchanged (mh_adapter=False).
    """
    weights = {ours: named_params[hub].detach() for hub, ours in name_map.items()}
    model = copy.deepcopy(plain).eval()

    def make_forward(module, layer):
        w = {k: weights[f"adapter.layer.{layer}.{k}"] for k in ("down.weight", "down.bias", "up.weight", "up.bias")}

        def forward(hidden_states, input_tensor):
            h = module.dropout(module.dense(hidden_states))
            x = input_tensor
            residual = h
            a = module.LayerNorm(h + x)
            z = torch.relu(torch.nn.functional.linear(a, w["down.weight"], w["down.bias"]))
            out = torch.nn.functional.linear(z, w["up.weight"], w["up.bias"]) + residual
            return module.LayerNorm(out + x)

        return forward

    for i, layer in enumerate(model.bert.encoder.layer):
        layer.output.forward = make_forward(layer.output, i)
    return run(model, inputs)


def main() -> None:
    torch.manual_seed(0)
    config = build_config()
    model = BertForSequenceClassification(config)
    model.eval()

    # Plain transformers model (no adapters) kept aside: defines the backbone key
    # names and serves as a cross-check of the no-adapter output.
    plain = copy.deepcopy(model).eval()
    plain_sd = {k: v.detach().clone() for k, v in plain.state_dict().items()}

    adapters.init(model)
    adapter_config = SeqBnConfig(reduction_factor=REDUCTION_FACTOR)
    model.add_adapter(ADAPTER_NAME, config=adapter_config)
    model.set_active_adapters(ADAPTER_NAME)
    model.eval()

    resolved = model.adapters_config.match(ADAPTER_NAME, config_type=BnConfig)
    resolved_dict = resolved.to_dict() if hasattr(resolved, "to_dict") else dict(resolved)
    print("resolved adapter config:", json.dumps(resolved_dict, indent=2, sort_keys=True))
    print("active setup:", model.adapters_config.active_setup)

    # ---- separate adapter parameters from backbone parameters -------------
    full_sd = model.state_dict()
    adapter_names = [k for k in full_sd if k not in plain_sd]
    missing = [k for k in plain_sd if k not in full_sd]
    if missing:
        raise RuntimeError(f"backbone keys renamed by adapters.init: {missing}")
    for k, v in plain_sd.items():
        if not torch.equal(full_sd[k], v):
            raise RuntimeError(f"backbone tensor {k} changed by adapters.init/add_adapter")

    # adapters.init registers prompt-tuning plumbing that holds a reference to the
    # word embeddings (bert.prompt_tuning.base_model_embeddings.weight): an alias
    # of a backbone tensor, not an adapter parameter. Drop such aliases.
    named_params = dict(model.named_parameters())
    backbone_ptrs = {named_params[k].data_ptr(): k for k in plain_sd if k in named_params}
    aliases = {k: backbone_ptrs[full_sd[k].data_ptr()] for k in adapter_names if full_sd[k].data_ptr() in backbone_ptrs}
    adapter_names = [k for k in adapter_names if k not in aliases]
    for k in adapter_names:
        if k not in named_params:
            raise RuntimeError(f"adapter state entry {k} is a buffer, not a parameter; handle it explicitly")
    unaccounted = [k for k in named_params if k not in plain_sd and k not in adapter_names]
    if unaccounted:
        raise RuntimeError(f"parameters neither backbone nor adapter: {unaccounted}")
    print("state-dict aliases of backbone tensors (not stored):", aliases)

    # ---- overwrite every adapter parameter with non-trivial values --------
    gen = torch.Generator().manual_seed(ADAPTER_INIT_SEED)
    with torch.no_grad():
        for k in sorted(adapter_names):
            p = named_params[k]
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * ADAPTER_INIT_STD)
            if (p == 0).any():
                raise RuntimeError(f"zero entry in {k}")

    # ---- map AdapterHub names to our keys ----------------------------------
    name_map: dict[str, str] = {}
    extra: list[str] = []
    for k in sorted(adapter_names):
        m = HUB_PATTERN.match(k)
        if m:
            layer, module, kind = m.groups()
            name_map[k] = f"adapter.layer.{layer}.{HUB_TO_OURS[module]}.{kind}"
        else:
            name_map[k] = "adapter.extra." + k
            extra.append(k)
    if extra:
        print("WARNING: adapter has extra parameters:", extra)

    hidden = config.hidden_size
    bottleneck = int(hidden // REDUCTION_FACTOR)
    for layer in range(config.num_hidden_layers):
        for ours, shape in (
            ("down.weight", (bottleneck, hidden)),
            ("down.bias", (bottleneck,)),
            ("up.weight", (hidden, bottleneck)),
            ("up.bias", (hidden,)),
        ):
            key = f"adapter.layer.{layer}.{ours}"
            hub = [h for h, o in name_map.items() if o == key]
            if len(hub) != 1:
                raise RuntimeError(f"no unique AdapterHub parameter for {key}: {hub}")
            if tuple(named_params[hub[0]].shape) != shape:
                raise RuntimeError(f"{hub[0]} has shape {tuple(named_params[hub[0]].shape)}, expected {shape}")

    # ---- forward passes -------------------------------------------------------
    inputs = make_inputs(config)
    logits, last_hidden = run(model, inputs)

    model.set_active_adapters(None)
    logits_off, last_hidden_off = run(model, inputs)
    model.set_active_adapters(ADAPTER_NAME)
    logits_again, _ = run(model, inputs)
    if not torch.equal(logits_again, logits):
        raise RuntimeError("re-activating the adapter did not reproduce the adapter output")

    plain_logits, plain_hidden = run(plain, inputs)
    plain_vs_off = max(
        (plain_logits - logits_off).abs().max().item(),
        (plain_hidden - last_hidden_off).abs().max().item(),
    )
    if plain_vs_off > 1e-5:
        raise RuntimeError(f"deactivated AdapterHub model differs from plain transformers: {plain_vs_off}")

    # Independent re-derivation of the Pfeiffer data flow (see README): patch the
    # plain transformers model's BertOutput.forward and compare to AdapterHub.
    manual_logits, manual_hidden = run_manual_pfeiffer(plain, inputs, named_params, name_map)
    manual_vs_hub = max(
        (manual_logits - logits).abs().max().item(),
        (manual_hidden - last_hidden).abs().max().item(),
    )
    print(f"max |hand-written Pfeiffer flow - AdapterHub|: {manual_vs_hub:.3g}")
    if manual_vs_hub > 1e-5:
        raise RuntimeError(f"hand-written Pfeiffer flow disagrees with AdapterHub: {manual_vs_hub}")

    diff_logits = (logits - logits_off).abs().max().item()
    diff_hidden = (last_hidden - last_hidden_off).abs().max().item()
    print(f"max |adapter - no adapter|: logits {diff_logits:.6g}, last_hidden_state {diff_hidden:.6g}")
    if diff_logits < 1e-3 or diff_hidden < 1e-3:
        raise RuntimeError("adapter barely changes the output; fixture would be trivial")

    # ---- write the fixture ----------------------------------------------------
    tensors: dict[str, torch.Tensor] = {
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs["attention_mask"],
        "token_type_ids": inputs["token_type_ids"],
        "logits": logits,
        "last_hidden_state": last_hidden,
        "logits_no_adapter": logits_off,
        "last_hidden_state_no_adapter": last_hidden_off,
    }
    for k, v in plain_sd.items():
        tensors[f"backbone.{k}"] = v
    for hub, ours in name_map.items():
        tensors[ours] = named_params[hub].detach().clone()
    tensors = {k: v.contiguous() for k, v in tensors.items()}

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    st_path = OUT_DIR / f"{OUT_STEM}.safetensors"
    save_file(tensors, str(st_path), metadata={"generator": "tests/reference/adapterhub_reference.py"})
    os.chmod(st_path, 0o644)

    meta = {
        "description": (
            "AdapterHub `adapters` SeqBn (Pfeiffer) bottleneck adapter on a small random "
            "BertForSequenceClassification; logits and last hidden state with the adapter active "
            "(and, for contrast, inactive)."
        ),
        "command": "bash tests/reference/make_adapterhub_fixture.sh",
        "python_command": f"python {Path(sys.argv[0]).as_posix()}",
        "versions": versions(),
        "bert_config": config.to_dict(),
        "adapter_name": ADAPTER_NAME,
        "adapter_config_class": type(adapter_config).__name__,
        "adapter_config": resolved_dict,
        "bottleneck_size": bottleneck,
        "adapter_init": {
            "seed": ADAPTER_INIT_SEED,
            "distribution": f"normal(0, {ADAPTER_INIT_STD}) via torch.randn(generator) * std",
            "order": "sorted AdapterHub parameter names",
        },
        "model_seed": 0,
        "inputs": {
            "seed": INPUT_SEED,
            "batch": BATCH,
            "length": LENGTH,
            "id_range": [1, config.vocab_size],
            "padding": f"last example: final {N_PAD_LAST} positions have attention_mask 0 and input id {config.pad_token_id}",
            "token_type_ids": "zeros",
        },
        "eval_mode": True,
        "outputs": {
            "logits": "model(...).logits with the adapter active",
            "last_hidden_state": "model(..., output_hidden_states=True).hidden_states[-1] with the adapter active",
            "logits_no_adapter": "same model, set_active_adapters(None)",
            "last_hidden_state_no_adapter": "same model, set_active_adapters(None)",
        },
        "adapter_param_names": {hub: ours for hub, ours in sorted(name_map.items())},
        "adapter_extra_params": extra,
        "adapterhub_state_dict_aliases_not_stored": aliases,
        "backbone_prefix": "backbone.",
        "backbone_keys": sorted(plain_sd),
        "max_abs_diff_adapter_vs_no_adapter": {"logits": diff_logits, "last_hidden_state": diff_hidden},
        "max_abs_diff_no_adapter_vs_plain_transformers": plain_vs_off,
        "max_abs_diff_handwritten_pfeiffer_flow_vs_adapterhub": manual_vs_hub,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "dtype": str(logits.dtype),
    }
    json_path = OUT_DIR / f"{OUT_STEM}.json"
    json_path.write_text(json.dumps(meta, indent=2, sort_keys=False, default=str) + "\n")

    print(f"wrote {st_path.relative_to(REPO_ROOT)} ({st_path.stat().st_size} bytes)")
    print(f"wrote {json_path.relative_to(REPO_ROOT)} ({json_path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
