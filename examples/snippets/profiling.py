"""`config.profile`: a `torch.profiler` trace of a window of optimizer steps, written under the run directory.

Run it with:

    python examples/snippets/profiling.py
"""

from __future__ import annotations

import glob
import json
import os
import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl


class ProfiledRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        inputs = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        self.datasets.train = TensorDataset(inputs, inputs.sum(1, keepdim=True))
        self.model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)


def main() -> None:
    # --8<-- [start:profile]
    config = dl.Config(seed=0, epoch_end=1, log=False)
    config.profile = {"wait": 2, "warmup": 1, "active": 2}  # optimizer steps 3 and 4 traced; `true` for 6 to 8
    config.project_root = tempfile.mkdtemp()
    config.dataloader.batch_size = 8
    runner = ProfiledRunner(config)
    runner.train()
    # --8<-- [end:profile]

    # --8<-- [start:read]
    (trace,) = glob.glob(os.path.join(runner.dir, "profile", "*.pt.trace.json"))
    with open(trace) as file:
        names = {event.get("name", "") for event in json.load(file)["traceEvents"]}
    steps = sorted(name for name in names if name.startswith("ProfilerStep"))
    print(f"trace: {os.path.basename(trace).split('.')[0]}, steps {steps}")
    # --8<-- [end:read]


if __name__ == "__main__":
    main()
