"""Where things sit in each backbone family: the one table a new family is added to.

Like PEFT's ``utils/constants.py`` target-module tables, a :class:`Family` names, per layer
stack, the module that plays each *role* in a layer (attention projections, the attention
module itself, the feed-forward block an adapter follows) and the task head. The PETL modules
(:mod:`propetl.modules`) only ever ask for roles, and take every shape from the module they find
(grouped-query key/value widths, T5's inner dimension, GPT-2's transposed ``Conv1D``), never from
``hidden_size``. An encoder-decoder lists two stacks; a site's instances run through the
encoder's layers, then the decoder's, so one prototype serves both stacks.

Adding a family is one :data:`FAMILIES` entry (and a tiny config in
:mod:`propetl.backbones`); ``tests/test_architectures.py`` checks that every entry resolves
on its tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

ROLES = ("query", "key", "value", "attention", "cross_attention", "ffn")
"""query/key/value: attention projections (LoRA); attention / cross_attention: modules whose
keys and values get prefixes; ffn: the feed-forward block an adapter follows."""
ADAPTER_FLOWS = ("pfeiffer", "residual")


@dataclass(frozen=True)
class Projection:
    """A projection inside a layer: its path, and for fused q/k/v which of ``parts`` equal output slices it is."""

    path: str
    part: int | None = None
    parts: int = 1


@dataclass(frozen=True)
class Stack:
    """One list of layers and, per role, the modules that play it in each layer (paths relative to a layer)."""

    layers: str
    """The layer list, relative to ``model.base_model``."""
    query: tuple[Projection, ...]
    key: tuple[Projection, ...]
    value: tuple[Projection, ...]
    attention: tuple[str, ...]
    """Self-attention modules calling transformers' attention interface (prefix-tuning's site)."""
    ffn: str
    """The feed-forward block the adapter follows (``pfeiffer``: the post-LN output block; ``residual``: the MLP)."""
    cross_attention: tuple[str, ...] = ()

    def role(self, name: str) -> tuple:
        return getattr(self, name) if name != "ffn" else (self.ffn,)


@dataclass(frozen=True)
class Family:
    stacks: tuple[Stack, ...]
    heads: tuple[str, ...]
    """Task-head modules, relative to the model (absent ones are skipped: RoBERTa's classifier has no pooler)."""
    lora_targets: tuple[str, ...]
    """LoRA's default targets: PEFT's ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`` for the family."""
    adapter_flow: str
    """``pfeiffer``: post-LN blocks with BERT's ``dense/dropout/LayerNorm(h + x)`` output (official ProPETL data flow);
    ``residual``: pre-LN blocks, the adapter adds its output to the MLP's (``h + up(relu(down(h)))``)."""
    prefix: bool = True
    """Whether its attention goes through transformers' attention interface (DeBERTa's disentangled attention does not)."""


def _qkv(prefix: str, q: str, k: str, v: str) -> dict[str, tuple[Projection, ...]]:
    return {"query": (Projection(f"{prefix}.{q}"),), "key": (Projection(f"{prefix}.{k}"),), "value": (Projection(f"{prefix}.{v}"),)}


_BERT = Family(
    stacks=(Stack("encoder.layer", **_qkv("attention.self", "query", "key", "value"), attention=("attention.self",), ffn="output"),),
    heads=("classifier", "{base}.pooler"), lora_targets=("query", "value"), adapter_flow="pfeiffer",
)
_LLAMA = Family(
    stacks=(Stack("layers", **_qkv("self_attn", "q_proj", "k_proj", "v_proj"), attention=("self_attn",), ffn="mlp"),),
    heads=("score",), lora_targets=("q_proj", "v_proj"), adapter_flow="residual",
)
_T5_ATTENTION = _qkv("layer.0.SelfAttention", "q", "k", "v")
_T5_CROSS = _qkv("layer.1.EncDecAttention", "q", "k", "v")

FAMILIES: dict[str, Family] = {
    "bert": _BERT,
    "roberta": _BERT,
    "deberta-v2": Family(
        stacks=(Stack("encoder.layer", **_qkv("attention.self", "query_proj", "key_proj", "value_proj"), attention=(), ffn="output"),),
        heads=("classifier", "pooler"), lora_targets=("query_proj", "value_proj"), adapter_flow="pfeiffer", prefix=False,
    ),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma3_text": _LLAMA,
    "gpt2": Family(
        stacks=(Stack("h", query=(Projection("attn.c_attn", 0, 3),), key=(Projection("attn.c_attn", 1, 3),),
                      value=(Projection("attn.c_attn", 2, 3),), attention=("attn",), ffn="mlp"),),
        heads=("score",), lora_targets=("c_attn",), adapter_flow="residual",
    ),
    "t5": Family(
        stacks=(
            Stack("encoder.block", **_T5_ATTENTION, attention=("layer.0.SelfAttention",), ffn="layer.1.DenseReluDense"),
            Stack("decoder.block", **{role: _T5_ATTENTION[role] + _T5_CROSS[role] for role in _T5_ATTENTION},
                  attention=("layer.0.SelfAttention",), cross_attention=("layer.1.EncDecAttention",), ffn="layer.2.DenseReluDense"),
        ),
        heads=("classification_head",), lora_targets=("q", "v"), adapter_flow="residual",
    ),
}


@dataclass(frozen=True)
class Target:
    """One module a PETL site acts on: its path from the model, the module, and for a fused projection its slice."""

    path: str
    module: nn.Module
    part: int | None = None
    parts: int = 1
    width: int | None = None
    """An attention module's key width (heads x head size of its keys, grouped-query ones included)."""


def family_of(model: PreTrainedModel) -> Family:
    """The model's family entry; any other architecture fails at once, naming the supported ones."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported architecture {model_type!r} ({type(model).__name__}); supported model types: {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def _stack_layers(model: PreTrainedModel) -> list[tuple[Stack, str, nn.Module]]:
    """Every layer of every stack with its path from the model, encoder before decoder."""
    base = model.base_model
    prefix = "" if base is model else f"{model.base_model_prefix}."
    return [(stack, f"{prefix}{stack.layers}.{i}", layer)
            for stack in family_of(model).stacks for i, layer in enumerate(base.get_submodule(stack.layers))]


def all_layers(model: PreTrainedModel) -> list[nn.Module]:
    """The layers of all stacks, in the order sites number their instances."""
    return [layer for _, _, layer in _stack_layers(model)]


def role_targets(model: PreTrainedModel, role: str) -> list[Target]:
    """Every module that plays ``role``, in network order (stacks, layers, position in a layer)."""
    targets = []
    for stack, path, layer in _stack_layers(model):
        for entry in stack.role(role):
            if isinstance(entry, Projection):
                targets.append(Target(f"{path}.{entry.path}", layer.get_submodule(entry.path), entry.part, entry.parts))
                continue
            width = None
            if role in ("attention", "cross_attention"):
                key = next(p for p in stack.key if p.path.startswith(entry + "."))
                width = projection_shape(Target("", layer.get_submodule(key.path), key.part, key.parts))[1]
            targets.append(Target(f"{path}.{entry}", layer.get_submodule(entry), width=width))
    return targets


def _is_projection(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def named_targets(model: PreTrainedModel, name: str) -> list[Target]:
    """A role's modules, or every linear layer inside the layers whose name is ``name`` (as PEFT's target_modules match)."""
    if name in ("query", "key", "value"):
        return role_targets(model, name)
    return [Target(f"{path}.{sub}", module) for _, path, layer in _stack_layers(model)
            for sub, module in layer.named_modules() if sub.rsplit(".", 1)[-1] == name and _is_projection(module)]


def projection_shape(target: Target) -> tuple[int, int]:
    """``(in_features, out_features)`` of a target, its slice's width for a fused projection."""
    module = target.module
    if isinstance(module, Conv1D):  # GPT-2: weight [in, out]
        fan_in, fan_out = module.weight.shape
    else:
        fan_out, fan_in = module.weight.shape
    return fan_in, fan_out // target.parts


def output_width(module: nn.Module) -> int:
    """Features a block outputs: a LayerNorm's width, else the width of its last linear layer (down_proj, wo, c_proj)."""
    norm = getattr(module, "LayerNorm", None)
    if norm is not None:
        return norm.weight.shape[0]
    last = [m for m in module.modules() if _is_projection(m)][-1]
    return projection_shape(Target("", last))[1]


def head_paths(model: PreTrainedModel) -> list[str]:
    """The task head's module paths that exist in this model."""
    paths = [path.format(base=model.base_model_prefix) for path in family_of(model).heads]
    found = []
    for path in paths:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if module is not None:
            found.append(path)
    return found
