"""FSDP2: the same runner, its parameters, gradients and optimizer state sharded over the processes.

Run it with:

    python examples/snippets/fsdp.py
    torchrun --nproc_per_node 2 examples/snippets/fsdp.py
"""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl
from danling.runner.fsdp_runner import consolidate_checkpoint


def regression(samples: int, seed: int) -> TensorDataset:
    inputs = torch.randn(samples, 8, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(inputs, inputs.sum(1, keepdim=True))


# --8<-- [start:runner]
class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.relu(self.linear(x))


class ShardedRunner(dl.Runner):  # config.platform picks the backend: "torch" (DDP) or "fsdp"
    def __init__(self, config):
        super().__init__(config)
        self.datasets.train = regression(128, seed=0)
        self.datasets.val = regression(30, seed=1)
        self.model = nn.Sequential(nn.Linear(8, 32), Block(32), Block(32), nn.Linear(32, 1))
        self.criterion = nn.MSELoss()
        # Built over the unsharded parameters as usual; the runner points it at the shards.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.01)


# --8<-- [end:runner]


def main() -> None:
    # --8<-- [start:main]
    config = dl.Config(
        platform="fsdp",
        fsdp_units=["Block"],  # each Block is its own FSDP unit, then the root
        epoch_end=3,
        seed=0,
        log=False,
        project_root=os.path.join(tempfile.gettempdir(), "danling-fsdp"),  # the same on every process
    )
    config.dataloader.batch_size = 16
    runner = ShardedRunner(config)
    runner.train()  # checkpoints: every process writes its shards, then latest.dcp points at them

    # One plain file of full weights, on one process, for sharing or evaluating without FSDP.
    if runner.is_main_process:
        latest = os.path.join(runner.checkpoint_dir, "latest.dcp")
        weights = dl.load(consolidate_checkpoint(latest, os.path.join(runner.dir, "model.pth")))
        print(f"full weights: {len(weights)} tensors, first layer {tuple(weights['0.weight'].shape)}")
    # --8<-- [end:main]


if __name__ == "__main__":
    main()
