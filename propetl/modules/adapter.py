"""Bottleneck adapter after each layer's feed-forward block, in the official data flows.

One flow for every family (:class:`~propetl.architectures.AdapterSite`): the adapter stands in
for the module whose output ``y`` joins the residual stream ``x``, and returns
``y + up(relu(down(norm(y + x))))``; the family's layer then adds ``x`` as it always does.

* Post-LN families (BERT, RoBERTa, DeBERTa-v2), the official ProPETL RoBERTa code
  (adapter-transformers 3.1 "pfeiffer"): ``y`` is the feed-forward output after its dropout, ``norm``
  is the block's own LayerNorm, and the block normalises again after adding ``x``::

      y_out = LN(up(relu(down(LN(y + x)))) + y + x)

* Pre-LN families (T5, and the decoders by the same reading): the official T5 controller
  ("preiffer"): no norm, the adapter reads ``y + x`` and adds its output to ``y``; the layer's
  residual add follows: ``x + y + adapter(x + y)``.

``x`` is read from the call of the site's ``residual`` module by a forward pre-hook, so nothing of a
family's forward is re-implemented. Down and up projections start as the official
``init_weights="bert"``: N(0, 0.02) weights, zero biases. An untrained adapter is therefore *near*
the identity, not exactly it, and every mask gets a gradient from the first step (a zero
up-projection would give the masks of ``up`` none and those of ``down`` none either, since the mask
gradient is the upstream gradient times the weight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from ..architectures import Target, family_of, role_targets
from ..config import PETLConfig
from ..masks import Mask
from ..prototype import Prototype, PrototypeLayer
from . import ModuleSpec, wrap

BERT_INIT_STD = 0.02


class Adapter(PrototypeLayer):
    """Stands where the module producing ``y`` stood; reads the residual stream ``x`` from its layer's call."""

    def __init__(self, base: nn.Module, prototype: Prototype, index: int, masks: dict[str, Mask], residual: nn.Module,
                 residual_arg: int, norm: nn.Module | None):
        super().__init__(prototype, index, masks)
        self.base = base
        self.__dict__["norm"] = norm  # referenced, not owned: the layer owns its norm
        self.residual_arg = residual_arg
        self.residual: torch.Tensor | None = None
        residual.register_forward_pre_hook(self._read_residual, with_kwargs=True)

    def _read_residual(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.residual = [*args, *kwargs.values()][self.residual_arg]

    def forward(self, *args, **kwargs) -> torch.Tensor:
        ffn = self.base(*args, **kwargs)
        residual, self.residual = self.residual, None
        w = self.weights()  # before the stream: the order every committed number was computed in
        stream = ffn + residual
        if self.norm is not None:
            stream = self.norm(stream)
        return ffn + F.linear(F.relu(F.linear(stream, w["down"], w["down_bias"])), w["up"], w["up_bias"])


def _sites(config: PETLConfig, model: PreTrainedModel) -> dict[str, list[Target]]:
    family_of(model)
    return {"ffn": role_targets(model, "ffn")}


def _prototype(config: PETLConfig, target: Target, copies: int) -> Prototype:
    hidden = target.width
    bottleneck = max(1, hidden // config.reduction_factor)
    bert_init = lambda t: nn.init.normal_(t, std=BERT_INIT_STD)  # noqa: E731
    return Prototype(
        shapes={"down": (bottleneck, hidden), "down_bias": (bottleneck,), "up": (hidden, bottleneck), "up_bias": (hidden,)},
        inits={"down": bert_init, "down_bias": nn.init.zeros_, "up": bert_init, "up_bias": nn.init.zeros_},
        copies=copies,
    )


def _attach(model: PreTrainedModel, target: Target, prototype: Prototype, index: int, masks: dict[str, Mask],
            config: PETLConfig) -> PrototypeLayer:
    site, layer = target.site, model.get_submodule(target.layer)
    norm = layer.get_submodule(site.norm) if site.norm else None
    return wrap(model, target, lambda base: Adapter(base, prototype, index, masks, layer.get_submodule(site.residual), site.residual_arg, norm))


SPEC = ModuleSpec(
    sites=_sites,
    prototype=_prototype,
    masked=("down", "up"),
    attach=_attach,
    # the official scores are stored transposed ([in, out]) and kaiming-initialised on that shape
    score_fan_in=lambda shape: shape[0],
)
