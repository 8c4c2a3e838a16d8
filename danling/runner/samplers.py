"""Samplers the runner builds its dataloaders with.

Both split a dataset across processes without relying on global random state: the training order of an epoch is
a function of `(seed, epoch)` alone, so a resumed run sees exactly the order an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EvaluationSampler", "TrainingSampler"]


class TrainingSampler(Sampler[int]):
    """Shuffled (or ordered) indices for one process, the same number on every process.

    Each epoch permutes the dataset with a generator seeded by `seed + epoch`, pads it (by wrapping around) to a
    multiple of `world_size` unless `drop_last`, and gives process `rank` every `world_size`-th index, as
    `torch.utils.data.DistributedSampler` does. Equal lengths keep per-step collectives in step across processes.

    Args:
        length: Number of samples in the dataset.
        shuffle: Permute each epoch.
        seed: Base seed of the permutation.
        rank: This process's rank.
        world_size: Number of processes.
        drop_last: Drop the tail instead of padding, so no sample is seen twice in an epoch.

    Examples:
        >>> sampler = TrainingSampler(5, shuffle=False, rank=1, world_size=2)
        >>> list(sampler), len(sampler)
        ([1, 3, 0], 3)
    """

    def __init__(
        self,
        length: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0
        if drop_last:
            self.num_samples = length // world_size
        else:
            self.num_samples = -(-length // world_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order to produce."""
        self.epoch = epoch

    def skip(self, samples: int) -> None:
        """Start the epoch after this process's first `samples` indices, to resume inside an epoch.

        Skipped samples are never produced, so the dataset never loads them. `skip(0)` restores the full epoch.

        Examples:
            >>> sampler = TrainingSampler(6, shuffle=False)
            >>> sampler.skip(4)
            >>> list(sampler), len(sampler)
            ([4, 5], 2)
        """
        if not 0 <= samples <= self.num_samples:
            raise ValueError(f"cannot skip {samples} samples of an epoch of {self.num_samples}")
        self.start = samples

    def indices(self) -> list[int]:
        """This process's indices for the current epoch, after any skipped ones."""
        return self.index_tensor().tolist()

    def index_tensor(self) -> torch.Tensor:
        """[`indices`][danling.runner.samplers.TrainingSampler.indices] as an int64 tensor (what batch fetching
        indexes with, without a round trip through a list)."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator)
        else:
            order = torch.arange(self.length)
        total = self.num_samples * self.world_size
        if total > len(order) and len(order):
            order = order.repeat(-(-total // len(order)))
        return order[self.rank : total : self.world_size][self.start :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.num_samples - self.start


class EvaluationSampler(Sampler[int]):
    """Dataset order, split into contiguous, unpadded chunks: each sample is seen exactly once over all processes.

    Concatenating the processes' outputs in rank order gives dataset order, which is how `infer` gathers.

    Examples:
        >>> [list(EvaluationSampler(5, rank, 2)) for rank in range(2)]
        [[0, 1, 2], [3, 4]]
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        base, extra = divmod(length, world_size)
        self.start = rank * base + min(rank, extra)
        self.stop = self.start + base + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def index_tensor(self) -> torch.Tensor:
        """This process's indices as an int64 tensor."""
        return torch.arange(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start
