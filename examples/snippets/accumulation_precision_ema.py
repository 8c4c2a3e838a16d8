"""Gradient accumulation, mixed precision and an EMA of the weights: three config keys and one attribute.

Run it with:

    python examples/snippets/accumulation_precision_ema.py
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import TensorDataset

import danling as dl


class SmallRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        inputs = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        self.datasets.train = TensorDataset(inputs, inputs.sum(1, keepdim=True))
        self.datasets.val = TensorDataset(inputs[:16], inputs[:16].sum(1, keepdim=True))
        self.model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        if self.config.get("ema_decay"):
            # --8<-- [start:ema]
            # An exponential moving average of the weights: updated after every optimizer step, moved to the
            # device with the model, saved in checkpoints, and used for evaluation and inference.
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.config.ema_decay))
            # --8<-- [end:ema]


def make_config(batch_size: int, **kwargs) -> dl.Config:
    config = dl.Config(seed=0, log=False, project_root=tempfile.mkdtemp(), **kwargs)
    config.dataloader.batch_size = batch_size
    return config


def accumulation() -> None:
    # --8<-- [start:accumulation]
    # Batches of 8, gradients accumulated over 4 of them: one optimizer step per 32 samples.
    accumulated = SmallRunner(make_config(batch_size=8, accum_steps=4, epoch_end=1))
    print(f"batch_size_equivalent: {accumulated.batch_size_equivalent}")
    accumulated.train()
    print(f"iters {accumulated.config.iters}, steps {accumulated.config.steps}")
    # Each micro-batch's loss is divided by the window's length, so a step follows the mean gradient of its
    # 32 samples: the same update as one batch of 32.
    whole = SmallRunner(make_config(batch_size=32, epoch_end=1))
    whole.train()
    same = all(
        torch.allclose(a, b, atol=1e-6) for a, b in zip(accumulated.model.parameters(), whole.model.parameters())
    )
    print(f"same weights as batches of 32: {same}")
    # --8<-- [end:accumulation]


def precision() -> None:
    # --8<-- [start:precision]
    runner = SmallRunner(make_config(batch_size=8, precision="bf16", epoch_end=1))
    dtypes = set()
    runner.model[0].register_forward_hook(lambda module, args, output: dtypes.add(output.dtype))
    runner.train()
    print(f"precision bf16: activations {sorted(map(str, dtypes))}, weights {runner.model[0].weight.dtype}")
    # --8<-- [end:precision]


def ema() -> None:
    # --8<-- [start:ema_train]
    runner = SmallRunner(make_config(batch_size=8, ema_decay=0.9, epoch_end=2))
    runner.train()
    print(f"EMA updates: {int(runner.ema.n_averaged)} (optimizer steps: {runner.config.steps})")
    print(f"evaluation uses the EMA: {runner.evaluation_model() is runner.ema}")
    # --8<-- [end:ema_train]


if __name__ == "__main__":
    accumulation()
    precision()
    ema()
