"""The batches of a run, step by step, from a `torch.utils.data.DataLoader`.

`StepLoader.batch(step)` returns the batch of that step. Consecutive steps come
from one DataLoader iterator over a `StepBatchSampler` that runs from the first
requested step to the end of training across epochs (so there is no stall at
epoch boundaries, which is what persistent workers would otherwise buy); a
jump (resume, a test asking for step 0 again) starts a new iterator at that
step. Items are seeded per (seed, epoch, index) and batches arrive in sampler
order, so the result does not depend on `num_workers`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from .data import BadItem, Batch, collate_items
from .sampler import ItemSource, SeededItems, StepBatchSampler, mix_seed

log = logging.getLogger("marengine.data")


class StepLoader:
    """Batches for `rank` of a run: `batch(step)` for steps in [0, max_steps).

    num_workers: worker processes decoding items (0: in this process).
    pin_memory: page-locked host batches, for asynchronous copies to a GPU.
    Unreadable items are dropped from their batch and reported (`bad`) when a
    batch is first fetched."""

    def __init__(
        self,
        source: ItemSource,
        batch_size: int,
        seed: int,
        max_steps: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.items = SeededItems(source, seed)
        self.batch_size, self.seed, self.max_steps = batch_size, seed, max_steps
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.sampler = self._sampler(0)  # validates the sizes now, not at the first step
        self._iter: Iterator[Batch] | None = None
        self._next_step = -1
        self._last: tuple[int, Batch] | None = None
        self.bad = BadItemLog()

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def _sampler(self, start: int) -> StepBatchSampler:
        return StepBatchSampler(
            len(self.items),
            self.batch_size,
            self.seed,
            start,
            max(self.max_steps, start + 1),
            self.rank,
            self.world_size,
        )

    def _start(self, step: int) -> None:
        self.close()
        # the loader's own generator (not the global RNG, which the training step uses) seeds the workers
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.rank, step))
        loader = DataLoader(
            self.items,
            batch_sampler=self._sampler(step),
            num_workers=self.num_workers,
            collate_fn=collate_items,
            pin_memory=self.pin_memory,
            generator=gen,
        )
        self._iter = iter(loader)
        self._next_step = step

    def batch(self, step: int) -> Batch:
        """The batch of `step` (the same one again when asked twice in a row)."""
        if self._last is not None and self._last[0] == step:
            return self._last[1]
        if self._iter is None or step != self._next_step:
            self._start(step)
        b = next(self._iter)
        self.bad.report(b.bad, step, self.rank)
        self._next_step = step + 1
        self._last = (step, b)
        return b

    def close(self) -> None:
        """Stop the worker processes (a later `batch` starts new ones)."""
        if self._iter is not None:
            shutdown = getattr(self._iter, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        self._iter, self._last = None, None


class BadItemLog:
    """Counts unreadable items and logs each file once (per process)."""

    def __init__(self) -> None:
        self.count = 0  # bad items met (a file met in two epochs counts twice)
        self.files: set[str] = set()

    def report(self, bad: list[BadItem], step: int, rank: int = 0) -> None:
        for it in bad:
            self.count += 1
            if it.path not in self.files:
                self.files.add(it.path)
                log.warning(
                    "step %d%s: skipped unreadable input %s (%s); run `marengine check-data` to list all",
                    step,
                    f" rank {rank}" if rank else "",
                    it.path,
                    it.reason,
                )
