"""Exactly what a method stores per task: floats at 32 bits, masks at 1 bit per entry.

Conventions (the paper's): the head is always trained and reported apart
(``head_params``); the prefix reparameterisation MLP is counted in its folded
form, since only the generated prefixes are stored; ``storage_pct`` is the
storage in 32-bit-float equivalents as a percentage of the backbone.

``mask_bits_coded`` is what the masks take on disk in the artifact's coding (1 bit per entry,
or less where a Golomb-Rice code is smaller: :mod:`propetl.mask_coding`), ``storage_pct_coded`` the
storage with it; both None for a model without data (meta tensors).

Storage as a function of the number of tasks N is ``shared_bits + N * task_bits``:
``task_bits`` is what one more task costs, head included (32 bits per head parameter), and
``shared_bits`` what the tasks share. A dedicated method or a single-task ProPETL run shares
nothing (``shared_bits`` 0); a run on a frozen prototype (``propetl train --prototype``) shares
the prototype, stored once elsewhere; a multi-task model (:mod:`propetl.multitask`) shares the
prototype and, in the combined mask layouts, the layer masks, and reports ``shared`` and
``per_task`` (``task_bits`` is then the tasks' mean).

``storage_min_bits`` is the least a task needs (what tables and figures plot): masks in their coding, and
for PEFT's methods (:mod:`propetl.peft_methods`) nothing that regenerates from a seed and VB-LoRA's top-k
only; ``peft`` gives those methods' counts three ways, with the bytes of PEFT's own files.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import peft_methods
from .mask_coding import coded_bits
from .multitask import TaskHeads, split_key, tasks_of
from .petl_model import PROTOTYPE_REF_ATTR, backbone_parameters, head_modules, layer_masks, petl_config_of, prototypes


def storage_report(model: nn.Module) -> dict[str, Any]:
    """Parameter and bit counts of a PETL model (see module docstring for the conventions)."""
    config = petl_config_of(model)
    backbone = backbone_parameters(model).values()
    stored_float = sum(t.numel() for proto in prototypes(model).values() for t in proto.stored_tensors().values())
    stored_float += sum(p.numel() for p in backbone if p.requires_grad)  # full / bitfit
    stored_float += sum(p.numel() for p in peft_methods.added_parameters(model).values())  # PEFT's methods: what they train
    mask_entries = sum(mask.numel for mask in layer_masks(model).values())
    backbone_params = sum(p.numel() for p in backbone)
    storage_bits = 32 * stored_float + mask_entries
    masks = layer_masks(model).values()
    meta = any(t.is_meta for mask in masks for t in (*mask.parameters(), *mask.buffers()))
    coded = None if meta else sum(coded_bits(mask.bits()) for mask in masks)
    report: dict[str, Any] = {
        "backbone_params": backbone_params,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "stored_float_params": stored_float,
        "mask_entries": mask_entries,
        "storage_bits": storage_bits,
        "storage_pct": storage_bits / 32 / backbone_params * 100,
        "mask_bits_coded": coded,
        "storage_pct_coded": None if coded is None else (32 * stored_float + coded) / 32 / backbone_params * 100,
        "head_params": sum(p.numel() for head in head_modules(model).values() for p in head.parameters()),
    }
    # the minimum a task needs: masks in their coding; for PEFT's methods without what regenerates from a seed
    minimum = storage_bits if coded is None else 32 * stored_float + coded
    if config.is_peft:
        report["peft"] = peft_methods.storage(model)
        minimum = report["peft"]["min_bits"]
    report["storage_min_bits"] = minimum
    report["storage_min_pct"] = minimum / 32 / backbone_params * 100
    if tasks_of(model):
        report |= _task_parts(model, stored_float, backbone_params)
        report["shared_bits"] = report["shared"]["storage_bits"]
        report["task_bits"] = sum(t["task_bits"] for t in report["per_task"].values()) / len(report["per_task"])
    else:
        shared = 32 * stored_float if hasattr(model, PROTOTYPE_REF_ATTR) else 0
        report["shared_bits"] = shared
        report["task_bits"] = storage_bits - shared + 32 * report["head_params"]
    return report


def _task_parts(model: nn.Module, stored_float: int, backbone_params: int) -> dict[str, Any]:
    entries: dict[str | None, int] = {}
    for key, mask in layer_masks(model).items():
        task = split_key(key)[0]
        entries[task] = entries.get(task, 0) + mask.numel
    shared_bits = 32 * stored_float + entries.get(None, 0)
    per_task = {}
    for task in tasks_of(model):
        head = sum(p.numel() for h in head_modules(model).values() for p in (h.heads[task] if isinstance(h, TaskHeads) else h).parameters())
        bits = entries.get(task, 0) + 32 * head
        per_task[task] = {"mask_entries": entries.get(task, 0), "head_params": head, "task_bits": bits,
                          "task_pct": bits / 32 / backbone_params * 100}
    return {"shared": {"stored_float_params": stored_float, "mask_entries": entries.get(None, 0), "storage_bits": shared_bits},
            "per_task": per_task}
