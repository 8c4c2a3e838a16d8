"""TensorBoard: `tensorboard=True` writes the logged scalars under `{dir}/tensorboard`.

Run it with:

    python examples/snippets/tensorboard_logging.py
    tensorboard --logdir experiments   # then open http://localhost:6006
"""

from __future__ import annotations

import os
import tempfile

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


class LoggedRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        inputs = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        self.datasets.train = TensorDataset(inputs, inputs.sum(1, keepdim=True))
        self.datasets.val = TensorDataset(inputs[:16], inputs[:16].sum(1, keepdim=True))
        self.model = nn.Linear(4, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.metrics = dl.metrics.regression_metrics()


def main() -> None:
    # --8<-- [start:config]
    config = dl.Config(seed=0, epoch_end=3, tensorboard=True, log_interval=2, log=False)
    config.project_root = tempfile.mkdtemp()
    config.dataloader.batch_size = 8
    runner = LoggedRunner(config)
    runner.train()
    # --8<-- [end:config]

    # --8<-- [start:read]
    # Read the event files back, as TensorBoard would.
    events = EventAccumulator(os.path.join(runner.dir, "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    print(f"step tags: {sorted(tag for tag in tags if '/epoch/' not in tag)}")
    print(f"epoch tags: {sorted(tag for tag in tags if '/epoch/' in tag)}")
    print(f"val/epoch/loss at epochs {[event.step for event in events.Scalars('val/epoch/loss')]}")
    # --8<-- [end:read]


if __name__ == "__main__":
    main()
