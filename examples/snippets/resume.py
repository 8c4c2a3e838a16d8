"""Resuming a run: `from_checkpoint`, `config.checkpoint` and `resume=True`, and what a damaged checkpoint does.

Run it with:

    python examples/snippets/resume.py
"""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import danling as dl
from danling.utils.io import CorruptFileError


class Crash(RuntimeError):
    """Stands for whatever ends a run early: a bug, an out-of-memory error, a lost node."""


class ResumableRunner(dl.TorchRunner):
    crash_at_iter: int | None = None  # a runner attribute, not a config key: it must not change the run's id

    def __init__(self, config):
        super().__init__(config)
        inputs = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
        self.datasets.train = TensorDataset(inputs, inputs.sum(1, keepdim=True))  # 8 batches of 8 (the last of 4)
        self.datasets.val = TensorDataset(inputs[:16], inputs[:16].sum(1, keepdim=True))
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        # total_steps counts the whole run (on resume too), so assign the datasets first.
        self.scheduler = dl.LRScheduler(self.optimizer, total_steps=self.total_steps, warmup_steps=0.1)

    def train_step(self, batch):
        loss = super().train_step(batch)
        if self.config.iters == self.crash_at_iter:
            raise Crash(f"crashed after micro-batch {self.config.iters}")
        return loss


def make_config(root: str, **kwargs) -> dl.Config:
    config = dl.Config(seed=0, epoch_end=4, save_interval=1, log=False, project_root=root, **kwargs)
    config.dataloader.batch_size = 8
    return config


def main() -> None:
    root = tempfile.mkdtemp()

    # --8<-- [start:crash]
    interrupted = ResumableRunner(make_config(root))
    interrupted.crash_at_iter = 20  # in the third epoch, after epochs 0 and 1 were saved
    try:
        interrupted.train()
    except Crash as error:
        print(f"run stopped: {error}")
    latest = os.path.join(interrupted.checkpoint_dir, "latest.pth")
    print(f"latest.pth holds epochs {dl.load(latest)['runner']['epochs']}")
    # --8<-- [end:crash]

    # --8<-- [start:ways]
    # 1. from_checkpoint: build the runner from the checkpoint's own config.
    resumed = ResumableRunner.from_checkpoint(latest)
    print(f"from_checkpoint: epoch_begin {resumed.config.epoch_begin}, same directory {resumed.dir == interrupted.dir}")

    # 2. config.checkpoint: your config, plus the path to continue from (e.g. --checkpoint on the command line).
    by_path = ResumableRunner(make_config(root, checkpoint=latest))
    print(
        f"config.checkpoint: epoch_begin {by_path.config.epoch_begin}, same directory {by_path.dir == interrupted.dir}"
    )

    # 3. resume=True: relaunch the same config; the runner finds the newest intact checkpoint of this run.
    relaunched = ResumableRunner(make_config(root, resume=True))
    print(f"resume=True: found {os.path.relpath(relaunched.config.checkpoint, root)}")
    # --8<-- [end:ways]

    # --8<-- [start:finish]
    resumed.train()  # epochs 2 and 3
    straight = ResumableRunner(make_config(tempfile.mkdtemp()))
    straight.train()  # the same run, never interrupted
    same = all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), straight.model.parameters()))
    print(f"resumed run equals uninterrupted run: {same}")
    # --8<-- [end:finish]

    # --8<-- [start:damaged]
    # Checkpoints end with a CRC-32 checksum of their content: damage is detected when the file is loaded.
    with open(latest, "rb") as fp:
        content = bytearray(fp.read())
    content[len(content) // 2] ^= 0xFF  # flip the bits of one byte
    os.unlink(latest)  # best.pth and epoch-N.pth may be hard links to latest.pth: write a new file instead
    with open(latest, "wb") as fp:
        fp.write(content)
    try:
        dl.load(latest)
    except CorruptFileError as error:
        print(f"CorruptFileError: {str(error).replace(root, '...')}")
    # resume=True reports the damaged file on stderr and falls back to the newest intact one.
    fallback = ResumableRunner(make_config(root, resume=True))
    print(f"resume=True fell back to {os.path.basename(fallback.config.checkpoint)}")
    print(f"epoch_begin {fallback.config.epoch_begin}")
    # --8<-- [end:damaged]


if __name__ == "__main__":
    main()
