"""Exactly what a method stores per task: floats at 32 bits, masks at 1 bit per entry.

Conventions (the paper's): the head is always trained and reported apart
(``head_params``); the prefix reparameterisation MLP is counted in its folded
form, since only the generated prefixes are stored; ``storage_pct`` is the
storage in 32-bit-float equivalents as a percentage of the backbone.
"""

from __future__ import annotations

from torch import nn

from .petl_model import backbone_parameters, head_modules, layer_masks, petl_config_of, prototypes


def storage_report(model: nn.Module) -> dict[str, float | int]:
    """Parameter and bit counts of a PETL model (see module docstring for the conventions)."""
    petl_config_of(model)
    backbone = backbone_parameters(model).values()
    stored_float = sum(t.numel() for proto in prototypes(model).values() for t in proto.stored_tensors().values())
    stored_float += sum(p.numel() for p in backbone if p.requires_grad)  # full / bitfit
    mask_entries = sum(mask.numel for mask in layer_masks(model).values())
    backbone_params = sum(p.numel() for p in backbone)
    storage_bits = 32 * stored_float + mask_entries
    return {
        "backbone_params": backbone_params,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "stored_float_params": stored_float,
        "mask_entries": mask_entries,
        "storage_bits": storage_bits,
        "storage_pct": storage_bits / 32 / backbone_params * 100,
        "head_params": sum(p.numel() for head in head_modules(model).values() for p in head.parameters()),
    }
