"""How a run's steps use the CPU (or GPU) kernels: what only changes speed, kept in one place.

* **Frozen linear weights, cast once.** Under ``torch.autocast`` every ``nn.Linear`` casts its weight to
  the autocast dtype on every call, and autocast caches the cast only for weights that require
  gradients. A PETL run freezes nearly all of them, so every forward re-cast the whole backbone
  (``torch.profiler`` on the 2-core CPU machines: 14% of a MiniLM training step; SmolLM2's tied LM
  head alone, 10% of generating). Within :func:`frozen_weights_in` those layers hold a copy of their
  weight in that dtype: the matmuls get the very same values, so every loss, gradient, prediction and
  score stays bit for bit what it was (``tests/test_kernels.py`` checks it for every method). The
  layer gets its own parameter, so a weight tied to an embedding (which autocast does not cast) keeps
  its fp32 tensor there; the original parameters come back on exit, so artifacts, merging and a reload
  compared in fp32 see the model as it was.
* **SDPA's math kernel for CPU training steps.** PyTorch's CPU flash-attention backward is slow at
  these lengths: a SmolLM2-135M step (batch 8, 40 tokens, bf16) took 1.58 s with it and 1.08 s with the
  math kernel. Encoders with attention dropout (MiniLM) get the math kernel anyway; decoders without it
  change numerically (another summation order): results/README.md says which committed studies were rerun.
  Evaluation and generation keep the default kernel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch.nn.attention import SDPBackend, sdpa_kernel

# PEFT layers whose base layer only its own forward reads (``base_layer(x)``), checked bit for bit in
# tests/test_kernels.py. Not cast: DoRA (a LoRA layer with use_dora) reads the base weight for its norm,
# OFT/BOFT rotate it, and VB-LoRA returns in the dtype of its input, which T5 sets from ``wo.weight.dtype``.
_PEFT_FORWARD_ONLY = ("lora", "vera", "fourierft", "ia3")


def _base_read_elsewhere(layer: BaseTunerLayer) -> bool:
    package = type(layer).__module__.split(".")[2]  # peft.tuners.<package>.layer
    return package not in _PEFT_FORWARD_ONLY or any(getattr(layer, "use_dora", {}).values())


def castable(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The plain linear layers whose frozen fp32 weight only their own forward reads."""
    read_elsewhere = {id(module.get_base_layer()) for module in model.modules()
                      if isinstance(module, BaseTunerLayer) and _base_read_elsewhere(module)}
    return [module for module in model.modules()
            if type(module) is torch.nn.Linear and id(module) not in read_elsewhere
            and not module.weight.requires_grad and module.weight.dtype == torch.float32]


@contextlib.contextmanager
def frozen_weights_in(model: torch.nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """Within: the frozen weights of :func:`castable` layers in ``dtype`` (None: unchanged). Re-entrant: an
    inner use finds them cast already and leaves them to the outer one to restore."""
    layers = castable(model) if dtype is not None else []
    originals = [layer.weight for layer in layers]
    for layer in layers:
        layer.weight = torch.nn.Parameter(layer.weight.detach().to(dtype), requires_grad=False)
    try:
        yield
    finally:
        for layer, original in zip(layers, originals):
            layer.weight = original


def training_attention(device: torch.device) -> contextlib.AbstractContextManager:
    """The SDPA kernels a training step may use on ``device``: the math kernel on CPU, any on a GPU."""
    return sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()
