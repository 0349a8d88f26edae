"""Binary masks that select a layer's sub-network of the shared prototype.

A learned mask is the top-k of ``|scores|`` over the whole tensor with
``k = numel - int(sparsity * numel)``: exactly k ones (the official ``GetSubnet``
zeroes the ``int((1 - kept) * numel)`` smallest entries). The backward pass is the
straight-through estimator: the gradient w.r.t. the 0/1 mask is handed unchanged
to ``|scores|`` and from there through the ``abs`` to the scores (as in the
official code and edge-popup), so the scores (their own parameter group, own
learning rate) learn which prototype entries a layer should keep. Skipping the
``abs`` in the backward would push a harmful entry with a negative score *up*
the ranking, i.e. train half of the mask the wrong way.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def kept_count(numel: int, sparsity: float) -> int:
    """How many entries a mask of this sparsity keeps (sparsity = fraction of zeros)."""
    return numel - int(sparsity * numel)


class _TopKStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, magnitudes: torch.Tensor, k: int) -> torch.Tensor:  # type: ignore[override]
        flat = magnitudes.detach().flatten()
        mask = torch.zeros_like(flat)
        mask[flat.topk(k, sorted=False).indices] = 1.0
        return mask.view_as(magnitudes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def topk_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """0/1 float mask keeping the largest |scores|, with a straight-through gradient to |scores|."""
    return _TopKStraightThrough.apply(scores.abs(), kept_count(scores.numel(), sparsity))


class Mask(nn.Module):
    """One layer's mask over one prototype tensor.

    A *learned* mask holds trainable scores and takes their top-k in every
    forward. Scores are uniform in ``±1/sqrt(fan_in)``, which is
    ``kaiming_uniform_(a=sqrt(5))``; ``fan_in`` is the one the official code's
    score tensor has (it stores some scores transposed or stacked over layers),
    so that a mask learning rate means the same here as there. It defaults to
    this tensor's own fan-in (``shape[1:]``'s product). A *fixed* mask holds a 0/1
    buffer: a random mask (the ablation that tells whether learning the
    sub-network matters) or a learned one after it was saved and loaded.
    """

    def __init__(self, shape: tuple[int, ...], sparsity: float, fixed: torch.Tensor | None = None, fan_in: int | None = None):
        super().__init__()
        self.shape = tuple(shape)
        self.sparsity = sparsity
        if fixed is None:
            bound = 1.0 / math.sqrt(fan_in or math.prod(self.shape[1:]))
            self.scores = nn.Parameter(torch.empty(self.shape).uniform_(-bound, bound))
        else:
            if tuple(fixed.shape) != self.shape:
                raise ValueError(f"mask of shape {tuple(fixed.shape)} given for a tensor of shape {self.shape}")
            self.register_buffer("fixed", fixed.to(torch.float32))

    @classmethod
    def random(cls, shape: tuple[int, ...], sparsity: float, generator: torch.Generator | None = None) -> "Mask":
        """A fixed mask with exactly as many ones as a learned mask of this sparsity."""
        numel = math.prod(shape)
        fixed = torch.zeros(numel)
        fixed[torch.randperm(numel, generator=generator)[: kept_count(numel, sparsity)]] = 1.0
        return cls(shape, sparsity, fixed.view(shape))

    @property
    def learned(self) -> bool:
        return not hasattr(self, "fixed")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def forward(self) -> torch.Tensor:
        return topk_mask(self.scores, self.sparsity) if self.learned else self.fixed

    def bits(self) -> torch.Tensor:
        """The current mask as booleans (what an artifact stores, one bit each)."""
        with torch.no_grad():
            return self().bool()

    def extra_repr(self) -> str:
        return f"shape={self.shape}, sparsity={self.sparsity}, learned={self.learned}"
