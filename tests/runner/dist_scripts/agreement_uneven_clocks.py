"""Under torchrun with 2 processes: `PreemptionAgreement` polled by processes whose steps take different times.

Usage: agreement_uneven_clocks.py ROOT — rank 1 receives SIGTERM at poll 40 (its flag stays raised, as the
watcher's does); each rank writes ROOT/rank{r}.json with the poll at which it learnt of the signal, and the signal.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from torch import distributed as dist

from danling.runner.preemption import PreemptionAgreement

dist.init_process_group("gloo")
rank = dist.get_rank()
PreemptionAgreement.period = 0.05
agreement = PreemptionAgreement()
# Rank 0 steps four times as fast: on its own clock alone it would exchange every 50 steps, rank 1 every 12.
step_time = 0.001 if rank == 0 else 0.004
agreed = None
for poll in range(1, 400):
    time.sleep(step_time)
    agreed = agreement.poll(signal.SIGTERM if rank == 1 and poll >= 40 else None)
    if agreed is not None:
        break
agreement.close()
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as fp:
    json.dump({"poll": poll, "signal": agreed}, fp)
dist.destroy_process_group()
