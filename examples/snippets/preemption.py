"""Preemption: on SIGTERM or SIGUSR1, `train` saves `latest` at the next optimizer step and exits.

Run it with:

    python examples/snippets/preemption.py
"""

from __future__ import annotations

import os
import signal
import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl
from danling.runner.preemption import Preempted


class PreemptedRunner(dl.TorchRunner):
    signal_at_iter: int | None = None

    def __init__(self, config):
        super().__init__(config)
        inputs = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        self.datasets.train = TensorDataset(inputs, inputs.sum(1, keepdim=True))  # 8 batches of 8
        self.model = nn.Linear(4, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)

    def train_step(self, batch):
        loss = super().train_step(batch)
        if self.config.iters == self.signal_at_iter:
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler (or torchrun) sends before it kills the job
        return loss


def make_config(root: str) -> dl.Config:
    config = dl.Config(seed=0, epoch_end=3, log=False, project_root=root)
    config.dataloader.batch_size = 8
    return config


def main() -> None:
    # --8<-- [start:preempt]
    runner = PreemptedRunner(make_config(tempfile.mkdtemp()))
    runner.signal_at_iter = 11
    try:
        runner.train()  # uncaught, Preempted ends the script with exit status 128 + signal number
    except Preempted as preempted:
        print(f"exit status {preempted.code} ({signal.Signals(preempted.signum).name})")
        checkpoint = preempted.checkpoint
    print(f"saved at micro-batch {dl.load(checkpoint)['runner']['iters']}")
    # --8<-- [end:preempt]

    # --8<-- [start:resume]
    resumed = PreemptedRunner.from_checkpoint(checkpoint)
    resumed.train()
    print(f"finished: epochs {resumed.config.epochs}, iters {resumed.config.iters}")
    # --8<-- [end:resume]


if __name__ == "__main__":
    main()
