"""The competitors through PEFT's own code: VeRA, VB-LoRA, FourierFT, (IA)³, DoRA, PEFT's LoRA and any other PEFT type.

Nothing of them is re-implemented here. PEFT builds their layers into our model (``get_peft_model`` mutates the
model in place and wraps it; we keep training the model itself, so our heads, Trainer, checkpoints, resume,
tables and figures serve these methods as they serve ours), writes their files (``save_pretrained``, inside our
artifact under ``peft/``) and reads them back (``load_peft_weights`` + ``set_peft_model_state_dict``).

What this module adds is what a benchmark needs around them:

* one-line errors for an unknown PEFT type or argument, raised before any model loads (:func:`check`);
* the targets: ``peft-lora`` and ``dora`` adapt exactly the modules our ``lora`` adapts (its roles resolved to
  module names); the other types take PEFT's own table for the model type unless ``peft_args`` names targets;
  VB-LoRA's ``vector_length`` defaults to the largest divisor of 256 that divides every adapted width;
* storage three ways (:func:`storage`): the paper's convention (every trained float at 32 bits), the minimum a
  task needs (VeRA's projections and FourierFT's positions regenerate from a seed; VB-LoRA keeps only its top-k
  indices and weights) and the bytes of PEFT's own files on disk, both ways where PEFT offers a choice.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from .architectures import family_of, named_targets, projection_shape
from .config import REGISTRY, PETLConfig

WRAPPER_ATTR = "petl_peft_wrapper"  # the PeftModel around the model (in __dict__: not a submodule, no cycle)
ADDED_ATTR = "petl_peft_added"  # the parameters PEFT added, by identity
PEFT_DIR = "peft"  # PEFT's save_pretrained output inside an artifact
PEFT_FILES = ("adapter_model.safetensors", "adapter_config.json")  # what PEFT needs to load an adapter
LORA_TYPES = ("LORA",)
VB_LORA_WIDTH = 256  # PEFT's default vector_length (VB-LoRA paper)


def _config_classes() -> dict[str, type]:
    """PEFT's config class per type, left out: prompt learning and adaption prompts (they wrap the forward, not
    layers: our prefix is the prefix-tuning of this benchmark) and X-LoRA (a mixture of trained adapters)."""
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.config import PromptLearningConfig

    return {kind.value: cls for kind, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()
            if not issubclass(cls, PromptLearningConfig) and kind.value not in ("ADAPTION_PROMPT", "XLORA")}


def peft_type(config: PETLConfig) -> str:
    """The PEFT config type a run uses (method ``peft``: its ``peft_type``, upper-cased as PEFT spells it)."""
    return (config.peft_type or REGISTRY[config.method].peft[0]).upper()


def _arguments(config: PETLConfig) -> tuple[type, dict[str, Any]]:
    """PEFT's config class and the arguments a run gives it, checked against the class's fields."""
    classes = _config_classes()
    kind = peft_type(config)
    if kind not in classes:
        raise ValueError(f"peft_type={config.peft_type or kind!r} is not a PEFT method this benchmark can run; "
                         f"allowed: {', '.join(sorted(classes))}")
    cls = classes[kind]
    args = dict(REGISTRY[config.method].peft[1])
    if kind in LORA_TYPES:  # our LoRA's settings: peft-lora is a cross-check of ours, DoRA LoRA at equal rank
        args |= {"r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout}
    args |= config.peft_args or {}
    known = sorted(f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("peft_type", "task_type"))
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ValueError(f"peft_args {unknown} are not arguments of PEFT's {cls.__name__}; allowed: {', '.join(known)}")
    return cls, args


def _build(cls: type, args: dict[str, Any]) -> Any:
    try:
        return cls(**args)
    except (TypeError, ValueError) as error:
        raise ValueError(f"PEFT's {cls.__name__} refused {args}: {str(error).splitlines()[0]}") from None


def check(config: PETLConfig) -> None:
    """Fail in one line on an unknown PEFT type or argument, before any model or data loads (the pipeline plans with it)."""
    if config.is_peft:
        _build(*_arguments(config))


def _lora_target_names(config: PETLConfig, model: PreTrainedModel) -> list[str]:
    """Our LoRA's targets as PEFT module names: roles resolved through the family table."""
    from .modules.lora import lora_targets

    names = []
    for name in lora_targets(config, model):
        targets = named_targets(model, name)
        if not targets:
            raise ValueError(f"lora target {name!r} matches no linear layer of {model.config.model_type}; "
                             f"give a role (query, key, value) or a module name such as {', '.join(family_of(model).lora_targets)}")
        if any(t.part is not None for t in targets):
            raise ValueError(f"lora target {name!r} is a slice of a fused projection in {model.config.model_type}; PEFT adapts "
                             "whole modules: name the module (e.g. c_attn)")
        names += [t.path.rsplit(".", 1)[-1] for t in targets]
    return sorted(set(names))


def _widths(model: PreTrainedModel, peft_config: Any) -> set[int]:
    """In and out widths of the linear layers ``peft_config`` adapts, matched by PEFT's own rule."""
    from peft.tuners.tuners_utils import check_target_module_exists

    widths = set()
    for path, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and check_target_module_exists(peft_config, path):
            widths |= set(projection_shape(module))
    return widths


def run_config(config: PETLConfig, model: PreTrainedModel) -> Any:
    """PEFT's config of a run on ``model``: the method's type and defaults, our LoRA's targets for LoRA types, then peft_args."""
    cls, args = _arguments(config)
    kind = peft_type(config)
    if kind in LORA_TYPES and "target_modules" not in args:
        args["target_modules"] = _lora_target_names(config, model)
    if "target_modules" not in args:
        from peft.utils import constants

        table = getattr(constants, f"TRANSFORMERS_MODELS_TO_{kind}_TARGET_MODULES_MAPPING", {})
        if model.config.model_type not in table:
            raise ValueError(f"PEFT has no default targets of {kind} for model type {model.config.model_type!r}; "
                             "name them: peft_args {target_modules: [...]}")
        args["target_modules"] = list(table[model.config.model_type])
    made = _build(cls, args)
    if kind == "VBLORA" and "vector_length" not in args:
        made = _build(cls, {**args, "vector_length": math.gcd(VB_LORA_WIDTH, *_widths(model, made))})
    return made


def inject(model: PreTrainedModel, config: PETLConfig) -> None:
    """Let PEFT insert the method's layers into ``model`` (in place); the model stays the object we train."""
    from peft import get_peft_model

    peft_config = run_config(config, model)
    before = {id(p) for p in model.parameters()}
    try:
        wrapper = get_peft_model(model, peft_config)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(f"PEFT cannot apply {config.method} ({peft_type(config)}) to {model.config.model_type}: "
                         f"{str(error).splitlines()[0]}") from None
    model.__dict__[WRAPPER_ATTR] = wrapper
    model.__dict__[ADDED_ATTR] = {id(p): p for p in model.parameters() if id(p) not in before}


def added_parameters(model: torch.nn.Module) -> dict[int, torch.nn.Parameter]:
    """The parameters PEFT added (empty for our own methods), by identity."""
    return dict(model.__dict__.get(ADDED_ATTR, {}))


def _wrapper(model: torch.nn.Module) -> Any:
    if WRAPPER_ATTR not in model.__dict__:
        raise ValueError("this model has no PEFT method")
    return model.__dict__[WRAPPER_ATTR]


def save(model: PreTrainedModel, directory: Path) -> None:
    """PEFT's own files of the method (``save_pretrained``), without PEFT's model card."""
    _wrapper(model).save_pretrained(str(directory))
    (directory / "README.md").unlink(missing_ok=True)


def load(model: PreTrainedModel, directory: Path) -> None:
    """Load PEFT's saved weights into a model that :func:`inject` prepared with the same config."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    if not (directory / PEFT_FILES[0]).is_file():
        raise FileNotFoundError(f"artifact file {directory / PEFT_FILES[0]} is missing")
    result = set_peft_model_state_dict(_wrapper(model), load_peft_weights(str(directory), device="cpu"))
    if result.unexpected_keys:
        raise ValueError(f"PEFT files in {directory} do not fit this model: unexpected {result.unexpected_keys[:3]}")


def file_bytes(directory: Path) -> int:
    """Bytes of the files PEFT needs to load the adapter."""
    return sum((directory / name).stat().st_size for name in PEFT_FILES)


# PEFT's storage switches (VeRA's projections, VB-LoRA's full logits): both ways are measured on disk.
SWITCHES = {"VERA": "save_projection", "VBLORA": "save_only_topk_weights"}


def _bytes_both_ways(model: PreTrainedModel) -> dict[str, int]:
    """On-disk bytes of PEFT's files as configured and, where PEFT has a switch that stores less, with it flipped."""
    wrapper = _wrapper(model)
    config = wrapper.peft_config["default"]
    kind = config.peft_type.value
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        save(model, Path(tmp) / "as_configured")
        out["as_configured"] = file_bytes(Path(tmp) / "as_configured")
        if kind in SWITCHES:
            name = SWITCHES[kind]
            original = getattr(config, name)
            setattr(config, name, not original)
            try:
                save(model, Path(tmp) / "flipped")
            finally:
                setattr(config, name, original)
            out[f"{name}={not original}"] = file_bytes(Path(tmp) / "flipped")
    return out


def storage(model: PreTrainedModel) -> dict[str, Any]:
    """A PEFT method's storage three ways (see the module docstring); bits, and the bytes of PEFT's files."""
    wrapper = _wrapper(model)
    config = wrapper.peft_config["default"]
    kind = config.peft_type.value
    added = added_parameters(model)
    trained = sum(p.numel() for p in added.values())
    regenerable = 0  # floats (or positions) PEFT can rebuild from a seed instead of storing them
    minimum_bits = 32 * trained
    if kind == "VERA":
        projections = {id(t): t for name, t in model.named_buffers() if ".vera_A." in name or ".vera_B." in name}
        regenerable = sum(t.numel() for t in projections.values())
    elif kind == "FOURIERFT":  # every layer's spectral positions: a (2, n) index tensor drawn from random_loc_seed
        regenerable = sum(2 * config.n_frequency for _, module in model.named_modules() if hasattr(module, "fourierft_spectrum")
                          and "default" in module.fourierft_spectrum)
    elif kind == "VBLORA":  # top-k indices at ceil(log2 num_vectors) bits and k - 1 free weights per sub-vector
        logits = sum(p.numel() for name, p in model.named_parameters() if "vblora_logits" in name)
        bank = sum(p.numel() for name, p in model.named_parameters() if "vblora_vector_bank" in name)
        picks = logits // config.num_vectors
        minimum_bits = 32 * bank + picks * ((config.topk - 1) * 32 + config.topk * math.ceil(math.log2(config.num_vectors)))
    regenerable_bits = 32 * regenerable
    return {
        "peft_type": kind,
        "trained_float_params": trained,
        "regenerable_params": regenerable,
        "convention_bits": 32 * trained,
        "min_bits": minimum_bits,
        "with_regenerable_bits": minimum_bits + regenerable_bits,
        "file_bytes": _bytes_both_ways(model),
    }
