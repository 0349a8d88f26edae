"""The three PETL modules, each described by a :class:`ModuleSpec`.

A spec tells :func:`propetl.petl_model.apply_petl` where the module goes in a
layer (its *sites*, named by role in :mod:`propetl.architectures`), what its prototype holds, which of those
tensors get masks, and which ``nn.Module`` wraps the original sub-module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig

from ..architectures import Architecture
from ..config import PETLConfig
from ..masks import Mask
from ..prototype import Prototype, PrototypeLayer


@dataclass(frozen=True)
class ModuleSpec:
    sites: Callable[[PETLConfig, Architecture], dict[str, str]]
    """Site name -> dotted path, relative to one encoder layer, of the sub-module to wrap (from the family's table)."""
    prototype: Callable[[PETLConfig, PretrainedConfig, int], Prototype]
    """Builds the prototype for one site with the given number of copies."""
    masked: tuple[str, ...]
    """Prototype tensors that get a per-layer mask (biases stay shared, unmasked)."""
    wrap: Callable[[nn.Module, Prototype, int, dict[str, Mask], PETLConfig], PrototypeLayer]
    """Wraps the original sub-module at a site for layer ``index``."""
    score_fan_in: Callable[[tuple[int, ...]], int]
    """Fan-in of the official code's score tensor for a masked tensor of this shape (sets the init scale)."""


# Imported last: each module needs ModuleSpec from this package.
from . import adapter, lora, prefix  # noqa: E402

SPECS: dict[str, ModuleSpec] = {"adapter": adapter.SPEC, "lora": lora.SPEC, "prefix": prefix.SPEC}
