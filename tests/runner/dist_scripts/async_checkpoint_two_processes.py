"""Under torchrun with 2 processes: the same runs with synchronous and with asynchronous checkpoints.

Usage: async_checkpoint_two_processes.py ROOT — rank 0 writes ROOT/dirs.json: for each scenario, the checkpoint
directories of the synchronous and the asynchronous run, for the test to compare file by file.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from toys import Interrupted, ResumableRunner, make_config

root = sys.argv[1]
# 30 samples per process in batches of 8: 4 micro-batches per epoch; the crash comes inside epoch 1.
scenarios = {
    "epochs": {"epoch_end": 2, "save_interval": 1, "checkpoint_interval": 3},
    "crash": {"epoch_end": 3, "checkpoint_interval": 1, "fail_at_iter": 6},
}
dirs: dict[str, dict[str, str | bool]] = {}
rank = 0
for scenario, settings in scenarios.items():
    for mode in ("sync", "async"):
        config = make_config(
            os.path.join(root, scenario, mode), samples=60, val_samples=25, async_checkpoint=mode == "async", **settings
        )
        runner = ResumableRunner(config)
        rank = runner.rank
        try:
            runner.train()
        except Interrupted:
            assert "fail_at_iter" in settings, "only the crash scenario is interrupted"
        dirs.setdefault(scenario, {})[mode] = runner.checkpoint_dir
        # Whether the saves went through the background writer (made at the first save, on the main process).
        dirs[scenario][f"{mode}-in-background"] = runner.__dict__.get("_checkpoint_writer") is not None
if rank == 0:
    with open(os.path.join(root, "dirs.json"), "w") as file:
        json.dump(dirs, file)
