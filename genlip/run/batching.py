"""Batch arithmetic for any number of GPUs: the recipe states the global batch (and the steps that give its budget);
the trainer derives the per-GPU micro-batch and the accumulation, and where no split is exact it takes the nearest
feasible global batch and rescales the steps so that ``steps x global batch`` (samples in stage 1, rows of packed
tokens in stage 2) stays the recipe's.

A paper recipe written for 256 GPUs then launches on 8, 16, 32, 64 or 128: 264 stage-2 rows on 16 GPUs become
16 x 1 x 17 = 272 rows per step for ``10300 x 264 / 272 = 9997`` steps (the same 2.72M rows, within half a step).
``train.batch_rounding: exact`` refuses instead of rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from genlip.run.config import RecipeError


class BatchError(RecipeError):
    """The global batch cannot be split over this world size under the recipe's rules (a recipe mistake: one line,
    exit code 2, like every other)."""


@dataclass(frozen=True)
class BatchPlan:
    world_size: int
    micro_batch: int  # per GPU and forward pass
    accum: int  # forward/backward passes per optimizer step
    steps: int
    requested_global: int
    requested_steps: int

    @property
    def global_batch(self) -> int:
        return self.world_size * self.micro_batch * self.accum

    @property
    def budget(self) -> int:
        """Samples (stage 1) or rows (stage 2) over the whole run."""
        return self.global_batch * self.steps

    @property
    def changed(self) -> bool:
        return self.global_batch != self.requested_global

    def describe(self) -> str:
        text = f"world {self.world_size} x micro {self.micro_batch} x accum {self.accum} = {self.global_batch} per step"
        if self.changed:
            text += (f" (train.global_batch {self.requested_global} does not split over {self.world_size} ranks: "
                     f"nearest feasible; {self.requested_steps} steps rescaled to {self.steps}, budget "
                     f"{self.budget:,} vs {self.requested_global * self.requested_steps:,})")
        return text


def plan_batches(global_batch: int, micro_batch: int, world_size: int, steps: int,
                 rounding: str = "nearest") -> BatchPlan:
    """Split ``global_batch`` over ``world_size`` ranks with micro-batches of at most ``micro_batch``.

    An exact split is preferred (largest micro-batch, so fewest accumulation passes, among those of at least half
    the recipe's micro-batch). Otherwise, with ``rounding="nearest"``, the global batch closest to the recipe's
    (ties: the larger micro-batch, then the smaller batch) with the steps rescaled to keep the budget; with
    ``rounding="exact"`` a :class:`BatchError` naming the feasible neighbours.
    """
    if min(global_batch, micro_batch, world_size, steps) < 1:
        raise BatchError("global batch, micro-batch, world size and steps must all be at least 1")
    lowest = max(1, math.ceil(micro_batch / 2))
    best = None
    for m in range(micro_batch, lowest - 1, -1):
        per_pass = world_size * m
        for a in {max(1, global_batch // per_pass), max(1, math.ceil(global_batch / per_pass))}:
            key = (abs(per_pass * a - global_batch), -m, per_pass * a)
            if best is None or key < best[0]:
                best = (key, m, a)
    if best[0][0] and world_size * micro_batch > global_batch:  # fewer samples than ranks x micro: smaller micro
        for m in range(lowest - 1, 0, -1):
            a = max(1, round(global_batch / (world_size * m)))
            key = (abs(world_size * m * a - global_batch), -m, world_size * m * a)
            if key < best[0]:
                best = (key, m, a)
    (diff, _, g), m, a = best
    if diff and rounding == "exact":
        raise BatchError(f"train.global_batch {global_batch} does not split over {world_size} ranks with micro-batches "
                         f"of {lowest}..{micro_batch}; the nearest is {g} (train.batch_rounding=nearest takes it and "
                         "rescales the steps)")
    new_steps = max(1, round(steps * global_batch / g)) if diff else steps
    return BatchPlan(world_size, m, a, new_steps, global_batch, steps)
