"""Under torchrun with 2 processes: a run fetching per sample, and one fetching batches that crashes and resumes.

Usage: batch_fetch_two_processes.py ROOT — each rank saves the final states to ROOT/rank{r}-{run}.pt for the runs
`per_sample` and `resumed` (fetching batches, crashed inside epoch 1, resumed from its last checkpoint).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch
from toys import Interrupted, ResumableRunner, final_state, make_config

root = sys.argv[1]
settings = {"samples": 60, "val_samples": 25, "checkpoint_interval": 1, "epoch_end": 2}

per_sample = ResumableRunner(make_config(os.path.join(root, "per_sample"), fetch_batches=False, **settings))
per_sample.train()
torch.save(final_state(per_sample), os.path.join(root, f"rank{per_sample.rank}-per_sample.pt"))

# 30 samples per process in batches of 8: 4 micro-batches per epoch; the crash comes inside epoch 1.
interrupted = ResumableRunner(make_config(os.path.join(root, "interrupted"), **settings, fail_at_iter=6))
try:
    interrupted.train()
except Interrupted:
    pass
else:
    raise AssertionError("the run was meant to be interrupted")
resumed = ResumableRunner.from_checkpoint(os.path.join(interrupted.checkpoint_dir, "latest.pth"))
resumed.config.fail_at_iter = None
resumed.train()
torch.save(final_state(resumed), os.path.join(root, f"rank{resumed.rank}-resumed.pt"))
