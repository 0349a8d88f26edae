"""Bottleneck adapter after each layer's feed-forward block, in the family's data flow.

``pfeiffer`` (post-LN families: BERT, RoBERTa, DeBERTa-v2), the official ProPETL
(adapter-transformers 3.1 "pfeiffer") flow. With ``h`` the feed-forward output after its
dropout, ``x`` the attention output the block adds back and ``LN`` the block's pretrained
LayerNorm, the official code computes::

    a = LN(h + x)                           # original_ln_before: the adapter reads the normalised sum
    y = LN(up(relu(down(a))) + h + x)       # residual_before_ln: h rejoins, then the original add & norm

The block itself computes ``LN(dropout(dense(.)) + x)``; the adapter stands in for its dropout
(so the block adds ``h + adapter`` to ``x`` and normalises, as above) and reads ``x`` from the
block's call through a forward pre-hook: nothing of the block's forward is re-implemented.

``residual`` (pre-LN families: Llama-style, GPT-2, T5): the adapter wraps the MLP and adds
its output to the MLP's, ``h + up(relu(down(h)))``, the flow of the official T5 code
(``propetl-t5`` adapters after ``DenseReluDense``) and of sequential bottleneck adapters.

Down and up projections start as the official ``init_weights="bert"``: N(0, 0.02) weights,
zero biases. An untrained adapter is therefore *near* the identity, not exactly it, and every
mask gets a gradient from the first step (a zero up-projection would give the masks of ``up``
none and those of ``down`` none either, since the mask gradient is the upstream gradient times
the weight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from ..architectures import Target, family_of, output_width, role_targets
from ..config import PETLConfig
from ..masks import Mask
from ..prototype import Prototype, PrototypeLayer
from . import ModuleSpec, wrap

BERT_INIT_STD = 0.02


class Adapter(PrototypeLayer):
    """``up(relu(down(.)))`` of this layer's masked view of the prototype."""

    def adapt(self, hidden: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        return F.linear(F.relu(F.linear(hidden, w["down"], w["down_bias"])), w["up"], w["up_bias"])


class PfeifferAdapter(Adapter):
    """Stands where a post-LN output block's dropout stood; the block's LayerNorm and residual input ``x`` come from it."""

    def __init__(self, block: nn.Module, prototype: Prototype, index: int, masks: dict[str, Mask]):
        super().__init__(prototype, index, masks)
        self.base = block.dropout
        self.__dict__["block"] = block  # referenced, not owned: the block owns this module
        self.residual: torch.Tensor | None = None
        block.register_forward_pre_hook(self._read_residual, with_kwargs=True)

    def _read_residual(self, block: nn.Module, args: tuple, kwargs: dict) -> None:
        self.residual = args[1] if len(args) > 1 else kwargs["input_tensor"]  # forward(hidden_states, input_tensor)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        ffn = self.base(hidden)
        residual, self.residual = self.residual, None
        return ffn + self.adapt(self.block.LayerNorm(ffn + residual))


class ResidualAdapter(Adapter):
    """Wraps a pre-LN block's MLP: ``h + adapter(h)``."""

    def __init__(self, base: nn.Module, prototype: Prototype, index: int, masks: dict[str, Mask]):
        super().__init__(prototype, index, masks)
        self.base = base

    def forward(self, *args, **kwargs) -> torch.Tensor:
        hidden = self.base(*args, **kwargs)
        return hidden + self.adapt(hidden)


def _sites(config: PETLConfig, model: PreTrainedModel) -> dict[str, list[Target]]:
    family_of(model)
    return {"ffn": role_targets(model, "ffn")}


def _prototype(config: PETLConfig, target: Target, copies: int) -> Prototype:
    hidden = output_width(target.module)
    bottleneck = max(1, hidden // config.reduction_factor)
    bert_init = lambda t: nn.init.normal_(t, std=BERT_INIT_STD)  # noqa: E731
    return Prototype(
        shapes={"down": (bottleneck, hidden), "down_bias": (bottleneck,), "up": (hidden, bottleneck), "up_bias": (hidden,)},
        inits={"down": bert_init, "down_bias": nn.init.zeros_, "up": bert_init, "up_bias": nn.init.zeros_},
        copies=copies,
    )


def _attach(model: PreTrainedModel, target: Target, prototype: Prototype, index: int, masks: dict[str, Mask],
            config: PETLConfig) -> PrototypeLayer:
    if family_of(model).adapter_flow == "pfeiffer":
        block = model.get_submodule(target.path)
        block.dropout = PfeifferAdapter(block, prototype, index, masks)
        return block.dropout
    return wrap(model, target, lambda base: ResidualAdapter(base, prototype, index, masks))


SPEC = ModuleSpec(
    sites=_sites,
    prototype=_prototype,
    masked=("down", "up"),
    attach=_attach,
    # the official scores are stored transposed ([in, out]) and kaiming-initialised on that shape
    score_fan_in=lambda shape: shape[0],
)
