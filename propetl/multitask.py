"""One network, many tasks: one prototype for every layer and task, masks and a head per task.

The encoder is shared by the tasks, so which task a forward pass computes is state: a
:class:`TaskSwitch` held by the model, read by every layer's :class:`TaskMask` and by the
:class:`TaskHeads` that stand where the classifier (and BERT's pooler) stood.
:func:`set_task` turns it; the trainer does so for every batch, and every batch comes from
one task, so the scores of the other tasks get no gradient and AdamW leaves them untouched.

Mask layouts (``PETLConfig.task_masks``), after the official multi-task code
(ChaosCodes/ProPETL ``propetl-t5/adapters/adapter_controller.py``, ``modeling_t5.py``):

* ``per_layer``: each (task, layer) owns a mask;
* ``task_or_layer``: a task mask shared by all layers OR a task-independent mask per layer
  (the official GLUE setting, ``mask_extreme_mode`` with ``or``), written ``1 - (1-t)(1-l)``
  as there, so that each side gets a straight-through gradient; ``task_and_layer``: ``t * l``.
  Each side keeps ``1 - sparsity`` of its entries, so an OR mask keeps more than either.
  The official code builds its layer mask on the last task's score tensor (one Parameter
  for two masks); here the layer mask has its own scores.

Stored masks (:func:`propetl.petl_model.layer_masks`) are keyed ``{task}/...`` for a task's
own and without a task for the shared ones, so an artifact stores the shared part once.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers import PreTrainedModel

from .masks import Mask

SWITCH_ATTR = "petl_task_switch"
TASK_SEP = "/"


class TaskSwitch:
    """The task a multi-task model computes now, and each task's label space (num_labels, problem_type)."""

    def __init__(self, label_spaces: Mapping[str, tuple[int, str]]):
        self.label_spaces = dict(label_spaces)
        self.tasks = tuple(self.label_spaces)
        self.task = self.tasks[0]


class TaskMask(nn.Module):
    """One layer's mask of one prototype tensor for the active task (a :class:`~propetl.masks.Mask` in use).

    ``per_task`` masks are this layer's own (registered here); ``shared_task`` masks are used
    by every layer and registered once on the model, so they are only referenced here.
    """

    def __init__(self, switch: TaskSwitch, layout: str, per_task: Mapping[str, Mask] | None = None,
                 shared_task: Mapping[str, Mask] | None = None, layer: Mask | None = None):
        super().__init__()
        self.switch, self.layout = switch, layout
        self.per_task = nn.ModuleDict(per_task or {})
        self.__dict__["shared_task"] = dict(shared_task or {})
        self.layer = layer

    def task_mask(self, task: str) -> Mask:
        return self.per_task[task] if task in self.per_task else self.shared_task[task]

    def mask_for(self, task: str) -> torch.Tensor:
        mask = self.task_mask(task)()
        if self.layout == "per_layer":
            return mask
        layer = self.layer()
        return 1 - (1 - mask) * (1 - layer) if self.layout == "task_or_layer" else mask * layer

    def forward(self) -> torch.Tensor:
        return self.mask_for(self.switch.task)


class TaskHeads(nn.Module):
    """Stands where a head module stood and runs the active task's own head."""

    def __init__(self, switch: TaskSwitch, heads: Mapping[str, nn.Module]):
        super().__init__()
        self.switch = switch
        self.heads = nn.ModuleDict(heads)

    def forward(self, *args, **kwargs):
        return self.heads[self.switch.task](*args, **kwargs)


def task_switch(model: nn.Module) -> TaskSwitch | None:
    """The model's task switch; None for a single-task model."""
    return getattr(model, SWITCH_ATTR, None)


def tasks_of(model: nn.Module) -> tuple[str, ...]:
    """The tasks a model computes (empty for a single-task model)."""
    switch = task_switch(model)
    return switch.tasks if switch else ()


def set_task(model: PreTrainedModel, task: str) -> None:
    """Make ``model`` compute ``task``: its masks, its head, and its loss (label count and problem type)."""
    switch = task_switch(model)
    if switch is None:
        raise ValueError("set_task on a single-task model")
    if task not in switch.label_spaces:
        raise ValueError(f"task {task!r} is not one of this model's tasks: {', '.join(switch.tasks)}")
    switch.task = task
    model.num_labels, model.config.problem_type = switch.label_spaces[task]


def make_masks(switch: TaskSwitch, layout: str, shapes: Mapping[str, tuple[int, ...]], new_mask,
               shared_task: Mapping[str, Mapping[str, Mask]]) -> dict[str, TaskMask]:
    """One layer's TaskMasks: per tensor, a mask per task (per_layer) or a layer mask combined with the shared task masks.

    ``new_mask(name, shape)`` makes one learned mask; ``shared_task[task][name]`` are the
    task masks every layer shares (used by the combined layouts).
    """
    if layout == "per_layer":
        return {name: TaskMask(switch, layout, per_task={t: new_mask(name, shape) for t in switch.tasks})
                for name, shape in shapes.items()}
    return {name: TaskMask(switch, layout, shared_task={t: shared_task[t][name] for t in switch.tasks}, layer=new_mask(name, shape))
            for name, shape in shapes.items()}


def split_key(key: str) -> tuple[str | None, str]:
    """``task/layer.0.ffn.down`` -> (task, rest); a shared key -> (None, key)."""
    task, sep, rest = key.partition(TASK_SEP)
    return (task, rest) if sep else (None, key)
