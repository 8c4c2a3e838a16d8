"""Under torchrun with 2 processes: a long epoch with logging off, for a test that sends SIGTERM to the agent.

Usage: preempt_through_agent.py ROOT train — train slowly (printing each micro-batch on rank 0, and the checkpoint
directory first), one epoch of about 20 s; the test signals the agent mid-epoch. Each
rank that stops with `Preempted` writes ROOT/rank{r}-stopped.json with its exit status and step, and re-raises.
Usage: preempt_through_agent.py ROOT finish LATEST — a straight run of the same config at full speed, and a resume
from LATEST; each rank saves both final states to ROOT/rank{r}-{straight,resumed}.pt.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch
from toys import ResumableRunner, SlowRunner, final_state, make_config

from danling.runner.preemption import Preempted

# 2 processes with batches of 8: 40 optimizer steps in the epoch, which at 0.5 s each lasts about 20 s.
SETTINGS = {"epoch_end": 1, "samples": 640, "val_samples": 25, "log_interval": 0}


class SlowerRunner(SlowRunner):
    delay = 0.5


root, mode = sys.argv[1], sys.argv[2]
if mode == "train":
    runner = SlowerRunner(make_config(os.path.join(root, "preempted"), **SETTINGS))
    if runner.is_main_process:
        print(f"checkpoints {runner.checkpoint_dir}", flush=True)
    try:
        runner.train()
    except Preempted as preempted:
        with open(os.path.join(root, f"rank{runner.rank}-stopped.json"), "w") as fp:
            json.dump({"exit_code": preempted.code, "steps": runner.config.steps}, fp)
        raise
else:
    straight = ResumableRunner(make_config(os.path.join(root, "straight"), **SETTINGS))
    straight.train()
    torch.save(final_state(straight), os.path.join(root, f"rank{straight.rank}-straight.pt"))
    resumed = ResumableRunner.from_checkpoint(sys.argv[3])
    resumed.train()
    torch.save(final_state(resumed), os.path.join(root, f"rank{resumed.rank}-resumed.pt"))
# No destroy_process_group() here: the runner tears the group down at exit (see preempt_two_processes.py).
