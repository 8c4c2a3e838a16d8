"""Where a run writes: its name, its id and the files under `{project_root}/{name}-{id}/{timestamp}`.

Run it with:

    python examples/snippets/run_directory.py
"""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


class TinyRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        self.model = nn.Linear(4, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        inputs = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        self.datasets.train = TensorDataset(inputs, inputs.sum(1, keepdim=True))
        self.datasets.val = TensorDataset(inputs[:8], inputs[:8].sum(1, keepdim=True))


def make_config(root: str, seed: int) -> dl.Config:
    config = dl.Config(experiment_name="regression", run_name="baseline", seed=seed, epoch_end=2, save_interval=1)
    config.project_root = root  # storage locations are not part of the id
    config.dataloader.batch_size = 8
    return config


def main() -> None:
    root = tempfile.mkdtemp()
    # --8<-- [start:identity]
    runner = TinyRunner(make_config(root, seed=1))
    print(f"name: {runner.name}")  # experiment_name-run_name
    print(f"id: {runner.id} = {runner.config.experiment_id:.8} + {runner.config.run_id:.8}")
    print(f"dir: {os.path.relpath(runner.dir, root)}")  # {name}-{id}/{timestamp}
    # --8<-- [end:identity]

    # --8<-- [start:files]
    runner.train()
    for directory, _, files in sorted(os.walk(runner.dir)):
        for name in sorted(files):
            print("file:", os.path.relpath(os.path.join(directory, name), runner.dir))
    # --8<-- [end:files]

    # --8<-- [start:relaunch]
    # The same config gives the same id, so a relaunch lands in the same {name}-{id} directory.
    print(f"same config, same id: {TinyRunner(make_config(root, seed=1)).id == runner.id}")
    # Any other value (here the seed) gives another id.
    print(f"other config, same id: {TinyRunner(make_config(root, seed=2)).id == runner.id}")
    # --8<-- [end:relaunch]


if __name__ == "__main__":
    main()
