"""Under torchrun with 2 processes: a clocked run (see `throughput_toys`); each rank writes its step lines and batch
sizes to ROOT/rank{r}.json.

Usage: throughput_two_processes.py ROOT
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from throughput_toys import ClockedRunner
from toys import make_config

root = sys.argv[1]
runner = ClockedRunner(make_config(os.path.join(root, "run"), epoch_end=1, samples=60, log_interval=2))
runner.train()
with open(os.path.join(root, f"rank{runner.rank}.json"), "w") as file:
    json.dump({"sizes": runner.sizes, "lines": runner.lines}, file)
