"""Under `torch.distributed.run --max-restarts N`: a run with `resume=True` whose workers die by SIGKILL at seeded
steps, restarted by the launcher each time, and the same run uninterrupted.

Usage: elastic_kill.py OUTPUT KILLS SEED [--no-straight]

The first attempt (unless `--no-straight`) trains the uninterrupted run under OUTPUT/straight (each rank saves its
final state to OUTPUT/straight-rank{r}.pt). Every attempt then trains the run under OUTPUT/experiments with
`resume=True`. The
seed draws KILLS (micro-batch, rank) pairs; the k-th kill comes on the first attempt after k - 1 kills happened
(counted in OUTPUT/kills.jsonl, one line each, written just before the kill), so a restart the launcher spends on
something else moves no kill. At the end each rank saves its final state to OUTPUT/elastic-rank{r}.pt and rank 0
writes OUTPUT/report.json (the run directory and the launcher's restart count).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch
from toys import ResumableRunner, final_state, make_config

output, kills, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rank = int(os.environ["RANK"])
restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
# 48 samples over two processes in batches of 8: 3 micro-batches an epoch, 9 in all; `latest` every 2 steps and at
# each epoch's end, so a kill resumes sometimes inside an epoch and sometimes at its start.
SETTINGS = {"samples": 48, "val_samples": 16, "epoch_end": 3, "checkpoint_interval": 2}
TOTAL_ITERS = 9

draw = random.Random(seed)
plan = [(it, draw.randrange(2)) for it in sorted(draw.sample(range(2, TOTAL_ITERS + 1), kills))]
log_path = os.path.join(output, "kills.jsonl")
# Read before the runner joins the process group: no process of this attempt can have killed itself yet.
done = 0
if os.path.exists(log_path):
    with open(log_path) as file:
        done = len(file.readlines())


class KilledRunner(ResumableRunner):
    """`ResumableRunner` whose process kills itself (SIGKILL, no cleanup) after the planned micro-batch."""

    def train_step(self, batch):
        loss = super().train_step(batch)
        if done < len(plan) and plan[done] == (self.config.iters, rank):
            with open(log_path, "a") as file:
                file.write(json.dumps({"iter": self.config.iters, "rank": rank, "restart": restart}) + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return loss


straight_path = os.path.join(output, f"straight-rank{rank}.pt")
if restart == 0 and "--no-straight" not in sys.argv[4:]:
    straight = ResumableRunner(make_config(os.path.join(output, "straight"), **SETTINGS))
    straight.train()
    torch.save(final_state(straight), straight_path)
    del straight

runner = KilledRunner(make_config(os.path.join(output, "experiments"), **SETTINGS, resume=True))
runner.train()
torch.save(final_state(runner), os.path.join(output, f"elastic-rank{rank}.pt"))
if rank == 0:
    with open(os.path.join(output, "report.json"), "w") as file:
        json.dump({"dir": os.path.abspath(runner.dir), "restart": restart}, file)
