"""Two processes started by hand (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set by the test), with a short
`config.timeout`: rank 1 stops itself (SIGSTOP) after micro-batch 3, as a hung process would.

Usage: hang.py ROOT TIMEOUT — rank 0 prints `checkpoints DIR` first; rank 1 prints `stopping` before it stops.
"""

from __future__ import annotations

import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from toys import ResumableRunner, make_config


class Hanging(ResumableRunner):
    def train_step(self, batch):
        loss = super().train_step(batch)
        if self.rank == 1 and self.config.iters == 3:
            sys.stdout.write("stopping\n")  # not print: the runner's print is silent on other processes
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGSTOP)
        return loss


root, timeout = sys.argv[1], float(sys.argv[2])
runner = Hanging(make_config(root, epoch_end=3, samples=64, val_samples=16, timeout=timeout, checkpoint_interval=1))
if runner.is_main_process:
    print(f"checkpoints {runner.checkpoint_dir}", flush=True)
runner.train()
