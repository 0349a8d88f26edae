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

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

ROLES = ("query", "key", "value", "attention", "cross_attention", "ffn")
"""query/key/value: attention projections (LoRA); attention / cross_attention: modules whose
keys and values get prefixes; ffn: where the adapter stands (:class:`AdapterSite`)."""


@dataclass(frozen=True)
class Projection:
    """A projection inside a layer: its path, and for fused q/k/v which of ``parts`` equal output slices it is."""

    path: str
    part: int | None = None
    parts: int = 1


@dataclass(frozen=True)
class AdapterSite:
    """Where a layer's adapter stands: after the module whose output ``y`` joins the residual stream ``x``.

    The adapter replaces ``after`` (wrapping it) and returns ``y + adapter(norm(y + x))``, reading
    ``x`` from the call of ``residual`` (a forward pre-hook, argument ``residual_arg``): the official
    flows of both halves of the paper. RoBERTa (post-LN): ``y`` is the feed-forward output after its
    dropout, ``norm`` the block's LayerNorm, and the block then adds ``x`` and normalises again
    (Pfeiffer). T5 (pre-LN, the official "preiffer" controller): no norm, the block adds ``x``. Pre-LN
    decoders take the T5 flow, with ``x`` read where their feed-forward norm reads it.
    """

    after: str
    residual: str
    residual_arg: int = 0
    norm: str | None = None


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
    ffn: AdapterSite
    cross_attention: tuple[str, ...] = ()

    def role(self, name: str) -> tuple:
        """The entries playing ``name`` (one of ROLES) in a layer of this stack."""
        if name not in ROLES:
            raise ValueError(f"role {name!r} is not one of {', '.join(ROLES)}")
        return getattr(self, name) if name != "ffn" else (self.ffn,)


@dataclass(frozen=True)
class Family:
    stacks: tuple[Stack, ...]
    heads: tuple[str, ...]
    """Task-head modules, relative to the model (absent ones are skipped: RoBERTa's classifier has no pooler)."""
    lora_targets: tuple[str, ...]
    """LoRA's default targets: PEFT's ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`` for the family."""
    prefix: bool = True
    """Whether its attention goes through transformers' attention interface (DeBERTa's disentangled attention does not)."""
    lm: str | None = None
    """How it generates text: ``seq2seq`` (encoder-decoder), ``causal`` (decoder), None (an encoder: classifiers only)."""


def _qkv(prefix: str, q: str, k: str, v: str) -> dict[str, tuple[Projection, ...]]:
    return {"query": (Projection(f"{prefix}.{q}"),), "key": (Projection(f"{prefix}.{k}"),), "value": (Projection(f"{prefix}.{v}"),)}


_POST_LN = AdapterSite(after="output.dropout", residual="output", residual_arg=1, norm="output.LayerNorm")
_BERT = Family(
    stacks=(Stack("encoder.layer", **_qkv("attention.self", "query", "key", "value"), attention=("attention.self",), ffn=_POST_LN),),
    heads=("classifier", "{base}.pooler"), lora_targets=("query", "value"),
)


def _llama_style(ffn: AdapterSite) -> Family:
    return Family(stacks=(Stack("layers", **_qkv("self_attn", "q_proj", "k_proj", "v_proj"), attention=("self_attn",), ffn=ffn),),
                  heads=("score",), lora_targets=("q_proj", "v_proj"), lm="causal")


_LLAMA = _llama_style(AdapterSite(after="mlp", residual="post_attention_layernorm"))
_T5_ATTENTION = _qkv("layer.0.SelfAttention", "q", "k", "v")
_T5_CROSS = _qkv("layer.1.EncDecAttention", "q", "k", "v")

FAMILIES: dict[str, Family] = {
    "bert": _BERT,
    "roberta": _BERT,
    "deberta-v2": Family(
        stacks=(Stack("encoder.layer", **_qkv("attention.self", "query_proj", "key_proj", "value_proj"), attention=(), ffn=_POST_LN),),
        heads=("classifier", "pooler"), lora_targets=("query_proj", "value_proj"), prefix=False,
    ),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    # Gemma 3 normalises the MLP's output before the residual add: the adapter follows that norm
    "gemma3_text": _llama_style(AdapterSite(after="post_feedforward_layernorm", residual="pre_feedforward_layernorm")),
    "gpt2": Family(
        stacks=(Stack("h", query=(Projection("attn.c_attn", 0, 3),), key=(Projection("attn.c_attn", 1, 3),),
                      value=(Projection("attn.c_attn", 2, 3),), attention=("attn",), ffn=AdapterSite(after="mlp", residual="ln_2")),),
        heads=("score",), lora_targets=("c_attn",), lm="causal",
    ),
    "t5": Family(
        stacks=(
            Stack("encoder.block", **_T5_ATTENTION, attention=("layer.0.SelfAttention",),
                  ffn=AdapterSite(after="layer.1.dropout", residual="layer.1")),
            Stack("decoder.block", **{role: _T5_ATTENTION[role] + _T5_CROSS[role] for role in _T5_ATTENTION},
                  attention=("layer.0.SelfAttention",), cross_attention=("layer.1.EncDecAttention",),
                  ffn=AdapterSite(after="layer.2.dropout", residual="layer.2")),
        ),
        heads=("classification_head",), lora_targets=("q", "v"), lm="seq2seq",
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
    """An attention module's key width (heads x head size of its keys, grouped-query ones included); an adapter's stream width."""
    site: AdapterSite | None = None
    layer: str | None = None
    """An adapter's layer path (its site's other modules are relative to it)."""


def family_of(model: PreTrainedModel) -> Family:
    """The model's family entry; any other architecture fails at once, naming the supported ones."""
    return family_named(getattr(model.config, "model_type", None), f" ({type(model).__name__})")


def family_named(model_type: str | None, what: str = "") -> Family:
    """The family entry of a model type (known before any weights load); others fail naming the supported ones."""
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported architecture {model_type!r}{what}; supported model types: {', '.join(FAMILIES)}")
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
            if isinstance(entry, AdapterSite):
                targets.append(Target(f"{path}.{entry.after}", layer.get_submodule(entry.after), site=entry, layer=path,
                                      width=output_width(layer.get_submodule(entry.residual))))
                continue
            width = None
            if role in ("attention", "cross_attention"):
                key = next(p for p in stack.key if p.path.startswith(entry + "."))
                width = projection_shape(layer.get_submodule(key.path), key.parts)[1]
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


def projection_shape(module: nn.Module, parts: int = 1) -> tuple[int, int]:
    """``(in_features, out_features)`` of a projection, one slice's width where it fuses ``parts`` (GPT-2's q, k, v)."""
    if isinstance(module, Conv1D):  # GPT-2: weight [in, out]
        fan_in, fan_out = module.weight.shape
    else:
        fan_out, fan_in = module.weight.shape
    return fan_in, fan_out // parts


def output_width(module: nn.Module) -> int:
    """Features a block outputs: a norm's width (its own or its ``LayerNorm``'s), else its last linear layer's (wo, c_proj)."""
    norm = getattr(module, "LayerNorm", module)
    weight = getattr(norm, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 1:
        return weight.shape[0]
    last = [m for m in module.modules() if _is_projection(m)][-1]
    return projection_shape(last)[1]


def head_paths(model: PreTrainedModel) -> list[str]:
    """The task head's module paths that exist in this model."""
    found = []
    for path in (path.format(base=model.base_model_prefix) for path in family_of(model).heads):
        try:
            model.get_submodule(path)  # raises for a missing one (RoBERTa's pooler is None: not a module)
        except AttributeError:
            continue
        found.append(path)
    return found
