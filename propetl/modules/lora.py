"""LoRA: a low-rank update ``scaling * B @ A`` added to a frozen projection.

A is kaiming-uniform and B zero (PEFT's initialisation), so the update starts at zero.
Targets are roles (``query``, ``key``, ``value``) or module names, as PEFT's
``target_modules``; the default is the family's entry of PEFT's table, so our LoRA and
PEFT's adapt the same modules. With ProPETL each target has its own prototype, shared by
every layer of every stack. A role that is one slice of a fused projection (GPT-2's
``c_attn``) adds its update to that slice of the output only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from ..architectures import Target, family_of, named_targets, projection_shape
from ..config import PETLConfig
from ..masks import Mask
from ..prototype import Prototype, PrototypeLayer
from . import ModuleSpec, wrap


class LoRALinear(PrototypeLayer):
    def __init__(self, base: nn.Module, prototype: Prototype, index: int, masks: dict[str, Mask], config: PETLConfig,
                 target: Target):
        super().__init__(prototype, index, masks)
        self.base = base
        self.scaling = config.lora_alpha / config.lora_r
        self.dropout = nn.Dropout(config.lora_dropout)
        self.part, self.parts = target.part, target.parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # base first, then the update: on CPU bf16 the order of the matmuls changes the last bits (allocation), and
        # this order is the one every committed number was trained with
        w = self.weights()
        out = self.base(x)
        update = F.linear(F.linear(self.dropout(x), w["A"]), w["B"]) * self.scaling
        if self.part is None:
            return out + update
        width = update.shape[-1]
        return out + F.pad(update, (self.part * width, (self.parts - 1 - self.part) * width))


def lora_targets(config: PETLConfig, model: PreTrainedModel) -> list[str]:
    """The configured targets, or the family's default (PEFT's table)."""
    return list(config.lora_targets) if config.lora_targets else list(family_of(model).lora_targets)


def _sites(config: PETLConfig, model: PreTrainedModel) -> dict[str, list[Target]]:
    sites = {}
    for name in lora_targets(config, model):
        targets = named_targets(model, name)
        if not targets:
            raise ValueError(f"lora target {name!r} matches no linear layer of {model.config.model_type}; "
                             f"give a role (query, key, value) or a module name such as {', '.join(family_of(model).lora_targets)}")
        shapes = {projection_shape(t.module, t.parts) for t in targets}
        if len(shapes) > 1:
            raise ValueError(f"lora target {name!r} matches layers of different shapes {sorted(shapes)} in {model.config.model_type}; "
                             "one prototype needs one shape: name the modules more precisely")
        sites[name] = targets
    return sites


def _prototype(config: PETLConfig, target: Target, copies: int) -> Prototype:
    fan_in, fan_out = projection_shape(target.module, target.parts)
    return Prototype(
        shapes={"A": (config.lora_r, fan_in), "B": (fan_out, config.lora_r)},
        inits={"A": lambda t: nn.init.kaiming_uniform_(t, a=math.sqrt(5)), "B": nn.init.zeros_},
        copies=copies,
    )


def _attach(model: PreTrainedModel, target: Target, prototype: Prototype, index: int, masks: dict[str, Mask],
            config: PETLConfig) -> PrototypeLayer:
    return wrap(model, target, lambda base: LoRALinear(base, prototype, index, masks, config, target))


SPEC = ModuleSpec(
    sites=_sites,
    prototype=_prototype,
    masked=("A", "B"),
    attach=_attach,
    score_fan_in=lambda shape: shape[1],  # official LoraSubnet: scores shaped like A and B
)
