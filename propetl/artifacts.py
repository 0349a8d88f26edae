"""What a task stores on disk, in the fewest bytes, and how to load it back bit for bit.

An artifact directory holds three separate objects, each with its own
save/load path so that several tasks can later share one prototype file:

* ``prototype.safetensors``: the float tensors (prototypes in folded form, or
  the trained backbone tensors for ``full`` / ``bitfit``), float32;
* ``masks.safetensors``: each layer's mask bit-packed, 1 bit per entry (uint8);
* ``head.safetensors``: the task head;

plus ``petl_config.json`` naming the method, its hyperparameters, the backbone
id/revision and every tensor's shape. No backbone weights, no mask scores.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from .atomic import atomic_dir
from .config import PETLConfig
from .masks import Mask, kept_count
from .architectures import encoder_layers
from .petl_model import apply_petl, backbone_parameters, head_modules, layer_masks, petl_config_of, prototype_layers, prototypes

FORMAT = "propetl-artifact/2"  # 2: the official adapter data flow (artifacts of 1 computed another function)
CONFIG_FILE = "petl_config.json"
PROTOTYPE_FILE = "prototype.safetensors"
MASKS_FILE = "masks.safetensors"
HEAD_FILE = "head.safetensors"


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"artifact file {path} is missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"artifact file {path} is corrupt or not a safetensors file: {error}") from None


def _write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}, str(path))


def _float_tensors(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    tensors = {f"{site}.{name}": t.float() for site, proto in prototypes(model).items() for name, t in proto.stored_tensors().items()}
    for name, param in backbone_parameters(model).items():  # full / bitfit: the trained backbone tensors
        if param.requires_grad:
            tensors[name] = param.detach().float()
    return tensors


def save_prototype(model: PreTrainedModel, path: Path) -> None:
    _write_tensors(_float_tensors(model), path)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.flatten().cpu().numpy().astype(bool), bitorder="little"))


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    numel = math.prod(shape)
    if packed.numel() != (numel + 7) // 8:
        raise ValueError(f"packed mask has {packed.numel()} bytes, expected {(numel + 7) // 8} for shape {shape}")
    bits = np.unpackbits(packed.numpy(), count=numel, bitorder="little")
    return torch.from_numpy(bits.astype(bool)).view(shape)


def save_masks(model: PreTrainedModel, path: Path) -> None:
    _write_tensors({key: pack_bits(mask.bits()) for key, mask in layer_masks(model).items()}, path)


def save_head(model: PreTrainedModel, path: Path) -> None:
    _write_tensors({f"{prefix}.{k}": v.float() for prefix, head in head_modules(model).items() for k, v in head.state_dict().items()}, path)


def _describe(model: PreTrainedModel, backbone: dict[str, Any] | None) -> dict[str, Any]:
    config = petl_config_of(model)
    return {
        "format": FORMAT,
        "method": config.method,
        "petl_config": config.to_dict(),
        "backbone": {
            "id": (backbone or {}).get("id", model.config.name_or_path),
            "revision": (backbone or {}).get("revision"),
            "model_type": model.config.model_type,
            "hidden_size": model.config.hidden_size,
            "num_layers": len(encoder_layers(model)),
        },
        "num_labels": model.config.num_labels,
        "problem_type": model.config.problem_type,
        "masks": {key: list(mask.shape) for key, mask in layer_masks(model).items()},
    }


def save_petl(model: PreTrainedModel, directory: str | os.PathLike, backbone: dict[str, Any] | None = None) -> Path:
    """Write the artifact atomically: a reader never sees half of one (see :func:`atomic_dir`)."""
    with atomic_dir(directory) as staging:
        save_prototype(model, staging / PROTOTYPE_FILE)
        save_masks(model, staging / MASKS_FILE)
        save_head(model, staging / HEAD_FILE)
        (staging / CONFIG_FILE).write_text(json.dumps(_describe(model, backbone), indent=2))
    return Path(directory)


def artifact_bytes(directory: str | os.PathLike) -> int:
    return sum(f.stat().st_size for f in Path(directory).iterdir() if f.is_file())


def read_artifact_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a PETL artifact")
    try:
        described = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"artifact file {path} is corrupt: {error}") from None
    if described.get("format") != FORMAT:
        raise ValueError(f"{path} has format {described.get('format')!r}; this version reads {FORMAT!r}")
    return described


def load_masks(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every stored mask as a bool tensor, keyed ``layer.{i}.{site}.{tensor}``."""
    shapes = read_artifact_config(directory)["masks"]
    packed = _read_tensors(Path(directory) / MASKS_FILE)
    missing = sorted(set(shapes) - set(packed))
    if missing:
        raise ValueError(f"masks {missing[:3]} are missing from {directory}/{MASKS_FILE}")
    masks = {}
    for key, shape in shapes.items():
        try:
            masks[key] = unpack_bits(packed[key], tuple(shape))
        except ValueError as error:
            raise ValueError(f"mask {key} in {MASKS_FILE} {error.args[0].removeprefix('packed mask ')}") from None
    return masks


def _check_backbone(described: dict[str, Any], model: PreTrainedModel) -> None:
    saved = described["backbone"]
    have = {"model_type": model.config.model_type, "hidden_size": model.config.hidden_size, "num_layers": len(encoder_layers(model))}
    wrong = {k: (saved[k], v) for k, v in have.items() if saved[k] != v}
    if wrong or described["num_labels"] != model.config.num_labels:
        details = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in wrong.items())
        if described["num_labels"] != model.config.num_labels:
            details += f"{', ' if details else ''}num_labels {described['num_labels']} vs {model.config.num_labels}"
        raise ValueError(f"artifact was saved for another backbone shape (artifact vs given: {details})")


def load_prototype(model: PreTrainedModel, path: Path) -> None:
    tensors = _read_tensors(path)
    for site, proto in prototypes(model).items():
        proto.load_stored({name[len(site) + 1 :]: t for name, t in tensors.items() if name.startswith(site + ".")})
    params = backbone_parameters(model)
    for name, tensor in tensors.items():
        if not any(name.startswith(site + ".") for site in prototypes(model)):
            if name not in params or params[name].shape != tensor.shape:
                raise ValueError(f"artifact tensor {name!r} does not fit this backbone")
            with torch.no_grad():
                params[name].copy_(tensor)


def load_head(model: PreTrainedModel, path: Path) -> None:
    tensors = _read_tensors(path)
    for prefix, head in head_modules(model).items():
        state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        try:
            head.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"head in {path} does not fit this model: {str(error).splitlines()[0]}") from None


def load_mask_bits(model: PreTrainedModel, masks: dict[str, torch.Tensor]) -> None:
    """Replace each layer's masks by the given fixed ones (learned masks become fixed)."""
    config = petl_config_of(model)
    for key, layer in prototype_layers(model).items():
        for name, mask in list(layer.masks.items()):
            if f"{key}.{name}" not in masks:
                raise ValueError(f"mask {key}.{name} is missing from the artifact")
            bits = masks[f"{key}.{name}"]
            kept = kept_count(bits.numel(), config.sparsity)
            if int(bits.sum()) != kept:  # every stored mask keeps exactly k entries: anything else was altered
                raise ValueError(f"mask {key}.{name} keeps {int(bits.sum())} of {bits.numel()} entries; "
                                 f"sparsity {config.sparsity:g} keeps {kept}")
            layer.masks[name] = Mask(mask.shape, config.sparsity, bits)


def load_petl(backbone: PreTrainedModel, directory: str | os.PathLike) -> PreTrainedModel:
    """Rebuild a saved PETL model on a freshly loaded backbone (same architecture and shape)."""
    directory = Path(directory)
    described = read_artifact_config(directory)
    _check_backbone(described, backbone)
    for name in (PROTOTYPE_FILE, MASKS_FILE, HEAD_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"artifact file {directory / name} is missing")
    try:
        config = PETLConfig.from_dict(described["petl_config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{directory / CONFIG_FILE}: {error}") from None
    model = apply_petl(backbone, config)
    load_prototype(model, directory / PROTOTYPE_FILE)
    load_mask_bits(model, load_masks(directory))
    load_head(model, directory / HEAD_FILE)
    return model.eval()
