"""What a task stores on disk, in the fewest bytes, and how to load it back bit for bit.

An artifact directory holds three separate objects, each with its own
save/load path so that several tasks can later share one prototype file:

* ``prototype.safetensors``: the float tensors (prototypes in folded form, or
  the trained backbone tensors for ``full`` / ``bitfit``), float32;
* ``masks.safetensors``: each layer's mask as uint8 bytes, bit-packed (1 bit per entry) or, where
  smaller, Golomb-Rice coded (:mod:`propetl.mask_coding`; ``mask_coding`` in the config says which);
* ``head.safetensors``: the task head;

plus, for PEFT's methods (:mod:`propetl.peft_methods`), ``peft/``: PEFT's own ``save_pretrained`` files
(``prototype.safetensors`` and ``masks.safetensors`` are then empty);

plus ``petl_config.json`` naming the method, its hyperparameters, the backbone
id/revision and every tensor's shape. No backbone weights, no mask scores.

A multi-task artifact (:mod:`propetl.multitask`) stores the prototype once, the masks all
tasks share in ``masks.safetensors``, and each task's own masks and head under
``tasks/{task}/``; ``load_petl(..., task=name)`` rebuilds that task's model. An artifact
trained on a frozen prototype (``propetl train --prototype``) holds no prototype floats:
``prototype_ref`` names the prototype file by its sha256, checked on loading.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from . import peft_methods
from .atomic import atomic_dir
from .config import PETLConfig
from .mask_coding import decode, encode
from .masks import Mask, kept_count
from .architectures import all_layers
from .multitask import TASK_SEP, TaskHeads, split_key, tasks_of
from .runs import RunFiles
from .petl_model import PROTOTYPE_REF_ATTR, apply_petl, backbone_parameters, head_modules, layer_masks, petl_config_of, prototype_layers, prototypes

FORMAT = "propetl-artifact/3"  # 3: masks coded below one bit where smaller (mask_coding)
READABLE_FORMATS = ("propetl-artifact/2", FORMAT)  # 2: the official adapter data flow, all masks bit-packed
CONFIG_FILE = "petl_config.json"
PROTOTYPE_FILE = "prototype.safetensors"
MASKS_FILE = "masks.safetensors"
HEAD_FILE = "head.safetensors"
TASKS_DIR = "tasks"


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


def _coded_masks(model: PreTrainedModel) -> dict[str, tuple[str, torch.Tensor]]:
    """Every mask in its smaller coding, keyed as layer_masks keys them."""
    return {key: encode(mask.bits()) for key, mask in layer_masks(model).items()}


def _of_task(coded: dict[str, Any], task: str | None) -> dict[str, Any]:
    """One task's entries (keys without the task), or the shared ones (task None)."""
    return {split_key(key)[1]: value for key, value in coded.items() if split_key(key)[0] == task}


def _head_state(model: PreTrainedModel, task: str | None) -> dict[str, torch.Tensor]:
    state = {}
    for prefix, head in head_modules(model).items():
        own = head.heads[task] if isinstance(head, TaskHeads) else head
        state |= {f"{prefix}.{k}": v.float() for k, v in own.state_dict().items()}
    return state


def save_head(model: PreTrainedModel, path: Path, task: str | None = None) -> None:
    _write_tensors(_head_state(model, task), path)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prototype_file(path: str | os.PathLike) -> Path:
    """The prototype file of an artifact (or run) directory, or the file itself."""
    path = Path(path)
    for candidate in (path, path / PROTOTYPE_FILE, RunFiles(path).artifact / PROTOTYPE_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no prototype at {path}: give an artifact directory holding {PROTOTYPE_FILE}, or that file")


def load_frozen_prototype(model: PreTrainedModel, path: str | os.PathLike) -> None:
    """Load a prototype trained earlier into ``model`` and freeze it: only masks and head train on it."""
    petl_config_of(model).require_learned_masks("a frozen prototype")
    file = prototype_file(path)
    load_prototype(model, file)
    for prototype in prototypes(model).values():
        prototype.requires_grad_(False)
    setattr(model, PROTOTYPE_REF_ATTR, {"sha256": file_sha256(file), "path": str(file.resolve())})


def _relative_ref(ref: dict[str, str], directory: Path) -> dict[str, str]:
    """The prototype's path relative to the artifact, so that a results tree can move as a whole."""
    return {**ref, "path": os.path.relpath(ref["path"], Path(directory).resolve())}


def _describe(model: PreTrainedModel, backbone: dict[str, Any] | None, directory: Path,
              coded: dict[str, tuple[str, torch.Tensor]]) -> dict[str, Any]:
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
            "num_layers": len(all_layers(model)),
        },
        "num_labels": model.config.num_labels,
        "problem_type": model.config.problem_type,
        **_describe_masks(model, coded, None),
        **({"prototype_ref": _relative_ref(getattr(model, PROTOTYPE_REF_ATTR), directory)} if hasattr(model, PROTOTYPE_REF_ATTR) else {}),
        **({"tasks": {task: {"num_labels": model.petl_task_switch.label_spaces[task][0],
                             "problem_type": model.petl_task_switch.label_spaces[task][1],
                             **_describe_masks(model, coded, task)} for task in tasks_of(model)}} if tasks_of(model) else {}),
    }


def _describe_masks(model: PreTrainedModel, coded: dict[str, tuple[str, torch.Tensor]], task: str | None) -> dict[str, Any]:
    return {"masks": {key: list(mask.shape) for key, mask in _of_task(layer_masks(model), task).items()},
            "mask_coding": {key: coding for key, (coding, _) in _of_task(coded, task).items()}}


def save_petl(model: PreTrainedModel, directory: str | os.PathLike, backbone: dict[str, Any] | None = None) -> Path:
    """Write the artifact atomically: a reader never sees half of one (see :func:`atomic_dir`)."""
    coded = _coded_masks(model)
    with atomic_dir(directory) as staging:
        if not hasattr(model, PROTOTYPE_REF_ATTR):
            save_prototype(model, staging / PROTOTYPE_FILE)
        _write_tensors({key: data for key, (_, data) in _of_task(coded, None).items()}, staging / MASKS_FILE)
        for task in tasks_of(model):
            (staging / TASKS_DIR / task).mkdir(parents=True)
            _write_tensors({key: data for key, (_, data) in _of_task(coded, task).items()}, staging / TASKS_DIR / task / MASKS_FILE)
            save_head(model, staging / TASKS_DIR / task / HEAD_FILE, task)
        if not tasks_of(model):
            save_head(model, staging / HEAD_FILE)
        if petl_config_of(model).is_peft:
            peft_methods.save(model, staging / peft_methods.PEFT_DIR)
        (staging / CONFIG_FILE).write_text(json.dumps(_describe(model, backbone, Path(directory), coded), indent=2))
    return Path(directory)


def artifact_bytes(directory: str | os.PathLike, task: str | None = None) -> int:
    """Bytes on disk: the whole artifact, or (``task``) what that one task adds to a multi-task artifact."""
    root = Path(directory) / TASKS_DIR / task if task else Path(directory)
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def read_artifact_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a PETL artifact")
    try:
        described = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"artifact file {path} is corrupt: {error}") from None
    if described.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{path} has format {described.get('format')!r}; this version reads {', '.join(map(repr, READABLE_FORMATS))}")
    return described


def _unpack_file(path: Path, about: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The masks of one masks.safetensors, decoded as its config's ``mask_coding`` says (format 2: all bits)."""
    packed = _read_tensors(path)
    shapes, codings = about["masks"], about.get("mask_coding", {})
    missing = sorted(set(shapes) - set(packed))
    if missing:
        raise ValueError(f"masks {missing[:3]} are missing from {path}")
    masks = {}
    for key, shape in shapes.items():
        try:
            masks[key] = decode(codings.get(key, "bits"), packed[key], tuple(shape))
        except ValueError as error:
            raise ValueError(f"mask {key} in {path} {error.args[0].removeprefix('packed mask ')}") from None
    return masks


def load_masks(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every stored mask as a bool tensor, keyed as :func:`propetl.petl_model.layer_masks` keys them."""
    directory = Path(directory)
    described = read_artifact_config(directory)
    masks = _unpack_file(directory / MASKS_FILE, described)
    for task, about in described.get("tasks", {}).items():
        own = _unpack_file(directory / TASKS_DIR / task / MASKS_FILE, about)
        masks |= {f"{task}{TASK_SEP}{key}": bits for key, bits in own.items()}
    return masks


def _check_backbone(described: dict[str, Any], model: PreTrainedModel, num_labels: int) -> None:
    saved = described["backbone"]
    have = {"model_type": model.config.model_type, "hidden_size": model.config.hidden_size, "num_layers": len(all_layers(model))}
    wrong = {k: (saved[k], v) for k, v in have.items() if saved[k] != v}
    if wrong or num_labels != model.config.num_labels:
        details = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in wrong.items())
        if num_labels != model.config.num_labels:
            details += f"{', ' if details else ''}num_labels {num_labels} vs {model.config.num_labels}"
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


def _check_kept(masks: dict[str, torch.Tensor], sparsity: float) -> None:
    """Every stored mask keeps exactly k entries: anything else was altered."""
    for key, bits in masks.items():
        kept = kept_count(bits.numel(), sparsity)
        if int(bits.sum()) != kept:
            raise ValueError(f"mask {key} keeps {int(bits.sum())} of {bits.numel()} entries; sparsity {sparsity:g} keeps {kept}")


def task_view(masks: dict[str, torch.Tensor], task: str, layout: str) -> dict[str, torch.Tensor]:
    """One task's mask per layer, as its single-task model applies them (see propetl.multitask's layouts)."""
    own = {split_key(key)[1]: bits for key, bits in masks.items() if split_key(key)[0] == task}
    if layout == "per_layer":
        return own
    shared = {key: bits for key, bits in masks.items() if split_key(key)[0] is None}  # layer.{i}.{site}.{tensor}
    combine = torch.logical_or if layout == "task_or_layer" else torch.logical_and
    return {key: combine(bits, own[key.split(".", 2)[2]]) for key, bits in shared.items()}


def load_mask_bits(model: PreTrainedModel, masks: dict[str, torch.Tensor]) -> None:
    """Replace each layer's masks by the given fixed ones (learned masks become fixed)."""
    config = petl_config_of(model)
    for key, layer in prototype_layers(model).items():
        for name, mask in list(layer.masks.items()):
            if f"{key}.{name}" not in masks:
                raise ValueError(f"mask {key}.{name} is missing from the artifact")
            layer.masks[name] = Mask(mask.shape, config.sparsity, masks[f"{key}.{name}"])


def _prototype_source(directory: Path, described: dict[str, Any], prototype: str | os.PathLike | None) -> Path:
    ref = described.get("prototype_ref")
    if ref is None:
        return directory / PROTOTYPE_FILE
    file = prototype_file(prototype if prototype is not None else directory / ref["path"])
    if file_sha256(file) != ref["sha256"]:
        raise ValueError(f"prototype {file} has sha256 {file_sha256(file)[:12]}..., but {directory} was trained on "
                         f"{ref['sha256'][:12]}...: another prototype")
    return file


def load_petl(backbone: PreTrainedModel, directory: str | os.PathLike, task: str | None = None,
              prototype: str | os.PathLike | None = None) -> PreTrainedModel:
    """Rebuild a saved PETL model on a freshly loaded backbone (same architecture and shape).

    ``task`` picks one task of a multi-task artifact; ``prototype`` locates the prototype of an
    artifact trained on a frozen one (default: where it was at training time; its hash must match).
    """
    directory = Path(directory)
    described = read_artifact_config(directory)
    tasks = described.get("tasks", {})
    if tasks and task not in tasks:
        raise ValueError(f"{directory} holds the tasks {', '.join(tasks)}; pass task= one of them (got {task!r})")
    if not tasks and task is not None:
        raise ValueError(f"{directory} is a single-task artifact; task={task!r} does not apply")
    _check_backbone(described, backbone, tasks[task]["num_labels"] if tasks else described["num_labels"])
    head_file = directory / TASKS_DIR / task / HEAD_FILE if tasks else directory / HEAD_FILE
    for path in (directory / MASKS_FILE, head_file):
        if not path.is_file():
            raise FileNotFoundError(f"artifact file {path} is missing")
    try:
        config = PETLConfig.from_dict(described["petl_config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{directory / CONFIG_FILE}: {error}") from None
    source = _prototype_source(directory, described, prototype)
    masks = load_masks(directory)
    if config.masked:
        _check_kept(masks, config.sparsity)
    model = apply_petl(backbone, config)
    load_prototype(model, source)
    load_mask_bits(model, task_view(masks, task, config.task_masks) if tasks else masks)
    load_head(model, head_file)
    if config.is_peft:
        peft_methods.load(model, directory / peft_methods.PEFT_DIR)
    return model.eval()
