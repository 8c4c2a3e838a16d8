"""`config.compile`: the model's forward compiled in place, and a checkpoint that loads compiled or not.

Run it with:

    python examples/snippets/compile.py
"""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


class CompiledRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        inputs = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
        self.datasets.train = TensorDataset(inputs, inputs.sum(1, keepdim=True))
        self.datasets.val = TensorDataset(inputs[:25], inputs[:25].sum(1, keepdim=True))
        self.model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)


def main() -> None:
    # --8<-- [start:compile]
    config = dl.Config(seed=0, epoch_end=2, log=False)
    config.compile = True  # or a mode ("max-autotune"), or options: {"mode": "max-autotune", "dynamic": True}
    config.project_root = tempfile.mkdtemp()
    config.dataloader.batch_size = 8
    runner = CompiledRunner(config)
    runner.train()  # prints once how long compiling took
    # --8<-- [end:compile]

    # --8<-- [start:load]
    checkpoint = os.path.join(runner.checkpoint_dir, "latest.pth")
    keys = list(dl.load(checkpoint)["model"])
    print(f"checkpoint keys: {keys}")  # no `_orig_mod.`: the model kept its keys
    plain = CompiledRunner(dl.Config(seed=0, epoch_end=2, log=False, checkpoint=checkpoint, compile=False))
    same = all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(), runner.model.state_dict().values()))
    print(f"loaded uncompiled: same weights {same}")
    # --8<-- [end:load]


if __name__ == "__main__":
    main()
