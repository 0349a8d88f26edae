"""The optimiser: AdamW over parameter groups for PETL parameters, mask scores and head, each with its own
learning rate and weight decay (the official trainer.py's grouping)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch

from .config import TrainConfig
from .petl_model import head_modules, layer_masks, parameters_of

FUSED_DEVICES = ("cpu", "cuda")  # where torch.optim.AdamW has a fused kernel on every torch this project supports


def parameter_groups(model: torch.nn.Module, cfg: TrainConfig, decay_names: Collection[str]) -> list[dict[str, Any]]:
    """PETL parameters, mask scores and head, each with its own learning rate and weight decay.

    As in the official trainer.py (and the Trainer's default), biases and LayerNorm
    weights never decay: each group is split by ``decay_names``
    (``Trainer.get_decay_parameter_names``). Mask scores decay with ``mask_weight_decay``.
    """
    scores, head = parameters_of(layer_masks(model).values()), parameters_of(head_modules(model).values())
    decay_names = set(decay_names)
    decayed = {id(p) for name, p in model.named_parameters() if name in decay_names}
    petl = [p for p in model.parameters() if p.requires_grad and id(p) not in scores and id(p) not in head]
    groups = []
    for name, params, lr, weight_decay in (
        ("petl", petl, cfg.lr, cfg.weight_decay),
        ("mask_scores", list(scores.values()), cfg.mask_lr, cfg.mask_weight_decay),
        ("head", list(head.values()), cfg.head_lr, cfg.weight_decay),
    ):
        groups.append({"name": name, "params": [p for p in params if id(p) in decayed], "lr": lr, "weight_decay": weight_decay})
        groups.append({"name": f"{name}/no_decay", "params": [p for p in params if id(p) not in decayed], "lr": lr, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def adamw(groups: list[dict[str, Any]]) -> torch.optim.AdamW:
    """AdamW (torch's defaults: betas 0.9 / 0.999, eps 1e-8, as the Trainer's) as one fused kernel per
    parameter where the device has one: the Trainer's own default (``adamw_torch_fused``). On CPU torch
    otherwise runs AdamW as a loop of about ten tensor ops per parameter, each a pass over memory: half
    of a MiniLM full fine-tuning step on the 2-core Intel Xeon (0.42 s, fused 0.22 s, side by side on
    2026-12-02; in ``results/README.md``'s step-time table full went from 2.03x to 1.25x the adapter).
    The update is the same; its rounding differs from the loop's in the last bit."""
    params = [p for group in groups for p in group["params"]]
    fused = bool(params) and all(p.device.type in FUSED_DEVICES for p in params)
    return torch.optim.AdamW(groups, fused=fused or None)
