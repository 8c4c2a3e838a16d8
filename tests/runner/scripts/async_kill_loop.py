"""Launches of one run that saves `latest` in the background at every step, for a test to kill with SIGKILL.

Usage: async_kill_loop.py — reads commands on stdin, one a line: `run ROOT` trains (resuming from ROOT's `latest`,
if any) in a forked child and prints `pid N`, the child's `step N` after each optimizer step, and `exited N` (the
wait status) when the child is gone. Torch and DanLing are imported once, here, so a launch costs a fork, not a new
interpreter. The child that finishes writes its final weights to ROOT/final.pt.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch
from torch import nn
from torch.utils.data import TensorDataset
from toys import make_config

import danling as dl

# A forked child must not inherit an OpenMP pool (its threads are not forked): one thread, as in the test's env.
torch.set_num_threads(1)

STEPS = 60


class WideRunner(dl.TorchRunner):
    """About 2 MB of weights and 6 MB with Adam's state: every step changes all of it."""

    def __init__(self, config):
        super().__init__(config)
        self.model = nn.Linear(512, 1024)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(0)
        self.datasets.train = TensorDataset(
            torch.randn(256, 512, generator=generator), torch.randn(256, 1024, generator=generator)
        )

    def train_step(self, batch):
        loss = super().train_step(batch)
        print(f"step {self.config.steps}", flush=True)
        return loss


def launch(root: str) -> None:
    config = make_config(root, resume=True, step_end=STEPS, checkpoint_interval=1, async_checkpoint=True)
    runner = WideRunner(config)
    runner.train()
    assert runner.__dict__.get("_checkpoint_writer") is not None, "the saves were not written in the background"
    torch.save(runner.model.state_dict(), os.path.join(root, "final.pt"))


def warm_up() -> None:
    # What a first run imports and initialises lazily is done once, here, not again in every child.
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        config = make_config(root, step_end=1, save_checkpoints=False)
        WideRunner(config).train()


if __name__ == "__main__":
    warm_up()
    print("ready", flush=True)
    for line in sys.stdin:
        command, root = line.split()
        assert command == "run", command
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                launch(root)
                status = 0
            except BaseException as error:  # the test reads why on stderr
                print(f"child failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
                status = 1
            sys.stdout.flush()
            os._exit(status)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exited {status}", flush=True)
