"""A runner on a fake clock for the throughput tests: fetching a sample takes 0.25 s, a micro-batch's step 1 s."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

import danling as dl
from danling.runner.throughput import Throughput

FETCH_SECONDS = 0.25
STEP_SECONDS = 1.0


class FakeClock:
    now = 0.0

    @classmethod
    def read(cls) -> float:
        return cls.now


class SlowDataset(Dataset):
    """Sample `i` is `(i, 2i)`; fetching it moves the fake clock on by `FETCH_SECONDS`."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        FakeClock.now += FETCH_SECONDS
        return torch.tensor([float(index)]), torch.tensor([2.0 * index])


class ClockedRunner(dl.TorchRunner):
    """Records each training step line's result and the size of each micro-batch it trained."""

    def __init__(self, config):
        super().__init__(config)
        Throughput.clock = staticmethod(FakeClock.read)
        self.model = nn.Linear(1, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.001)
        self.datasets.train = SlowDataset(self.config.get("samples") or 60)
        self.lines: list[dict] = []
        self.sizes: list[int] = []

    def train_step(self, batch):
        loss = super().train_step(batch)
        self.sizes.append(len(batch[0]))
        FakeClock.now += STEP_SECONDS
        return loss

    def step_log(self, split, iteration, length=None):
        result = super().step_log(split, iteration, length)
        self.lines.append({"iteration": iteration, **{k: float(v) for k, v in result.items()}})
        return result


def expected_window(sizes: list[int], world_size: int = 1) -> tuple[float, float]:
    """`(samples_per_s, data_wait)` of a window of micro-batches of `sizes` on each of `world_size` processes."""
    waiting = FETCH_SECONDS * sum(sizes)
    elapsed = waiting + STEP_SECONDS * len(sizes)
    return world_size * sum(sizes) / elapsed, waiting / elapsed
