"""The three PETL modules, each described by a :class:`ModuleSpec`.

A spec tells :func:`propetl.petl_model.apply_petl` where the module goes (its *sites*, each a
list of :class:`~propetl.architectures.Target` modules found by role or name through
:mod:`propetl.architectures`), what its prototype holds (shapes read off a site's first target),
which of those tensors get masks, and how one layer's view is attached to the model: wrapping
the target (a ``base`` module, as PEFT wraps its ``base_layer``), or hooking into it. No module
re-implements a family's forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel

from ..architectures import Target
from ..config import PETLConfig
from ..masks import Mask
from ..prototype import Prototype, PrototypeLayer


@dataclass(frozen=True)
class ModuleSpec:
    sites: Callable[[PETLConfig, PreTrainedModel], dict[str, list[Target]]]
    """Site name -> the modules it acts on, in network order (one prototype per site; raises for an unsupported model)."""
    prototype: Callable[[PETLConfig, Target, int], Prototype]
    """Builds a site's prototype, shaped from its first target, with the given number of copies."""
    masked: tuple[str, ...]
    """Prototype tensors that get a per-layer mask (biases stay shared, unmasked)."""
    attach: Callable[[PreTrainedModel, Target, Prototype, int, dict[str, Mask], PETLConfig], PrototypeLayer]
    """Puts copy ``index`` of the prototype, with its masks, on one target; returns that layer's view."""
    score_fan_in: Callable[[tuple[int, ...]], int]
    """Fan-in of the official code's score tensor for a masked tensor of this shape (sets the init scale)."""


def wrap(model: PreTrainedModel, target: Target, make: Callable[[nn.Module], PrototypeLayer]) -> PrototypeLayer:
    """Replace the module at ``target.path`` (as it is now: another site may have wrapped it already) by ``make(it)``."""
    layer = make(model.get_submodule(target.path))
    model.set_submodule(target.path, layer)
    return layer


# Imported last: each module needs ModuleSpec from this package.
from . import adapter, lora, prefix  # noqa: E402

SPECS: dict[str, ModuleSpec] = {"adapter": adapter.SPEC, "lora": lora.SPEC, "prefix": prefix.SPEC}
