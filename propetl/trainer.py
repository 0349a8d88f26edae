"""The transformers Trainer as a run uses it: per-group learning rates, divergence checks, checkpoints
of the trained tensors only, and for several tasks task-pure batches and a validation pass per task.

A run's loop is the Trainer's own (resume, schedule, best checkpoint); this module holds only what
propetl changes in it, so that :mod:`propetl.training` reads as the run's steps.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from transformers import GenerationConfig, Trainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.utils import SAFE_WEIGHTS_NAME

from . import timing
from .config import TrainConfig
from .kernels import frozen_weights_in, training_kernels
from .multitask import set_task
from .param_groups import adamw, parameter_groups
from .task_kinds import IGNORE_INDEX
from .task_sampler import TemperatureBatchSampler

# A training loss this many times the first step's (e.g. 70 for a fresh binary classifier's 0.69) is a
# run that blew up, however finite: at lr 1e4 the loss reaches 1e5 and would otherwise be recorded as a run.
DIVERGENCE_FACTOR = 100.0
# The Trainer's speed figures in a metrics record: they vary run to run, so no record keeps them.
SPEED_KEYS = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time")


class Diverged(RuntimeError):
    """A non-finite loss or gradient, or an exploded loss: the run stops at that step and is recorded as diverged."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"diverged at step {step}: {reason}")
        self.step, self.reason = step, reason


def strip(metrics: dict[str, float], prefix: str, drop: tuple[str, ...] = (*SPEED_KEYS, "loss", "epoch")) -> dict[str, float]:
    """Metric names without the Trainer's prefix; timings vary run to run, so they are left out."""
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.removeprefix(prefix) not in drop}


class PETLTrainer(Trainer):
    """The Trainer with per-group learning rates, divergence checks, a validation pass per task and, for several
    tasks, task-pure batches and a task switch per batch."""

    def __init__(self, *args, run_config: TrainConfig, task_metrics: dict[str, Any],
                 batch_sampler: TemperatureBatchSampler | None = None, generation: GenerationConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_config = run_config
        self.task_metrics, self.batch_sampler = task_metrics, batch_sampler
        self.generation = generation
        if generation is not None and not self.model.config.is_encoder_decoder:
            # a decoder's loss is on its target tokens only: the LM head scores those positions alone
            self.compute_loss_func = functools.partial(target_token_loss, self.args.label_smoothing_factor)
        self.task_names = list(task_metrics)
        self.first_loss: float | None = None  # of this session: a resumed run compares with its first step
        # bf16 autocasts training and evaluation alike, so frozen weights may stay in bf16 throughout
        self.frozen_dtype = torch.bfloat16 if run_config.bf16 else None

    def train(self, *args, **kwargs):
        with frozen_weights_in(self.model, self.frozen_dtype):
            return super().train(*args, **kwargs)

    def evaluate(self, eval_dataset: dict[str, Any] | None = None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Each task's split (``eval_dataset``: by task, default the validation splits) with its own metrics.

        Several tasks give ``{prefix}_{task}/{metric}`` and ``{prefix}_combined_score``, the tasks' mean, which
        selects the checkpoint; a single task gives ``{prefix}_{metric}``, its loss included.
        """
        # Trainer autocasts training steps only; evaluation in fp32 costs ~2x on CPU
        with (timing.phase("test" if metric_key_prefix == "test" else "validation"),
              frozen_weights_in(self.model, self.frozen_dtype),
              torch.autocast(self.args.device.type, dtype=torch.bfloat16, enabled=self.run_config.bf16)):
            datasets = self.eval_dataset if eval_dataset is None else eval_dataset
            several = len(datasets) > 1
            metrics: dict[str, float] = {}
            for task, dataset in datasets.items():
                if several:
                    set_task(self.model, task)
                self.compute_metrics = self.task_metrics[task]
                output = self.evaluation_loop(self.get_eval_dataloader(dataset), description=f"Evaluation {task}",
                                              ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
                dropped = (*SPEED_KEYS, "loss") if several else SPEED_KEYS  # a single task's history keeps its loss
                metrics |= {f"{metric_key_prefix}_{task + '/' if several else ''}{key}": value
                            for key, value in strip(output.metrics, metric_key_prefix + "_", drop=dropped).items()}
            if several:
                metrics[f"{metric_key_prefix}_combined_score"] = float(np.mean(
                    [metrics[f"{metric_key_prefix}_{task}/combined_score"] for task in datasets]))
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    def evaluation_order(self, dataset: Any) -> list[int]:
        """The dataset rows in the order evaluation visits them: the Trainer's length-grouped evaluation sampler draws
        its batches with a generator seeded by the run's seed, so the order differs between seeds (never the scores)."""
        sampler = self._get_eval_sampler(dataset)
        return list(range(len(dataset))) if sampler is None else list(sampler)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Generated token ids (and the target ids as labels) for generation tasks (:mod:`propetl.task_kinds`), the
        model's outputs otherwise. ``generate`` runs with the KV cache; a decoder continues its prompts, so they are
        re-padded on the left and only the new tokens kept."""
        if self.generation is None:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        prompts, attention = inputs["input_ids"], inputs["attention_mask"]
        decoder = not self.model.config.is_encoder_decoder
        if decoder:
            prompts, attention = _left_padded(prompts, attention)
        with torch.no_grad():
            generated = self.model.generate(input_ids=prompts, attention_mask=attention, generation_config=self.generation)
        return None, generated[:, prompts.shape[1]:] if decoder else generated, inputs["labels"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        task_ids = inputs.pop("task_id", None)
        if task_ids is not None:
            if not bool((task_ids == task_ids[0]).all()):
                raise RuntimeError("a batch mixes tasks; each batch must come from one task")
            set_task(model, self.task_names[int(task_ids[0])])
        scored = contextlib.nullcontext()
        if self.compute_loss_func is not None and "labels" in inputs:
            scored = target_positions_only(model.get_output_embeddings(), inputs["labels"][:, 1:] != IGNORE_INDEX)
        with scored:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def get_train_dataloader(self):
        if self.batch_sampler is None:
            return super().get_train_dataloader()
        loader = DataLoader(self.train_dataset, batch_sampler=self.batch_sampler, collate_fn=self.data_collator, num_workers=0)
        return self.accelerator.prepare(loader)

    def training_step(self, model, inputs, num_items_in_batch=None):
        with training_kernels(self.args.device):
            loss = super().training_step(model, inputs, num_items_in_batch)
        step = self.state.global_step + 1
        value = loss.item()
        if self.first_loss is None:
            self.first_loss = value
        if not math.isfinite(value) or value > DIVERGENCE_FACTOR * max(self.first_loss, 1e-2):
            raise Diverged(step, f"loss {value:.4g} (first step: {self.first_loss:.4g})")
        # under fp16 the loss scaler expects overflowing gradients now and then (it skips that step)
        norms = [] if self.args.fp16 else [p.grad.norm() for p in model.parameters() if p.grad is not None]
        if norms and not torch.isfinite(torch.stack(norms).sum()):
            raise Diverged(step, "non-finite gradient")
        return loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """A checkpoint's weights are what training changes: trainable tensors and buffers. The frozen
        backbone is rebuilt from the pretrained weights on resume (a MiniLM PETL checkpoint: under
        1 MB instead of 90 MB). transformers loads checkpoints non-strictly; see _issue_warnings_after_load."""
        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({name: tensor.contiguous() for name, tensor in _trained_state(self.model).items()},
                  str(out / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
        torch.save(self.args, out / TRAINING_ARGS_NAME)

    def _issue_warnings_after_load(self, load_result) -> None:
        missing = sorted(set(load_result.missing_keys) & set(_trained_state(self.model)))
        if missing or load_result.unexpected_keys:
            raise RuntimeError(f"checkpoint does not fit the model: missing trained tensors {missing[:3]}, "
                               f"unexpected {load_result.unexpected_keys[:3]}")

    # Checkpoint writes and reads are timed apart from the training steps they interrupt.
    def _save_checkpoint(self, model, trial):
        with timing.phase("checkpoint"):
            super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        with timing.phase("checkpoint"):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        with timing.phase("checkpoint"):
            super()._load_best_model()

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = adamw(parameter_groups(self.model, self.run_config, self.get_decay_parameter_names(self.model)))
        return self.optimizer


@contextlib.contextmanager
def target_positions_only(head: torch.nn.Module, scored: torch.Tensor) -> Iterator[None]:
    """The LM head applied to the hidden states that predict a target token (``scored``: batch x length - 1), as
    rows of one matrix, instead of to every position.

    A text-to-text prompt is ~35 tokens and its label word 1-3: scoring all positions against SmolLM2's
    49,152-word vocabulary (then a float32 log-softmax over them) took a quarter to a third of a training
    step (results/README.md), spent on logits the loss ignores. The positions differ per row (right
    padding), which transformers' ``logits_to_keep`` (the same positions in every row) cannot express; a
    pre-hook on the head can, whatever wraps the model (PEFT, our modules)."""
    def gather(_module: torch.nn.Module, args: tuple) -> tuple:
        return (args[0][:, :-1][scored], *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def target_token_loss(label_smoothing: float, outputs: Any, labels: torch.Tensor,
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """The decoder's loss from the logits of :func:`target_positions_only`: cross-entropy (label-smoothed as
    transformers' ``LabelSmoother``) summed over the target tokens and divided by their number in the whole
    accumulated batch, as the Trainer normalises a model's own loss."""
    shifted = labels[:, 1:]
    targets = shifted[shifted != IGNORE_INDEX]
    total = torch.nn.functional.cross_entropy(outputs["logits"].float(), targets, reduction="sum", label_smoothing=label_smoothing)
    return total / (targets.numel() if num_items_in_batch is None else num_items_in_batch)


def _trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state a checkpoint must hold: everything but the frozen parameters, a tied tensor once (fully
    fine-tuned T5 ties its embeddings and LM head: loading one name restores them all)."""
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        storage = (tensor.data_ptr(), tensor.shape, tensor.stride()) if tensor.numel() else name
        if name not in frozen and storage not in seen:
            state[name] = tensor
            seen.add(storage)
    return state


def _left_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows with their padding moved to the left (each row rolled by its pad count)."""
    pads = (attention_mask == 0).sum(dim=1, keepdim=True)
    order = (torch.arange(input_ids.shape[1], device=input_ids.device) - pads) % input_ids.shape[1]
    return input_ids.gather(1, order), attention_mask.gather(1, order)

