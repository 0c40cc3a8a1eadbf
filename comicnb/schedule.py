"""Which pages each optimisation step takes, spread over processes, and the learning-rate schedule.

Every function is a pure function of its arguments (seed, epoch, step), which is what makes a resumed run take
exactly the steps of the uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def epoch_batches(num_pages: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The page indices of each step of ``epoch``: a permutation drawn from (seed, epoch) only."""
    order = torch.randperm(num_pages, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [order[i : i + batch_size] for i in range(0, num_pages, batch_size)]


def shard_batches(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """This process's batch of each synchronised step: every world-th batch, the last round padded by wrap-around.

    Every process then takes the same number of steps (DistributedSampler pads the same way), and with one process
    the batches come back unchanged.
    """
    if world == 1:
        return batches
    padded = batches + batches[: (-len(batches)) % world]
    return padded[rank::world]


def step_seed(seed: int, step: int) -> int:
    """The seed of one optimisation step's random draws."""
    return (seed * 1_000_003 + step) % (2**63)


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up from zero, then cosine decay to zero."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
