"""Training by steps: `step_end` without `epoch_end`, evaluating every `eval_interval` optimizer steps.

Run it with:

    python examples/snippets/by_steps.py
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


# --8<-- [start:runner]
class StepsRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(80, 4, generator=generator)
        targets = inputs.sum(1, keepdim=True)
        self.datasets.train = TensorDataset(inputs[:64], targets[:64])  # 8 batches of 8: a pass is 8 steps
        self.datasets.val = TensorDataset(inputs[64:], targets[64:])
        self.model = nn.Linear(4, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        # total_steps is step_end: the schedule ends exactly where training does.
        self.scheduler = dl.LRScheduler(self.optimizer, total_steps=self.total_steps, method="numerical")


# --8<-- [end:runner]


def main() -> None:
    # --8<-- [start:train]
    config = dl.Config(seed=0, step_end=30, eval_interval=10, log=False, project_root=tempfile.mkdtemp())
    config.dataloader.batch_size = 8
    runner = StepsRunner(config)
    runner.train()
    print(f"steps {runner.config.steps}, passes begun {runner.config.epochs + 1}, results at {list(runner.results)}")
    print(runner.results_table(["train.loss", "val.loss"]))
    # --8<-- [end:train]


if __name__ == "__main__":
    main()
