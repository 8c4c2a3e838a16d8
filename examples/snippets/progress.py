"""Progress counters: `iters` counts micro-batches, `steps` optimizer updates, `epochs` the epoch index.

Run it with:

    python examples/snippets/progress.py
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


# --8<-- [start:runner]
class CountingRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        self.model = nn.Linear(4, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.datasets.train = TensorDataset(torch.randn(40, 4), torch.randn(40, 1))  # 10 batches of 4
        self.updates = []

    def step(self):
        super().step()  # the optimizer step; it adds one to config.steps
        self.updates.append((self.config.epochs, self.config.iters, self.config.steps))


# --8<-- [end:runner]


def main() -> None:
    # --8<-- [start:train]
    config = dl.Config(epoch_end=2, accum_steps=3, seed=0, log=False, project_root=tempfile.mkdtemp())
    config.dataloader.batch_size = 4
    runner = CountingRunner(config)
    totals = f"total_iters {runner.total_iters}, total_steps {runner.total_steps}, total_epochs {runner.total_epochs}"
    print(f"planned: {totals}")
    runner.train()
    for epochs, iters, steps in runner.updates:
        print(f"optimizer step {steps} after micro-batch {iters} (epoch {epochs})")
    print(f"done: iters {runner.config.iters}, steps {runner.config.steps}, epochs {runner.config.epochs}")
    print(f"progress: {runner.progress}")
    # --8<-- [end:train]


if __name__ == "__main__":
    main()
