"""Checkpoints inside an epoch: `checkpoint_interval` saves `latest` every N optimizer steps.

Run it with:

    python examples/snippets/mid_epoch_checkpoints.py
"""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


class Crash(RuntimeError):
    """Stands for whatever ends a run early."""


class LongEpochRunner(dl.TorchRunner):
    crash_at_iter: int | None = None

    def __init__(self, config):
        super().__init__(config)
        inputs = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        self.datasets.train = TensorDataset(inputs, inputs.sum(1, keepdim=True))  # 8 batches of 8
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Linear(8, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.02, momentum=0.9)

    def train_step(self, batch):
        loss = super().train_step(batch)
        if self.config.iters == self.crash_at_iter:
            raise Crash(f"crashed after micro-batch {self.config.iters}")
        return loss


def make_config(root: str) -> dl.Config:
    # --8<-- [start:config]
    config = dl.Config(seed=0, epoch_end=2, checkpoint_interval=3, log=False, project_root=root)
    # --8<-- [end:config]
    config.dataloader.batch_size = 8
    return config


def main() -> None:
    # --8<-- [start:crash]
    runner = LongEpochRunner(make_config(tempfile.mkdtemp()))
    runner.crash_at_iter = 14  # the 6th batch of the second epoch
    try:
        runner.train()
    except Crash as error:
        print(f"run stopped: {error}")
    latest = os.path.join(runner.checkpoint_dir, "latest.pth")
    checkpoint = dl.load(latest)
    print(f"latest.pth: steps {checkpoint['runner']['steps']}, position {checkpoint['position']}")
    # --8<-- [end:crash]

    # --8<-- [start:resume]
    resumed = LongEpochRunner.from_checkpoint(latest)
    resumed.train()  # continues the second epoch with its 5th batch, then finishes the run
    straight = LongEpochRunner(make_config(tempfile.mkdtemp()))
    straight.train()
    same = all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), straight.model.parameters()))
    print(f"resumed run equals uninterrupted run: {same}")
    print(
        f"train loss of epoch 1: resumed {resumed.results[1]['train']['loss']:.6f}, "
        f"uninterrupted {straight.results[1]['train']['loss']:.6f}"
    )
    # --8<-- [end:resume]


if __name__ == "__main__":
    main()
