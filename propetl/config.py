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
* ``task_masks`` (several tasks trained together, :mod:`propetl.multitask`): ``per_layer``
  (a mask per task and layer), ``task_or_layer`` / ``task_and_layer`` (a task mask shared
  by all layers OR / AND a task-independent mask per layer; the official GLUE setting is OR).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

MASK_MODES = ("learned", "random", "none")
SHARE_MODES = ("layers", "none")
TASK_MASK_LAYOUTS = ("per_layer", "task_or_layer", "task_and_layer")
EVAL_STRATEGIES = ("steps", "epoch")
BF16_CHOICES = (True, False, "auto")
TASK_TYPES = ("classification", "regression", "generation")
TASK_FORMATS = ("classifier", "text-to-text", "text-to-text-no-prefix")
FILE_TASK_OPTIONS = ("text_columns", "label_column", "task_type", "encoding", "source_column", "target_column", "metrics")
# Generation settings (propetl.task_kinds): the official T5 values (docs/fidelity.md). A run's fingerprint
# leaves them out at their defaults, so that checkpoints written before they existed still resume.
GENERATION_SETTINGS = ("task_format", "max_new_tokens", "num_beams", "label_smoothing")


@dataclass(frozen=True)
class Method:
    """A method as the whole project knows it: every list of methods, default and help derives from here.

    Adding a method is one entry below (plus, for a new kind of PETL module, its
    ``ModuleSpec`` in ``propetl/modules/`` and its hyperparameters on ``PETLConfig``);
    tests/test_config.py checks that every entry is complete.
    """

    module: str | None
    """The PETL module it inserts (a key of ``propetl.modules.SPECS``); None for full / bitfit."""
    propetl: bool
    """One prototype shared by all layers, a mask per layer: takes sparsity, mask_mode and share."""
    paper: dict[str, Any]
    """Official lr (ProPETL methods: also mask_lr and sparsity), see PAPER_DEFAULTS."""
    help: str
    peft: tuple[str, dict[str, Any]] | None = None
    """PEFT's config type and our defaults of its arguments: the method is PEFT's own code
    (:mod:`propetl.peft_methods`), never re-implemented here. None: our implementation."""


# The official scripts' settings (ChaosCodes/ProPETL, propetl-roberta/scripts/run_{adapter,lora,
# prefix}.sh; docs/fidelity.md cites each line): all three PETL methods train at lr 1e-4; mask_lr
# and sparsity (ours = 1 - their kept fraction) are per method. full and bitfit are not in the
# official scripts: their lrs are common choices (RoBERTa paper, BitFit paper).
# Order = table order: each PETL baseline directly above its ProPETL variant.
REGISTRY: dict[str, Method] = {
    "full": Method(None, False, {"lr": 2e-5}, "fine-tune every backbone weight (reference)"),
    "bitfit": Method(None, False, {"lr": 1e-3}, "fine-tune the backbone's biases only (reference)"),
    "adapter": Method("adapter", False, {"lr": 1e-4}, "a bottleneck adapter per layer (Pfeiffer placement)"),
    "propetl-adapter": Method("adapter", True, {"lr": 1e-4, "mask_lr": 3e-3, "sparsity": 0.5},
                              "one adapter prototype, a learned mask per layer"),
    "lora": Method("lora", False, {"lr": 1e-4}, "LoRA on the attention projections of every layer"),
    "propetl-lora": Method("lora", True, {"lr": 1e-4, "mask_lr": 3e-2, "sparsity": 0.9},
                           "one LoRA prototype per projection, a learned mask per layer"),
    "prefix": Method("prefix", False, {"lr": 1e-4}, "prefix-tuning: key/value vectors per layer"),
    "propetl-prefix": Method("prefix", True, {"lr": 1e-4, "mask_lr": 1e-4, "sparsity": 0.9},
                             "one prefix prototype, a learned mask per layer"),
    # The competitors, through PEFT (docs/fidelity.md cites every default). Their lr is a starting point,
    # not a published value: the studies tune every method alike. peft-lora and dora take our LoRA's
    # lora_r / lora_alpha / lora_dropout / lora_targets, so that they adapt exactly what `lora` adapts.
    "peft-lora": Method(None, False, {"lr": 1e-4}, "PEFT's LoRA with our lora's settings (a cross-check of ours)", ("LORA", {})),
    "dora": Method(None, False, {"lr": 1e-4}, "DoRA through PEFT: LoRA plus a learned magnitude per output", ("LORA", {"use_dora": True})),
    "vera": Method(None, False, {"lr": 1e-3}, "VeRA through PEFT: frozen random matrices shared by all layers, scaling vectors per layer",
                   ("VERA", {"r": 256, "d_initial": 0.1, "projection_prng_key": 0, "save_projection": True})),
    "vb-lora": Method(None, False, {"lr": 1e-3}, "VB-LoRA through PEFT: one vector bank for all layers, each layer mixes its top-k",
                      ("VBLORA", {"r": 4, "num_vectors": 256, "topk": 2})),
    "fourierft": Method(None, False, {"lr": 1e-3}, "FourierFT through PEFT: a few spectral coefficients per layer",
                        ("FOURIERFT", {"n_frequency": 1000, "scaling": 150.0, "random_loc_seed": 777})),
    "ia3": Method(None, False, {"lr": 1e-3}, "(IA)3 through PEFT: one learned vector per adapted projection", ("IA3", {})),
    "peft": Method(None, False, {"lr": 1e-4}, "any other PEFT method: give peft_type (e.g. BOFT) and its peft_args", ("", {})),
}
METHODS = tuple(REGISTRY)
PROPETL_METHODS = tuple(name for name, method in REGISTRY.items() if method.propetl)
PEFT_METHODS = tuple(name for name, method in REGISTRY.items() if method.peft is not None)
PAPER_DEFAULTS: dict[str, dict[str, Any]] = {name: method.paper for name, method in REGISTRY.items()}
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


@dataclass(frozen=True)
class Effective:
    """A method's settings as a run uses them, every unset one filled in (see :func:`effective_defaults`)."""

    sparsity: float | None
    lr: float
    mask_lr: float
    head_lr: float


def effective_defaults(method: str, *, mask_mode: str = "learned", sparsity: float | None = None, lr: float | None = None,
                       mask_lr: float | None = None, head_lr: float | None = None) -> Effective:
    """The settings a run of ``method`` trains with when some are left unset: the one place that fills them.

    Training, the study's plan (``snakemake -n -p`` spells the defaults out) and the figures
    (which sparsity is a method's own) all read them here, so they cannot disagree. A masked
    ProPETL method takes the paper's sparsity, any other none; lr is the paper's; mask_lr the
    paper's (methods without masks: lr); head_lr is lr. Given values pass through unchecked
    (:class:`PETLConfig` and :class:`TrainConfig` validate them).
    """
    paper = REGISTRY[method].paper
    masked = REGISTRY[method].propetl and mask_mode != "none"
    lr = paper["lr"] if lr is None else lr
    return Effective(
        sparsity=(paper["sparsity"] if sparsity is None else sparsity) if masked else None,
        lr=lr,
        mask_lr=paper.get("mask_lr", lr) if mask_lr is None else mask_lr,
        head_lr=lr if head_lr is None else head_lr,
    )


def module_kind(method: str) -> str | None:
    """The PETL module a method inserts (adapter, lora, prefix), or None for full/bitfit."""
    return REGISTRY[method].module


def dedicated_method(method: str) -> str | None:
    """The dedicated baseline a ProPETL method is measured against: same module, unshared, unmasked."""
    module = REGISTRY[method].module
    if not REGISTRY[method].propetl or module is None:
        return None
    return next(name for name, other in REGISTRY.items() if other.module == module and not other.propetl)


# Keys an Optuna search space may tune (propetl.tuning), checked here so that the pipeline
# can refuse a bad space when it plans a study, without importing optuna or torch.
TUNABLE = ("lr", "mask_lr", "head_lr", "weight_decay", "mask_weight_decay", "warmup_ratio")


def check_search_space(space: dict[str, Any]) -> None:
    if not space:
        raise ValueError("search space is empty; give at least one of: " + ", ".join(TUNABLE))
    for name, spec in space.items():
        if name not in TUNABLE:
            raise ValueError(f"search space key {name!r} is not tunable; allowed: {', '.join(TUNABLE)}")
        if not isinstance(spec, dict) or set(spec) - {"low", "high", "log"} or not {"low", "high"} <= set(spec):
            raise ValueError(f"search space {name}={spec!r} must be {{low: X, high: Y[, log: true]}}")
        if not 0 <= spec["low"] < spec["high"] or (spec.get("log") and spec["low"] <= 0):
            raise ValueError(f"search space {name}: need 0 <= low < high (low > 0 with log), got {spec}")


def _opt(default: Any, help: str, *, per_task: bool = False) -> Any:
    """A config field with its default and its --help text (the CLI is generated from the fields).

    ``per_task``: a list with one value per task of the run, whose flag is repeated (``--task a --task b``).
    """
    metadata = {"help": help, **({"per_task": True} if per_task else {})}  # the other keys go to argparse as they are
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def check_allowed(name: str, value: Any, allowed: tuple) -> None:
    """``name=value is not supported; allowed: ...``: the one message for a value outside a fixed set. A bool
    matches only a bool (``1 == True`` in Python, but ``bf16: 1`` is a typo, not a switch)."""
    if not any(value == option and isinstance(value, bool) == isinstance(option, bool) for option in allowed):
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(map(str, allowed))}")


def _whole(name: str, value: Any, minimum: int = 1) -> None:
    """A count (minimum 1) or a seed (minimum 0): an int, not a bool or a float."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be a {'positive' if minimum == 1 else 'non-negative'} integer")


@dataclass
class PETLConfig:
    """One PETL method and its hyperparameters; validated on construction."""

    method: str = field(metadata={"help": "PETL method: " + "; ".join(f"{name}: {m.help}" for name, m in REGISTRY.items())})
    sparsity: float | None = _opt(None, "fraction of mask entries set to ZERO, in [0, 1) (ProPETL methods; default: the method's paper value)")
    mask_mode: str = _opt("learned", "learned | random (fixed random mask) | none (whole prototype in every layer)")
    share: str = _opt("layers", "layers (one prototype for all layers) | none (independent masked module per layer)")
    mask_seed: int | None = _opt(None, "seed of random masks (mask_mode=random); default: drawn from the training seed")
    reduction_factor: int = _opt(PAPER_MODULE_DEFAULTS["reduction_factor"], "adapter bottleneck = hidden / reduction_factor")
    lora_r: int = _opt(PAPER_MODULE_DEFAULTS["lora_r"], "LoRA rank")
    lora_alpha: float = _opt(PAPER_MODULE_DEFAULTS["lora_alpha"], "LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = _opt(0.0, "dropout on the LoRA input")
    lora_targets: list[str] | None = _opt(None, "modules LoRA adapts: roles (query, key, value) or module names (q_proj, c_attn, ...); "
                                                "default: the family's entry of PEFT's table (bert: query, value; llama: q_proj, v_proj; t5: q, v; gpt2: c_attn)")
    prefix_length: int = _opt(PAPER_MODULE_DEFAULTS["prefix_length"], "prefix key/value vectors per layer")
    prefix_mid_dim: int = _opt(512, "hidden size of the prefix reparameterisation MLP")
    task_masks: str = _opt("per_layer", "several --task (ProPETL, learned masks): per_layer (a mask per task and layer) | "
                                        "task_or_layer / task_and_layer (a task mask for all layers OR / AND a mask per layer)")
    peft_type: str | None = _opt(None, "method peft: PEFT's config type (BOFT, HRA, LOKR, ...; prompt-learning types are not supported)")
    peft_args: dict[str, Any] | None = _opt(None, "PEFT methods: arguments of PEFT's config, on top of the method's defaults "
                                                  "(JSON on the command line, e.g. '{\"r\": 1024}')")

    def __post_init__(self) -> None:
        check_allowed("method", self.method, METHODS)
        check_allowed("task_masks", self.task_masks, TASK_MASK_LAYOUTS)
        if self.lora_targets is not None:
            self.lora_targets = list(self.lora_targets)
        if self.is_propetl:
            check_allowed("mask_mode", self.mask_mode, MASK_MODES)
            check_allowed("share", self.share, SHARE_MODES)
            if self.mask_mode == "none":
                if self.sparsity is not None:  # a run table must not show an s= that nothing applied
                    raise ValueError(f"sparsity={self.sparsity!r} given with mask_mode='none'; without masks there is no sparsity")
            else:
                self.sparsity = effective_defaults(self.method, sparsity=self.sparsity).sparsity
                if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity < 1.0:
                    raise ValueError(f"sparsity={self.sparsity!r} is outside [0, 1); it is the fraction of mask entries set to zero")
                self.sparsity = float(self.sparsity)
        else:
            for name, default in (("sparsity", None), ("mask_mode", "learned"), ("share", "layers"), ("task_masks", "per_layer")):
                if getattr(self, name) != default:
                    raise ValueError(
                        f"{name}={getattr(self, name)!r} given for method {self.method!r}; only {', '.join(PROPETL_METHODS)} take a {name}"
                    )
        if self.method == "peft":
            if not isinstance(self.peft_type, str) or not self.peft_type:
                raise ValueError("method 'peft' needs peft_type, the name of a PEFT config type such as BOFT or LOKR")
        elif self.peft_type is not None:
            raise ValueError(f"peft_type={self.peft_type!r} given for method {self.method!r}; only method 'peft' takes a peft_type")
        if self.peft_args is not None:
            if self.method not in PEFT_METHODS:
                raise ValueError(f"peft_args given for method {self.method!r}; only the PEFT methods ({', '.join(PEFT_METHODS)}) take them")
            if not isinstance(self.peft_args, dict) or not all(isinstance(k, str) for k in self.peft_args):
                raise ValueError(f"peft_args={self.peft_args!r} must be a mapping of PEFT config argument names to values")
            self.peft_args = dict(self.peft_args)
        for name in ("reduction_factor", "lora_r", "prefix_length", "prefix_mid_dim"):
            _whole(name, getattr(self, name))
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha={self.lora_alpha!r} must be positive")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout={self.lora_dropout!r} must be in [0, 1)")
        if self.mask_seed is not None:
            _whole("mask_seed", self.mask_seed, minimum=0)
        targets = self.lora_targets
        if targets is not None and (not targets or not all(isinstance(t, str) and t.isidentifier() for t in targets) or len(set(targets)) < len(targets)):
            raise ValueError(f"lora_targets={targets!r} not supported; give roles (query, key, value) or module names, each at most once")

    @property
    def is_propetl(self) -> bool:
        return self.method in PROPETL_METHODS

    @property
    def is_peft(self) -> bool:
        """The method is PEFT's own code (:mod:`propetl.peft_methods`)."""
        return self.method in PEFT_METHODS

    @property
    def module_kind(self) -> str | None:
        return module_kind(self.method)

    @property
    def masked(self) -> bool:
        return self.is_propetl and self.mask_mode != "none"

    @property
    def shared(self) -> bool:
        return self.is_propetl and self.share == "layers"

    def require_learned_masks(self, what: str) -> None:
        """Several tasks on one network, or a new task on a frozen prototype, train nothing but masks and heads."""
        if not (self.is_propetl and self.mask_mode == "learned"):
            mode = f", mask_mode {self.mask_mode!r}" if self.is_propetl else ""
            raise ValueError(f"{what} needs a ProPETL method ({', '.join(PROPETL_METHODS)}) with learned masks; "
                             f"got method {self.method!r}{mode}. Dedicated methods run once per task")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PETLConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PETL config keys {unknown}; allowed: {sorted(known)}")
        return cls(**data)


@dataclass
class TrainConfig:
    """Everything a run depends on besides the PETL hyperparameters (see PETLConfig)."""

    model: str = _opt("minilm-l6", "backbone: embedded alias (minilm-l6, smollm2-135m), tiny test model (tiny-bert, tiny-llama, "
                                    "tiny-t5, ...), HF hub id or local dir")
    task: list[str] = _opt(["rt-polarity"], "task name (rt-polarity, snli, glue-*) or a local csv/jsonl/parquet file; "
                           "repeat --task to train one model on several tasks (ProPETL methods)", per_task=True)
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
    text_columns: list[str] | None = _opt(None, "file tasks: the text column, or two for pairs (default: text)")
    label_column: str | None = _opt(None, "file tasks: the label column (default: label)")
    task_type: str | None = _opt(None, "file tasks: classification | regression | generation (source -> target text); "
                                       "default: classification or regression, inferred where the labels leave no doubt")
    encoding: str | None = _opt(None, "file tasks: text encoding of a CSV/JSONL file (default: utf-8)")
    source_column: str | None = _opt(None, "generation files: the input text column (default: source)")
    target_column: str | None = _opt(None, "generation files: the target text column (default: target)")
    metrics: list[str] | None = _opt(None, "file tasks: the metrics whose mean is combined_score (default: accuracy; "
                                           "regression pearson, spearmanr; generation rouge1, rouge2, rougeL; also f1, "
                                           "matthews_correlation, bleu, chrf, exact_match)")
    task_format: str = _opt("classifier", "classifier (a classification head) | text-to-text (classification tasks as generation "
                                          "on a T5 or decoder model: task name and fields in, label word out, as the T5 code) | "
                                          "text-to-text-no-prefix (the same without the task name: the official adapter and ProPETL input)")
    max_new_tokens: int = _opt(128, "generation tasks: targets are truncated to this many tokens and generation stops there "
                                    "(official T5 GLUE: 128)")
    num_beams: int = _opt(1, "generation tasks: beams of the search (1: greedy; official: the model config's, 1 for t5-base)")
    label_smoothing: float = _opt(0.1, "generation tasks: label smoothing of the token loss (official T5 configs: 0.1); "
                                       "classifier heads train without, as the official RoBERTa scripts")
    max_length: int | None = _opt(None, "max tokens per example (default: the task's)")
    max_train: int | None = _opt(None, "cap on training examples")
    max_val: int | None = _opt(None, "cap on validation examples")
    max_test: int | None = _opt(None, "cap on test examples")
    prepared: list[str] | None = _opt(None, "tokenised task dir to reuse (made by `propetl prepare`), one per --task; default: <out>/data",
                                      per_task=True)
    task_temperature: float = _opt(10.0, "several --task: a batch's task is drawn with probability ~ size^(1/T) (official: 10)")
    prototype: str | None = _opt(None, "train only masks and head on this frozen prototype: an artifact dir or its prototype.safetensors")
    bf16: bool | str | None = _opt(None, "bf16 autocast: true, false or auto (where the hardware computes bf16 natively: a GPU "
                                         "that supports it, a CPU with AVX512 or AMX; else fp32); default: on a GPU that "
                                         "supports it, else off")
    fp16: bool | None = _opt(None, "fp16 autocast (GPU); default: on a GPU without bf16, else off")
    threads: int | None = _opt(None, "torch intra-op threads (default: torch's)")
    keep_checkpoints: bool = _opt(False, "keep checkpoints/ after the run finished")
    logging_steps: int = _opt(10, "log the training loss every N steps")

    def __post_init__(self) -> None:
        """Fail on values no run could use, before anything is loaded (the pipeline plans with this too)."""
        self._normalise_tasks()
        for name in ("batch_size", "grad_accum", "eval_every", "eval_batch_size", "logging_steps", "max_new_tokens", "num_beams"):
            _whole(name, getattr(self, name))
        for name in ("max_steps", "max_length", "max_train", "max_val", "max_test", "threads"):
            if getattr(self, name) is not None:
                _whole(name, getattr(self, name))
        for name in ("seed", "data_seed"):
            _whole(name, getattr(self, name), minimum=0)
        check_allowed("eval_strategy", self.eval_strategy, EVAL_STRATEGIES)
        if self.eval_strategy == "steps" and self.max_steps is not None and self.eval_every > self.max_steps:
            raise ValueError(f"eval_every={self.eval_every} exceeds max_steps={self.max_steps}: no validation would pick the checkpoint")
        if not self.epochs > 0:
            raise ValueError(f"epochs={self.epochs} must be positive")
        for name in ("lr", "mask_lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}={value} must be positive")
        for name in ("weight_decay", "mask_weight_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.task_type is not None:
            check_allowed("task_type", self.task_type, TASK_TYPES)
        check_allowed("task_format", self.task_format, TASK_FORMATS)
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.metrics is not None:
            self.metrics = list(self.metrics)
        if self.bf16 is not None:
            check_allowed("bf16", self.bf16, BF16_CHOICES)
        if self.bf16 is True and self.fp16:
            raise ValueError("bf16 and fp16 both set; choose one autocast precision")

    def _normalise_tasks(self) -> None:
        """A run trains a list of tasks, one or several, each named once, with one --prepared each. A single name
        (a study's or a caller's ``task="snli"``) is the one-task list."""
        self.task = [self.task] if isinstance(self.task, str) else list(self.task)
        if not self.task or not all(isinstance(t, str) and t for t in self.task):
            raise ValueError(f"task={self.task!r} must be a task name or a list of them")
        repeated = sorted({t for t in self.task if self.task.count(t) > 1})
        if repeated:
            raise ValueError(f"task {repeated[0]!r} is given more than once; each --task names another task")
        if self.prepared is not None:
            self.prepared = [self.prepared] if isinstance(self.prepared, str) else list(self.prepared)
            if len(self.prepared) != len(self.task):
                raise ValueError(f"{len(self.prepared)} --prepared for {len(self.task)} --task; give one per task, in the same order")
        if not self.task_temperature > 0:
            raise ValueError(f"task_temperature={self.task_temperature!r} must be positive")

    @property
    def prepared_dirs(self) -> list[str | None]:
        """The --prepared dir of each task (None: tokenise into the run directory)."""
        return self.prepared or [None] * len(self.task)

    @property
    def file_options(self) -> dict[str, Any]:
        """How to read a file task (its columns, type, encoding): only the options that were given."""
        return {name: getattr(self, name) for name in FILE_TASK_OPTIONS if getattr(self, name) is not None}
