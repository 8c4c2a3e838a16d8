"""Trackers: `trackers=["csv", "tensorboard"]` sends every logged scalar to each, on TensorBoard's step axis.

Run it with:

    python examples/snippets/trackers.py
"""

from __future__ import annotations

import csv
import os
import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


class TrackedRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        inputs = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        self.datasets.train = TensorDataset(inputs, inputs.sum(1, keepdim=True))
        self.datasets.val = TensorDataset(inputs[:16], inputs[:16].sum(1, keepdim=True))
        self.model = nn.Linear(4, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)


def main() -> None:
    # --8<-- [start:config]
    config = dl.Config(seed=0, epoch_end=2, log_interval=4, log=False)
    config.trackers = ["csv", "tensorboard"]  # add "wandb" and "mlflow" once their extras are installed
    config.project_root = tempfile.mkdtemp()
    config.dataloader.batch_size = 8
    runner = TrackedRunner(config)
    runner.train()
    # --8<-- [end:config]

    # --8<-- [start:read]
    # One CSV file per split: a step column, then one column per scalar.
    for name in sorted(os.listdir(os.path.join(runner.dir, "csv"))):
        with open(os.path.join(runner.dir, "csv", name), newline="") as file:
            rows = list(csv.DictReader(file))
        print(f"{name}: steps {[int(row['step']) for row in rows]}, columns {list(rows[0])}")
    # run.json records what a resume needs to continue the same tracker runs.
    print(f"last step sent per split: {dl.load(os.path.join(runner.dir, 'run.json'))['trackers']['logged']}")
    # --8<-- [end:read]


if __name__ == "__main__":
    main()
