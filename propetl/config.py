"""What a run is configured by (``PETLConfig``, ``TrainConfig``) and the paper's defaults in one place.

Pure dataclasses, no torch: the CLI and the pipeline read them at every start.

Vocabulary used everywhere in this project (configs, CLI, tables):

* ``sparsity`` is the fraction of mask entries that are ZERO, in ``[0, 1)``.
  The official ProPETL scripts call the *kept* fraction ``sparsity``: their
  adapter 0.5 is our 0.5, their LoRA / prefix 0.1 is our 0.9.
* ``mask_mode``: ``learned`` (top-k of trainable scores, straight-through),
  ``random`` (a fixed random mask of the same sparsity, never trained) or
  ``none`` (every layer uses the whole prototype).
* ``share``: ``layers`` (one prototype for all layers, the ProPETL method) or
  ``none`` (an independent masked module per layer: pruning without sharing).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

BASELINE_METHODS = ("adapter", "lora", "prefix")
PROPETL_METHODS = ("propetl-adapter", "propetl-lora", "propetl-prefix")
REFERENCE_METHODS = ("full", "bitfit")
METHODS = BASELINE_METHODS + PROPETL_METHODS + REFERENCE_METHODS
MASK_MODES = ("learned", "random", "none")
SHARE_MODES = ("layers", "none")

# The official scripts' settings (ChaosCodes/ProPETL, propetl-roberta/scripts/run_{adapter,lora,
# prefix}.sh; docs/fidelity.md cites each line). Training code, PETLConfig's defaults and the
# pipeline read these; nothing else hard-codes them. All three PETL methods train at lr 1e-4;
# mask_lr and sparsity (ours = 1 - their kept fraction) are per method. full and bitfit are not
# in the official scripts: their lrs are common choices (RoBERTa paper, BitFit paper).
PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
    "adapter": {"lr": 1e-4},
    "lora": {"lr": 1e-4},
    "prefix": {"lr": 1e-4},
    "propetl-adapter": {"lr": 1e-4, "mask_lr": 3e-3, "sparsity": 0.5},
    "propetl-lora": {"lr": 1e-4, "mask_lr": 3e-2, "sparsity": 0.9},
    "propetl-prefix": {"lr": 1e-4, "mask_lr": 1e-4, "sparsity": 0.9},
    "full": {"lr": 2e-5},
    "bitfit": {"lr": 1e-3},
}
# The official scripts' optimisation setting, shared by the three methods (run_*.sh: --fp16
# --max_seq_length 128 --per_device_train_batch_size 128 --warmup_ratio 0.1 --weight_decay 0.1
# --evaluation_strategy epoch, best checkpoint kept; trainer.py decays the mask scores with the
# same weight decay). Epochs: 20 on the small GLUE tasks, 10 on the large ones; seeds 42, 43, 44.
# workflow/configs/paper.yaml spells these out and a test checks its plan against them.
PAPER_TRAINING: dict[str, Any] = {
    "batch_size": 128, "warmup_ratio": 0.1, "weight_decay": 0.1, "mask_weight_decay": 0.1,
    "fp16": True, "eval_strategy": "epoch", "max_length": 128, "seeds": (42, 43, 44),
}
PAPER_EPOCHS: dict[str, int] = {
    "glue-cola": 20, "glue-mrpc": 20, "glue-stsb": 20, "glue-rte": 20,
    "glue-sst2": 10, "glue-qqp": 10, "glue-qnli": 10, "glue-mnli": 10,
}
# Module sizes of the paper (RoBERTa-base, hidden 768): adapter bottleneck 64, LoRA r 32 /
# alpha 48 on query and value, 64 prefix vectors per layer.
PAPER_MODULE_DEFAULTS: dict[str, Any] = {"reduction_factor": 12, "lora_r": 32, "lora_alpha": 48.0, "prefix_length": 64}


def module_kind(method: str) -> str | None:
    """The PETL module a method inserts (adapter, lora, prefix), or None for full/bitfit."""
    base = method.removeprefix("propetl-")
    return base if base in BASELINE_METHODS else None


def _allowed(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(map(str, allowed))}")


@dataclass
class PETLConfig:
    """One PETL method and its hyperparameters; validated on construction."""

    method: str
    sparsity: float | None = None
    mask_mode: str = "learned"
    share: str = "layers"
    mask_seed: int | None = None
    # adapter
    reduction_factor: int = PAPER_MODULE_DEFAULTS["reduction_factor"]
    # lora
    lora_r: int = PAPER_MODULE_DEFAULTS["lora_r"]
    lora_alpha: float = PAPER_MODULE_DEFAULTS["lora_alpha"]
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("query", "value")
    # prefix
    prefix_length: int = PAPER_MODULE_DEFAULTS["prefix_length"]
    prefix_mid_dim: int = 512

    def __post_init__(self) -> None:
        _allowed("method", self.method, METHODS)
        self.lora_targets = tuple(self.lora_targets)
        if self.is_propetl:
            _allowed("mask_mode", self.mask_mode, MASK_MODES)
            _allowed("share", self.share, SHARE_MODES)
            if self.mask_mode == "none":
                if self.sparsity is not None:  # a run table must not show an s= that nothing applied
                    raise ValueError(f"sparsity={self.sparsity!r} given with mask_mode='none'; without masks there is no sparsity")
            else:
                if self.sparsity is None:
                    self.sparsity = PAPER_DEFAULTS[self.method]["sparsity"]
                if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity < 1.0:
                    raise ValueError(f"sparsity={self.sparsity!r} is outside [0, 1); it is the fraction of mask entries set to zero")
                self.sparsity = float(self.sparsity)
        else:
            for name, default in (("sparsity", None), ("mask_mode", "learned"), ("share", "layers")):
                if getattr(self, name) != default:
                    raise ValueError(
                        f"{name}={getattr(self, name)!r} given for method {self.method!r}; only {', '.join(PROPETL_METHODS)} take a {name}"
                    )
        for name in ("reduction_factor", "lora_r", "prefix_length", "prefix_mid_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        bad = [t for t in self.lora_targets if t not in ("query", "key", "value")]
        if bad or not self.lora_targets:
            raise ValueError(f"lora_targets={list(self.lora_targets)!r} not supported; allowed: query, key, value")

    @property
    def is_propetl(self) -> bool:
        return self.method in PROPETL_METHODS

    @property
    def module_kind(self) -> str | None:
        return module_kind(self.method)

    @property
    def masked(self) -> bool:
        return self.is_propetl and self.mask_mode != "none"

    @property
    def shared(self) -> bool:
        return self.is_propetl and self.share == "layers"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PETLConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PETL config keys {unknown}; allowed: {sorted(known)}")
        return cls(**data)


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a run depends on besides the PETL hyperparameters (see PETLConfig)."""

    model: str = _opt("minilm-l6", "backbone: alias (minilm-l6, tiny-bert, tiny-roberta), HF hub id or local dir")
    task: str = _opt("rt-polarity", "task name (rt-polarity, snli, glue-*) or a local csv/jsonl/parquet file")
    out: str = _opt("runs/default", "run directory")
    label: str | None = _opt(None, "name of this grid entry in tables (default: the method)")
    seed: int = _opt(1, "training seed (head init, mask scores, data order, dropout)")
    data_seed: int = _opt(0, "seed of the train/validation/test split, independent of --seed")
    max_steps: int | None = _opt(None, "optimizer steps (overrides --epochs)")
    epochs: float = _opt(3.0, "training epochs when --max-steps is not given")
    batch_size: int = _opt(32, "per-step training batch size")
    grad_accum: int = _opt(1, "gradient accumulation steps")
    lr: float | None = _opt(None, "learning rate of the PETL parameters (default: the method's paper default)")
    mask_lr: float | None = _opt(None, "learning rate of the mask scores (default: the method's paper default)")
    head_lr: float | None = _opt(None, "learning rate of the task head (default: --lr)")
    weight_decay: float = _opt(0.0, "weight decay of PETL parameters and head")
    mask_weight_decay: float = _opt(0.0, "weight decay of the mask scores")
    warmup_ratio: float = _opt(0.1, "fraction of steps with linear warm-up")
    eval_strategy: str = _opt("steps", "steps: validate (and checkpoint) every --eval-every steps | epoch: after every epoch (the official scripts)")
    eval_every: int = _opt(100, "validate (and checkpoint) every N steps (eval_strategy steps); the best validation combined_score is kept")
    eval_batch_size: int = _opt(32, "evaluation batch size (eval splits are length-sorted: small batches pad least)")
    max_length: int | None = _opt(None, "max tokens per example (default: the task's)")
    max_train: int | None = _opt(None, "cap on training examples")
    max_val: int | None = _opt(None, "cap on validation examples")
    max_test: int | None = _opt(None, "cap on test examples")
    prepared: str | None = _opt(None, "tokenised task dir to reuse (made by `propetl prepare`); default: <out>/data")
    bf16: bool = _opt(False, "bf16 autocast (CPU with AVX512-BF16, or GPU)")
    fp16: bool = _opt(False, "fp16 autocast (GPU)")
    threads: int | None = _opt(None, "torch intra-op threads (default: torch's)")
    keep_checkpoints: bool = _opt(False, "keep checkpoints/ after the run finished")
    logging_steps: int = _opt(10, "log the training loss every N steps")
