"""Under torchrun with 2 processes: SIGTERM reaches rank 1 only, mid-epoch; both ranks must stop at one step.

Usage: preempt_two_processes.py ROOT — each rank writes ROOT/rank{r}.json with the step it stopped at.
"""

from __future__ import annotations

import json
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from toys import ResumableRunner, make_config

from danling.runner.preemption import Preempted, PreemptionAgreement

# Exchange the flags at every step, so the step the processes stop at does not depend on how fast they run.
PreemptionAgreement.period = 0


class SignalledRunner(ResumableRunner):
    def train_step(self, batch):
        loss = super().train_step(batch)
        if self.rank == 1 and self.config.iters == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to this process alone
        return loss


root = sys.argv[1]
runner = SignalledRunner(make_config(root, epoch_end=3, samples=60, val_samples=25, log_interval=2))
try:
    runner.train()
    stopped = None
except Preempted as preempted:
    stopped = preempted.code
record = {"exit_code": stopped, "iters": runner.config.iters, "steps": runner.config.steps}
if runner.is_main_process:
    record["latest"] = os.path.join(runner.checkpoint_dir, "latest.pth")
with open(os.path.join(root, f"rank{runner.rank}.json"), "w") as fp:
    json.dump(record, fp)
# No destroy_process_group() here: the runner created the group and tears it down at exit, after dropping the
# DDP wrapper that would keep it alive (destroying it while that wrapper lives can abort the process at exit).
