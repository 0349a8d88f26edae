"""Turn a BERT/RoBERTa sequence classifier into an Adapter, LoRA, Prefix, ProPETL, BitFit or fully fine-tuned model."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import PreTrainedModel

from .architectures import architecture_of, encoder_layers
from .config import PETLConfig
from .masks import Mask
from .modules import SPECS, ModuleSpec
from .prototype import Prototype, PrototypeLayer

PROTOTYPES_ATTR = "petl_prototypes"


def head_modules(model: PreTrainedModel) -> dict[str, nn.Module]:
    """The task head: always trained, stored with the task, reported apart from PETL storage.

    BERT's pooler was trained for next-sentence prediction, not for the task, so
    it counts as part of the head (RoBERTa's classifier has its own dense layer).
    """
    arch = architecture_of(model)
    heads = {arch.classifier: model.get_submodule(arch.classifier)}
    pooler = getattr(model.base_model, arch.pooler, None) if arch.pooler else None
    if pooler is not None:
        heads[f"{model.base_model_prefix}.{arch.pooler}"] = pooler
    return heads


def _make_masks(spec: ModuleSpec, prototype: Prototype, config: PETLConfig, layer: int, site: int) -> dict[str, Mask]:
    if not config.masked:
        return {}
    shapes = {name: prototype.shapes[name] for name in spec.masked}
    if config.mask_mode == "learned":
        return {name: Mask(shape, config.sparsity, fan_in=spec.score_fan_in(shape)) for name, shape in shapes.items()}
    # mask_seed None: torch's global RNG, which `propetl train` seeds with the training seed, so every
    # seed of a random-mask ablation draws other masks (as it draws other learned-score inits)
    generator = None if config.mask_seed is None else torch.Generator().manual_seed(config.mask_seed * 1_000_003 + site * 1_009 + layer)
    return {name: Mask.random(shape, config.sparsity, generator) for name, shape in shapes.items()}


def _insert_modules(model: PreTrainedModel, config: PETLConfig) -> None:
    spec = SPECS[config.module_kind]
    layers = encoder_layers(model)
    copies = 1 if config.shared else len(layers)
    prototypes = nn.ModuleDict()
    for site_index, (site, path) in enumerate(spec.sites(config, architecture_of(model)).items()):
        prototype = spec.prototype(config, model.config, copies)
        prototypes[site] = prototype
        parent_path, _, attr = path.rpartition(".")
        for layer_index, layer in enumerate(layers):
            parent = layer.get_submodule(parent_path)
            masks = _make_masks(spec, prototype, config, layer_index, site_index)
            index = 0 if config.shared else layer_index
            setattr(parent, attr, spec.wrap(getattr(parent, attr), prototype, index, masks, config))
    setattr(model, PROTOTYPES_ATTR, prototypes)


def apply_petl(model: PreTrainedModel, config: PETLConfig) -> PreTrainedModel:
    """Freeze the backbone, insert the method's modules, and return the model.

    The head (see :func:`head_modules`) stays trainable for every method.
    """
    architecture_of(model)  # unsupported families fail before any change
    if hasattr(model, PROTOTYPES_ATTR) or getattr(model, "petl_config", None) is not None:
        raise ValueError("apply_petl was already called on this model")
    model.requires_grad_(config.method == "full")
    if config.method == "bitfit":
        for name, param in model.base_model.named_parameters():
            param.requires_grad_(name.endswith(".bias"))
    if config.module_kind is not None:
        _insert_modules(model, config)
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
    """Every layer's view of a prototype, keyed ``layer.{i}.{site}``."""
    config = petl_config_of(model)
    if config.module_kind is None:
        return {}
    sites = SPECS[config.module_kind].sites(config, architecture_of(model))
    return {
        f"layer.{index}.{site}": layer.get_submodule(path)
        for index, layer in enumerate(encoder_layers(model))
        for site, path in sites.items()
    }


def layer_masks(model: nn.Module) -> dict[str, Mask]:
    """Every mask, keyed ``layer.{i}.{site}.{tensor}``."""
    return {f"{key}.{name}": mask for key, layer in prototype_layers(model).items() for name, mask in layer.masks.items()}


def parameters_of(modules: Iterable[nn.Module]) -> dict[int, nn.Parameter]:
    """Parameters of several modules by identity: a prototype shared by many layers counts once."""
    return {id(p): p for module in modules for p in module.parameters()}


def backbone_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The pretrained encoder's own parameters: everything but the head, prototypes and mask scores."""
    excluded = parameters_of([*head_modules(model).values(), *prototypes(model).values(), *layer_masks(model).values()])
    return {name: p for name, p in model.named_parameters() if id(p) not in excluded}


@torch.no_grad()
def merge_masks(model: PreTrainedModel) -> PreTrainedModel:
    """Materialise each layer's masked tensors once (and fold prefix MLPs) for inference.

    After this, a forward pass does no top-k and costs what the dedicated
    baseline's does; outputs are unchanged. Training a merged model is not
    supported (the merged tensors are buffers).
    """
    for prototype in prototypes(model).values():
        fold = getattr(prototype, "fold", None)
        if fold is not None:
            fold()
    for layer in prototype_layers(model).values():
        layer.merge()
    return model
