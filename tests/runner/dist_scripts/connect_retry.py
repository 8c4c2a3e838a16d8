"""One process of two that joins a process group through `danling.utils.distributed.init_process_group` and sums
its rank with the other's: the test starts it without a launcher, against a store it serves itself, as
`torchrun`'s agent does (`TORCHELASTIC_USE_AGENT_STORE=True`), so keys a former pair left there are still there.

Usage: connect_retry.py (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment); prints `sum N`.
"""

from __future__ import annotations

import os

import torch
from torch import distributed as dist

from danling.utils import distributed as du

rank = int(os.environ["RANK"])
# A short timeout: a try that waits for a peer at a stale address gives up (and is retried) in seconds.
du.init_process_group("gloo", world_size=int(os.environ["WORLD_SIZE"]), rank=rank, timeout=10, backoff=0.2)
total = torch.tensor([rank])
dist.all_reduce(total)
print(f"sum {total.item()}", flush=True)
dist.destroy_process_group()
