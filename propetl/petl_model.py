"""Turn a model of any supported family (:mod:`propetl.architectures`) into an Adapter, LoRA, Prefix, ProPETL, BitFit,
fully fine-tuned model, or one of PEFT's methods (:mod:`propetl.peft_methods`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from transformers import PreTrainedModel

from .architectures import family_of, head_paths
from .config import PETLConfig
from .masks import Mask
from .modules import SPECS, ModuleSpec
from . import peft_methods
from .multitask import SWITCH_ATTR, TASK_SEP, TaskHeads, TaskMask, TaskSwitch, make_masks, task_switch
from .prototype import Prototype, PrototypeLayer

PROTOTYPES_ATTR = "petl_prototypes"
TASK_MASKS_ATTR = "petl_task_masks"  # multi-task, combined layouts: the task masks all layers share
PROTOTYPE_REF_ATTR = "petl_prototype_ref"  # a prototype loaded frozen from a file another artifact stores
LAYERS_ATTR = "petl_layers"  # every layer's view of a prototype, by key (referenced: the model tree owns them)


def head_modules(model: PreTrainedModel) -> dict[str, nn.Module]:
    """The task head: always trained, stored with the task, reported apart from PETL storage.

    BERT's pooler was trained for next-sentence prediction, not for the task, so
    it counts as part of the head (RoBERTa's classifier has its own dense layer).
    """
    return {path: model.get_submodule(path) for path in head_paths(model)}


def _learned_mask(spec: ModuleSpec, config: PETLConfig, shape: tuple[int, ...]) -> Mask:
    return Mask(shape, config.sparsity, fan_in=spec.score_fan_in(shape))


def _make_masks(spec: ModuleSpec, prototype: Prototype, config: PETLConfig, layer: int, site: int,
                switch: TaskSwitch | None, shared_task: Mapping[str, Mapping[str, Mask]]) -> dict[str, Mask | TaskMask]:
    if not config.masked:
        return {}
    shapes = {name: prototype.shapes[name] for name in spec.masked}
    if switch is not None:
        return make_masks(switch, config.task_masks, shapes, lambda name, shape: _learned_mask(spec, config, shape), shared_task)
    if config.mask_mode == "learned":
        return {name: _learned_mask(spec, config, shape) for name, shape in shapes.items()}
    # mask_seed None: torch's global RNG, which `propetl train` seeds with the training seed, so every
    # seed of a random-mask ablation draws other masks (as it draws other learned-score inits)
    generator = None if config.mask_seed is None else torch.Generator().manual_seed(config.mask_seed * 1_000_003 + site * 1_009 + layer)
    return {name: Mask.random(shape, config.sparsity, generator) for name, shape in shapes.items()}


def _insert_modules(model: PreTrainedModel, config: PETLConfig, switch: TaskSwitch | None) -> None:
    """One prototype per site; its instances (the site's modules in every layer of every stack) take its copies and masks."""
    spec = SPECS[config.module_kind]
    prototypes, task_masks, layers = nn.ModuleDict(), nn.ModuleDict(), []
    for site_index, (site, targets) in enumerate(spec.sites(config, model).items()):
        prototype = spec.prototype(config, targets[0], 1 if config.shared else len(targets))
        prototypes[site] = prototype
        shared_task = {}
        if switch is not None and config.masked and config.task_masks != "per_layer":
            shared_task = {task: {name: _learned_mask(spec, config, prototype.shapes[name]) for name in spec.masked} for task in switch.tasks}
            task_masks[site] = nn.ModuleDict({task: nn.ModuleDict(masks) for task, masks in shared_task.items()})
        for position, target in enumerate(targets):
            masks = _make_masks(spec, prototype, config, position, site_index, switch, shared_task)
            index = 0 if config.shared else position
            layers.append((position, site_index, f"layer.{position}.{site}", spec.attach(model, target, prototype, index, masks, config)))
    setattr(model, PROTOTYPES_ATTR, prototypes)
    model.__dict__[LAYERS_ATTR] = {key: layer for _, _, key, layer in sorted(layers, key=lambda entry: entry[:2])}
    if len(task_masks):
        setattr(model, TASK_MASKS_ATTR, task_masks)


def apply_petl(model: PreTrainedModel, config: PETLConfig) -> PreTrainedModel:
    """Freeze the backbone, insert the method's modules, and return the model.

    The head (see :func:`head_modules`) stays trainable for every method.
    """
    return _apply(model, config, switch=None)


def apply_multitask_petl(models: Mapping[str, PreTrainedModel], config: PETLConfig) -> PreTrainedModel:
    """One model for several tasks (:mod:`propetl.multitask`): one prototype, masks and a head per task.

    ``models`` maps each task to a classifier for its label space, all of one backbone;
    the first becomes the shared body, each task keeps the head (classifier, and BERT's
    pooler) of its own, so a task's head starts exactly as in its single-task run.
    """
    if len(models) < 2:
        raise ValueError(f"a multi-task model needs at least two tasks, got {list(models)}")
    config.require_learned_masks("one network for several tasks")
    bad = [task for task in models if not task or "." in task or TASK_SEP in task]
    if bad:
        raise ValueError(f"task name {bad[0]!r} cannot name a task in a multi-task model (no '.' or '/')")
    heads = {task: head_modules(m) for task, m in models.items()}
    switch = TaskSwitch({task: (m.config.num_labels, m.config.problem_type) for task, m in models.items()})
    model = _apply(next(iter(models.values())), config, switch)
    for path in heads[switch.tasks[0]]:
        combined = TaskHeads(switch, {task: heads[task][path] for task in switch.tasks})
        combined.requires_grad_(True)
        model.set_submodule(path, combined)
    return model


def _apply(model: PreTrainedModel, config: PETLConfig, switch: TaskSwitch | None) -> PreTrainedModel:
    family_of(model)  # unsupported families fail before any change
    if hasattr(model, PROTOTYPES_ATTR) or getattr(model, "petl_config", None) is not None:
        raise ValueError("apply_petl was already called on this model")
    if switch is not None:
        setattr(model, SWITCH_ATTR, switch)
    model.requires_grad_(config.method == "full")
    if config.method == "bitfit":
        biases = [param for name, param in model.base_model.named_parameters() if name.endswith(".bias")]
        if not biases:
            raise ValueError(f"method 'bitfit' is not supported on model type {model.config.model_type!r}: its backbone has no "
                             "bias parameters to train (BitFit trains only biases)")
        for name, param in model.base_model.named_parameters():
            param.requires_grad_(name.endswith(".bias"))
    if config.module_kind is not None:
        _insert_modules(model, config, switch)
    if config.is_peft:
        peft_methods.inject(model, config)
    for head in head_modules(model).values():
        head.requires_grad_(True)
    model.petl_config = config
    return model


def petl_config_of(model: nn.Module) -> PETLConfig:
    config = getattr(model, "petl_config", None)
    if config is None:
        raise ValueError("this model has no PETL method; call apply_petl first")
    return config


def prototypes(model: nn.Module) -> dict[str, Prototype]:
    """The model's prototypes by site name (empty for full / bitfit)."""
    return dict(getattr(model, PROTOTYPES_ATTR, {}).items())


def prototype_layers(model: nn.Module) -> dict[str, PrototypeLayer]:
    """Every layer's view of a prototype, keyed ``layer.{i}.{site}``: ``i`` numbers the site's modules in network order
    (stacks, layers, position in a layer), so it is the layer index wherever a site has one module per layer."""
    petl_config_of(model)
    return dict(model.__dict__.get(LAYERS_ATTR, {}))


def layer_masks(model: nn.Module) -> dict[str, Mask]:
    """Every learned or fixed mask, keyed ``layer.{i}.{site}.{tensor}``.

    A multi-task model's masks are keyed ``{task}/layer.{i}.{site}.{tensor}`` (per_layer) or
    ``{task}/{site}.{tensor}`` (a task mask of every layer) and ``layer.{i}.{site}.{tensor}``
    (a layer mask of every task): a key without a task is shared by the tasks.
    """
    masks: dict[str, Mask] = {}
    for key, layer in prototype_layers(model).items():
        for name, mask in layer.masks.items():
            if not isinstance(mask, TaskMask):
                masks[f"{key}.{name}"] = mask
                continue
            masks |= {f"{task}{TASK_SEP}{key}.{name}": own for task, own in mask.per_task.items()}
            if mask.layer is not None:
                masks[f"{key}.{name}"] = mask.layer
    for site, tasks in getattr(model, TASK_MASKS_ATTR, {}).items():
        masks |= {f"{task}{TASK_SEP}{site}.{name}": mask for task, named in tasks.items() for name, mask in named.items()}
    return masks


def parameters_of(modules: Iterable[nn.Module]) -> dict[int, nn.Parameter]:
    """Parameters of several modules by identity: a prototype shared by many layers counts once."""
    return {id(p): p for module in modules for p in module.parameters()}


def backbone_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The pretrained encoder's own parameters: everything but the head, prototypes, mask scores and PEFT's layers."""
    excluded = parameters_of([*head_modules(model).values(), *prototypes(model).values(), *layer_masks(model).values()])
    excluded |= peft_methods.added_parameters(model)
    return {name: p for name, p in model.named_parameters() if id(p) not in excluded}


@torch.no_grad()
def merge_masks(model: PreTrainedModel) -> PreTrainedModel:
    """Materialise each layer's masked tensors once (and fold prefix MLPs) for inference.

    After this, a forward pass does no top-k and costs what the dedicated
    baseline's does; outputs are unchanged. Training a merged model is not
    supported (the merged tensors are buffers). A multi-task model merges one task at a time:
    load that task's model (:func:`propetl.load_petl` with ``task=``) and merge it.
    """
    if task_switch(model) is not None:
        raise ValueError("merge_masks on a multi-task model; load one task's model (load_petl(..., task=name)) and merge that")
    for prototype in prototypes(model).values():
        fold = getattr(prototype, "fold", None)
        if fold is not None:
            fold()
    for layer in prototype_layers(model).values():
        layer.merge()
    return model
