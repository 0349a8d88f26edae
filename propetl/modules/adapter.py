"""Bottleneck adapter: down-projection, ReLU, up-projection, residual.

Pfeiffer placement puts one adapter on each layer's feed-forward output (after
its dropout, before the residual LayerNorm); Houlsby adds a second one on the
attention output. The up-projection starts at zero, so an untrained adapter is
the identity and training starts from the pretrained model's behaviour.
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


class Adapter(PrototypeLayer):
    def __init__(self, base: nn.Module, prototype: Prototype, index: int, masks: dict[str, Mask], config: PETLConfig):
        super().__init__(prototype, index, masks)
        self.base = base

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.base(hidden)
        w = self.weights()
        bottleneck = F.relu(F.linear(hidden, w["down"], w["down_bias"]))
        return hidden + F.linear(bottleneck, w["up"], w["up_bias"])


def _sites(config: PETLConfig) -> dict[str, str]:
    ffn = {"ffn": "output.dropout"}
    return {"attn": "attention.output.dropout", **ffn} if config.adapter_placement == "houlsby" else ffn


def _prototype(config: PETLConfig, model_config: PretrainedConfig, copies: int) -> Prototype:
    hidden = model_config.hidden_size
    bottleneck = max(1, hidden // config.reduction_factor)
    return Prototype(
        shapes={"down": (bottleneck, hidden), "down_bias": (bottleneck,), "up": (hidden, bottleneck), "up_bias": (hidden,)},
        inits={
            "down": lambda t: nn.init.kaiming_uniform_(t, a=math.sqrt(5)),
            "down_bias": nn.init.zeros_,
            "up": nn.init.zeros_,
            "up_bias": nn.init.zeros_,
        },
        copies=copies,
    )


SPEC = ModuleSpec(sites=_sites, prototype=_prototype, masked=("down", "up"), wrap=Adapter)
