"""Artifacts in other ecosystems' formats: ProPETL-LoRA as a standard PEFT LoRA adapter.

Merging the masks (:func:`propetl.merge_masks`) turns every layer's masked view of the
shared prototype into plain per-layer LoRA matrices, which is exactly what PEFT's LoRA
format stores. The adapter directory is written by PEFT itself (``save_pretrained``), so
any stack that reads PEFT adapters (``PeftModel.from_pretrained``, vLLM, TGI, ...) serves
it; only the storage advantage stays behind (PEFT stores dense per-layer floats).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import PreTrainedModel

from . import runs
from .artifacts import load_petl, read_artifact_config
from .atomic import atomic_dir
from .backbones import load_model
from .config import REGISTRY
from .modules.lora import LoRALinear
from .petl_model import head_modules, merge_masks

EXPORTABLE = tuple(name for name, method in REGISTRY.items() if method.module == "lora")


def artifact_dir(run_or_artifact: str | os.PathLike) -> Path:
    """An artifact directory, given it or the run directory that holds it."""
    path = Path(run_or_artifact)
    return runs.RunFiles(path).artifact if runs.RunFiles(path).artifact.is_dir() else path


def _backbone(directory: Path, described: dict) -> PreTrainedModel:
    """The backbone the artifact was trained on; its run's seed rebuilds a built-in tiny model exactly."""
    provenance = runs.RunFiles(directory.parent).provenance  # the run holding this artifact/
    seed = json.loads(provenance.read_text())["config"]["train"]["seed"] if provenance.is_file() else 0
    regression = described["problem_type"] == "regression"
    return load_model(described["backbone"]["id"], described["num_labels"], regression, seed=seed)


def export_peft(run_or_artifact: str | os.PathLike, out: str | os.PathLike,
                backbone: PreTrainedModel | None = None, fresh_backbone: PreTrainedModel | None = None) -> Path:
    """Write a ``lora`` / ``propetl-lora`` artifact as a PEFT LoRA adapter directory (head in ``modules_to_save``).

    ``backbone`` and ``fresh_backbone`` (two separate instances of the same pretrained model)
    default to the artifact's own backbone.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("exporting to PEFT needs the peft package: pip install peft") from None

    directory = artifact_dir(run_or_artifact)
    described = read_artifact_config(directory)
    if described["method"] not in EXPORTABLE:
        raise ValueError(f"method {described['method']!r} is not exportable to PEFT; exportable: {', '.join(EXPORTABLE)} "
                         f"(PEFT's LoRA format has no bottleneck adapters, prefixes or full/bitfit weights)")
    config = described["petl_config"]
    model = merge_masks(load_petl(backbone or _backbone(directory, described), directory))
    layers = {path: module for path, module in model.named_modules() if isinstance(module, LoRALinear)}
    sliced = sorted({path.rsplit(".", 1)[-1] for path, layer in layers.items() if layer.part is not None})
    if sliced:
        raise ValueError(f"LoRA on a slice of a fused projection ({', '.join(sliced)}: lora_targets "
                         f"{config['lora_targets']}) has no PEFT LoRA form; train with whole modules (e.g. c_attn) to export")
    heads = head_modules(model)
    peft_model = get_peft_model(
        fresh_backbone or _backbone(directory, described),
        LoraConfig(task_type="SEQ_CLS", r=config["lora_r"], lora_alpha=config["lora_alpha"], lora_dropout=config["lora_dropout"],
                   target_modules=sorted({path.rsplit(".", 1)[-1] for path in layers}),
                   modules_to_save=[name.rsplit(".", 1)[-1] for name in heads]),
    )
    inner = peft_model.base_model.model
    for path, layer in layers.items():
        lora = inner.get_submodule(path)
        weights = layer.weights()  # merged: the layer's masked A and B
        lora.lora_A["default"].weight.data.copy_(weights["A"])
        lora.lora_B["default"].weight.data.copy_(weights["B"])
    for name, head in heads.items():
        inner.get_submodule(name).modules_to_save["default"].load_state_dict(head.state_dict())
    peft_model.peft_config["default"].base_model_name_or_path = described["backbone"]["id"]
    with atomic_dir(out) as staging:  # a reader never sees half an adapter
        peft_model.save_pretrained(str(staging))
    return Path(out)
