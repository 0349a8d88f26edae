"""LoRA: a low-rank update ``scaling * B @ A`` added to a frozen attention projection.

A is kaiming-uniform and B zero (PEFT's initialisation), so the update starts
at zero. With ProPETL each target (e.g. query, value) has its own prototype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from ..config import PETLConfig
from ..masks import Mask
from ..prototype import Prototype, PrototypeLayer
from . import ModuleSpec


class LoRALinear(PrototypeLayer):
    def __init__(self, base: nn.Linear, prototype: Prototype, index: int, masks: dict[str, Mask], config: PETLConfig):
        super().__init__(prototype, index, masks)
        self.base = base
        self.scaling = config.lora_alpha / config.lora_r
        self.dropout = nn.Dropout(config.lora_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        return self.base(x) + F.linear(F.linear(self.dropout(x), w["A"]), w["B"]) * self.scaling


def _prototype(config: PETLConfig, model_config: PretrainedConfig, copies: int) -> Prototype:
    hidden = model_config.hidden_size
    return Prototype(
        shapes={"A": (config.lora_r, hidden), "B": (hidden, config.lora_r)},
        inits={"A": lambda t: nn.init.kaiming_uniform_(t, a=math.sqrt(5)), "B": nn.init.zeros_},
        copies=copies,
    )


SPEC = ModuleSpec(
    sites=lambda config, arch: {target: f"{arch.self_attention}.{target}" for target in config.lora_targets},
    prototype=_prototype,
    masked=("A", "B"),
    wrap=LoRALinear,
    score_fan_in=lambda shape: shape[1],  # official LoraSubnet: scores shaped like A and B
)
