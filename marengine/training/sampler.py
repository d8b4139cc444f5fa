"""Which items each training step sees, and the randomness each item gets.

The batch order is a fixed function of (seed, step): epoch e is a permutation
seeded by (seed, e); step k of the epoch takes the k-th global batch of it
(drop-last), and rank r takes its slice of that batch. `StepBatchSampler` can
start at any step, so a resumed run sees exactly the batches it would have seen.

Per-item randomness (image flip, cached view, posterior sample) comes from a
generator seeded by (seed, epoch, index) (`item_generator`), never from global
RNG state: an item is the same whichever process or worker loads it, and
whatever happened before, so the number of DataLoader workers and resuming
cannot change a single bit of the data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol

import torch
from torch.utils.data import Dataset, Sampler

_MASK64 = (1 << 64) - 1


class ItemKey(NamedTuple):
    """One item occurrence: dataset index `index` as drawn in epoch `epoch`."""

    epoch: int
    index: int


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 finalizer chained over the parts)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & _MASK64)) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator an item's random choices come from, seeded by (seed, epoch, index)."""
    return torch.Generator().manual_seed(mix_seed(seed, epoch, index))


class ItemSource(Protocol):
    """What the training datasets provide: `get(index, generator)` -> (x, label) or a `BadItem`."""

    def __len__(self) -> int: ...

    def get(self, index: int, generator: torch.Generator | None = None): ...


class SeededItems(Dataset):
    """Maps an `ItemKey` to `source.get(index, item_generator(seed, epoch, index))`."""

    def __init__(self, source: ItemSource, seed: int) -> None:
        self.source, self.seed = source, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: ItemKey):
        epoch, index = key
        return self.source.get(index, item_generator(self.seed, epoch, index))


class StepBatchSampler(Sampler):
    """Yields this rank's `ItemKey`s for steps `start_step .. end_step - 1`.

    Epoch e = step // steps_per_epoch uses `randperm(num_items)` seeded by
    seed * 100003 + e; step k of the epoch takes global batch k of it and rank r
    its r-th slice of `batch_size` (items past the last full global batch are
    dropped). The same (seed, step) always gives the same keys."""

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        start_step: int,
        end_step: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.global_batch = batch_size * world_size
        if num_items < self.global_batch:
            raise ValueError(
                f"the data has {num_items} items, fewer than one global batch of "
                f"{self.global_batch}; lower --batch-size"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.start_step, self.end_step = rank, start_step, end_step
        self.steps_per_epoch = num_items // self.global_batch
        self._perm: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:  # [num_items], cached for the current epoch
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._perm = (epoch, torch.randperm(self.num_items, generator=g))
        return self._perm[1]

    def keys(self, step: int) -> list[ItemKey]:
        epoch, k = divmod(step, self.steps_per_epoch)
        start = k * self.global_batch + self.rank * self.batch_size
        return [ItemKey(epoch, int(i)) for i in self.permutation(epoch)[start : start + self.batch_size]]

    def __iter__(self) -> Iterator[list[ItemKey]]:
        for step in range(self.start_step, self.end_step):
            yield self.keys(step)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)
