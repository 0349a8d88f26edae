"""Bottleneck adapter in the official ProPETL (adapter-transformers 3.1 "pfeiffer") data flow.

One adapter per layer, at the feed-forward output. With ``h`` the feed-forward
output (after its dropout), ``x`` the attention output that the block adds back
and ``LN`` the layer's pretrained output LayerNorm, the official code computes::

    a = LN(h + x)                           # original_ln_before: the adapter reads the normalised sum
    y = LN(up(relu(down(a))) + h + x)       # residual_before_ln: h rejoins, then the original add & norm

so it wraps the whole ``BertOutput`` / ``RobertaOutput`` (LN is applied twice,
with the same frozen weights). Down and up projections start as the official
``init_weights="bert"``: N(0, 0.02) weights, zero biases. An untrained adapter is
therefore *near* the identity, not exactly it, and every mask gets a gradient from
the first step (a zero up-projection would give the masks of ``up`` none and those
of ``down`` none either, since the mask gradient is the upstream gradient times
the weight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from ..config import PETLConfig
from ..masks import Mask
from ..prototype import Prototype, PrototypeLayer
from . import ModuleSpec

BERT_INIT_STD = 0.02


class Adapter(PrototypeLayer):
    def __init__(self, base: nn.Module, prototype: Prototype, index: int, masks: dict[str, Mask], config: PETLConfig):
        super().__init__(prototype, index, masks)
        self.base = base

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        base = self.base
        ffn = base.dropout(base.dense(hidden_states))
        w = self.weights()
        adapter_in = base.LayerNorm(ffn + input_tensor)
        adapted = F.linear(F.relu(F.linear(adapter_in, w["down"], w["down_bias"])), w["up"], w["up_bias"])
        return base.LayerNorm(adapted + ffn + input_tensor)


def _prototype(config: PETLConfig, model_config: PretrainedConfig, copies: int) -> Prototype:
    hidden = model_config.hidden_size
    bottleneck = max(1, hidden // config.reduction_factor)
    bert_init = lambda t: nn.init.normal_(t, std=BERT_INIT_STD)  # noqa: E731
    return Prototype(
        shapes={"down": (bottleneck, hidden), "down_bias": (bottleneck,), "up": (hidden, bottleneck), "up_bias": (hidden,)},
        inits={"down": bert_init, "down_bias": nn.init.zeros_, "up": bert_init, "up_bias": nn.init.zeros_},
        copies=copies,
    )


SPEC = ModuleSpec(
    sites=lambda config, arch: {"ffn": arch.ffn_output},
    prototype=_prototype,
    masked=("down", "up"),
    wrap=Adapter,
    # the official scores are stored transposed ([in, out]) and kaiming-initialised on that shape
    score_fan_in=lambda shape: shape[0],
)
