"""Batches for training one network on several tasks: every batch from one task, tasks drawn by temperature.

As in the official multi-task sampler (ChaosCodes/ProPETL ``propetl-t5/data/multitask_sampler.py``)
a batch's task is drawn with probability proportional to ``size ** (1 / T)``: T = 1 samples
tasks by their size, a large T (official: 10) nearly uniformly, so a small task is not drowned.
An epoch is ``ceil(total / batch_size)`` batches; each task walks through its own shuffled
order and reshuffles when it runs out. Everything is drawn from ``seed + epoch``, so the
Trainer's resume (which replays the epoch and skips the batches already trained) continues
with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def task_probabilities(sizes: Sequence[int], temperature: float) -> torch.Tensor:
    """Probability of each task for one batch: proportional to size^(1/T)."""
    weights = torch.tensor([float(size) for size in sizes], dtype=torch.float64) ** (1.0 / temperature)
    return weights / weights.sum()


class TemperatureBatchSampler(Sampler[list[int]]):
    """Index batches into the concatenation of the tasks' datasets (in ``sizes`` order)."""

    def __init__(self, sizes: Sequence[int], batch_size: int, temperature: float, seed: int):
        if any(size < 1 for size in sizes):
            raise ValueError(f"every task needs training examples; sizes {list(sizes)}")
        self.sizes, self.batch_size, self.seed, self.epoch = list(sizes), batch_size, seed, 0
        self.probabilities = task_probabilities(sizes, temperature)
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(sum(self.sizes) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        tasks = torch.multinomial(self.probabilities, len(self), replacement=True, generator=generator).tolist()
        orders: list[list[int]] = [[] for _ in self.sizes]
        for task in tasks:
            batch: list[int] = []
            while len(batch) < self.batch_size:
                if not orders[task]:
                    orders[task] = torch.randperm(self.sizes[task], generator=generator).tolist()
                take = min(self.batch_size - len(batch), len(orders[task]))
                batch += orders[task][:take]
                orders[task] = orders[task][take:]
            yield [self.offsets[task] + index for index in batch]
