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
  math kernel. Decoders without attention dropout change numerically (another summation order):
  results/README.md says which committed studies were rerun. Evaluation and generation keep the default kernel.
* **Transformers' eager attention where a CPU training step's attention drops out.** SDPA's math kernel
  with dropout (an encoder such as MiniLM, attention dropout 0.1) casts and masks more than transformers'
  eager attention, which computes the same thing. Side by side on the 2-core Intel Xeon (one thread,
  bf16, MiniLM, batch 16 x 32) the old step took 1.11-1.42x as long as one with this and the PCG64 masks
  below (results/README.md). Without dropout SDPA stays (eager was 1.03x slower on SmolLM2), as does
  causal attention, where SDPA's mask may be implicit. Training draws other dropout masks and rounds
  differently, so encoder runs differ from those made before (results/README.md says which studies were rerun).
* **Dropout masks from numpy's PCG64 in CPU training steps.** torch draws a dropout mask element by
  element from its serial Mersenne Twister (``bernoulli_``: ~13 ns an element, a fifth of a MiniLM
  adapter step); numpy's PCG64 gives the same 32 random bits per element ~5x faster. Each step's
  generator is seeded by one draw from torch's generator at its first mask, so a run is as reproducible,
  and resumes as exactly, as before (the Trainer restores torch's state). An element is kept when its bits are at least
  ``floor(p * 2**32)``: p within 2**-32, the same distribution, another stream (``docs/fidelity.md``).
* **bf16 only where the hardware has it.** A CPU without AVX512 (the 2-core AMD EPYC 7xx3, AVX2 only)
  has no oneDNN bf16 kernels: torch falls back to a reference matmul, 44x slower than fp32 there
  (512x384 @ 384x1536, one thread). ``bf16: auto`` (:func:`native_bf16`) asks for bf16 only where it pays.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

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


def native_bf16() -> bool:
    """Whether this machine computes bf16 natively: a CUDA GPU that supports it, else a CPU for which
    oneDNN has bf16 kernels (AVX512 or AMX; torch's own predicate, guarded as its test suite guards it: a
    build without oneDNN has no bf16 kernels either)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@contextlib.contextmanager
def training_kernels(device: torch.device) -> Iterator[None]:
    """Within: one training step's kernels on ``device``: :func:`training_attention` and, on CPU, :class:`DropoutMasks`."""
    with training_attention(device), (DropoutMasks() if device.type == "cpu" else contextlib.nullcontext()):
        yield


@contextlib.contextmanager
def training_attention(device: torch.device) -> Iterator[None]:
    """Within: a training step's attention on ``device``. On CPU, transformers' ``sdpa`` attention runs SDPA's
    math kernel, or the model's eager attention where it drops out over a bidirectional mask; on a GPU, as it is.

    The override is a local entry of transformers' attention registry, which every model (and the prefix
    methods' wrapper) looks up at each call, so an evaluation inside a run, outside the step, is untouched."""
    if device.type != "cpu":
        yield
        return
    overridden = ALL_ATTENTION_FUNCTIONS["sdpa"] is not ALL_ATTENTION_FUNCTIONS._global_mapping["sdpa"]
    if not overridden:  # an inner use finds it in place and leaves it to the outer one
        ALL_ATTENTION_FUNCTIONS["sdpa"] = _eager_where_dropping_out(ALL_ATTENTION_FUNCTIONS["sdpa"])
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        if not overridden:
            del ALL_ATTENTION_FUNCTIONS["sdpa"]


def _eager_where_dropping_out(sdpa: Callable) -> Callable:
    def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, dropout: float = 0.0, is_causal: bool | None = None, **kwargs):
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        eager = None if dropout == 0.0 or causal else eager_attention(module)
        if eager is None:
            return sdpa(module, query, key, value, attention_mask, dropout=dropout, is_causal=is_causal, **kwargs)
        return eager(module, query, key, value, additive_mask(attention_mask, query.dtype), dropout=dropout, **kwargs)

    return attention


def eager_attention(module: torch.nn.Module) -> Callable | None:
    """The eager attention of ``module``'s model: by transformers' convention ``eager_attention_forward`` in the file
    that defines the module's class (None where that file has none)."""
    return getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)


def additive_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """An attention mask as eager attention adds it to the scores: SDPA's boolean mask (True: attend) as 0 / the
    dtype's minimum; a float mask is additive already."""
    if attention_mask is None or attention_mask.dtype != torch.bool:
        return attention_mask
    return torch.zeros_like(attention_mask, dtype=dtype).masked_fill(~attention_mask, torch.finfo(dtype).min)


class DropoutMasks(TorchFunctionMode):
    """Within: ``torch.nn.functional.dropout`` (every ``nn.Dropout``, transformers' eager attention) keeps an element
    where 32 bits from ``numpy.random.PCG64(seed)`` are at least ``floor(p * 2**32)``, and scales it by 1 / (1 - p)."""

    def __init__(self, seed: int | None = None):
        super().__init__()
        self.seed, self.bits = seed, None

    def _generator(self) -> np.random.PCG64:
        """Seeded at the first mask: by ``seed``, or by one draw from torch's default generator, so that a run's
        seed and a resumed run's restored state decide the masks as they decided torch's own, and a step that
        drops nothing out (a decoder without dropout) leaves torch's stream as it was."""
        if self.bits is None:
            self.bits = np.random.PCG64(int(torch.randint(2**62, ())) if self.seed is None else self.seed)
        return self.bits

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            return self.dropout(*args, **kwargs)
        return func(*args, **kwargs)

    def dropout(self, input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        if not training or not 0.0 < p < 1.0 or inplace or input.device.type != "cpu":
            return F.dropout(input, p, training, inplace)
        count = input.numel()
        bits = self._generator().random_raw((count + 1) // 2).view(np.uint32)[:count]
        keep = torch.from_numpy(bits >= np.uint32(int(p * 2**32))).view(input.shape)
        return input * keep * (1.0 / (1.0 - p))
