"""Under torchrun with 2 processes: a straight run, and a run that crashes mid-epoch and is resumed.

Usage: resume_two_processes.py ROOT [SETTINGS_JSON] — each rank saves both final states to
ROOT/rank{r}-{straight,resumed}.pt. The settings default to 3 epochs.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch
from toys import Interrupted, ResumableRunner, final_state, make_config

root = sys.argv[1]
settings = {"samples": 60, "val_samples": 25, "checkpoint_interval": 1}
settings.update(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {"epoch_end": 3})

straight = ResumableRunner(make_config(os.path.join(root, "straight"), **settings))
straight.train()
rank = straight.rank
torch.save(final_state(straight), os.path.join(root, f"rank{rank}-straight.pt"))

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
torch.save(final_state(resumed), os.path.join(root, f"rank{rank}-resumed.pt"))
# No destroy_process_group() here: the runner created the group and tears it down at exit, after dropping the
# DDP wrapper that would keep it alive (destroying it while that wrapper lives can abort the process at exit).
