"""Save checkpoints of a large model in a loop until killed.  Usage: save_forever.py ROOT"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch
from torch import nn
from toys import make_config

import danling as dl


class LargeRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        self.model = nn.Linear(2000, 2500)  # 5M parameters: about 20 MB, 60 MB with Adam's state
        self.optimizer = torch.optim.Adam(self.model.parameters())
        self.model(torch.randn(2, 2000)).sum().backward()
        self.optimizer.step()


if __name__ == "__main__":
    runner = LargeRunner(make_config(sys.argv[1], resume=True, epoch_end=10**6))
    print(f"checkpoints {runner.checkpoint_dir}", flush=True)
    for step in range(runner.config.steps + 1, 10**6):
        runner.config.steps = step
        with torch.no_grad():
            runner.model.bias.fill_(step)
        runner.save_checkpoint()
        print(f"saved {step}", flush=True)
