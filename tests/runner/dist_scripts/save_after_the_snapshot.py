"""Two processes train an epoch, take 2 more `train_step`s by hand, and rank 0 alone calls `save_checkpoint`.

Usage: save_after_the_snapshot.py OUTPUT ROOT

The loop's last snapshot of every process's state is from the epoch's end, 2 micro-batches before the save: rank 1's
entry must be left empty rather than filled from it. Each process then loads the checkpoint and writes, to
OUTPUT/rank{r}.json, which entries are empty and the warnings the load gave.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from toys import ResumableRunner, make_config

import danling as dl
from danling.utils import distributed as du


def main() -> None:
    output, root = sys.argv[1], sys.argv[2]
    runner = ResumableRunner(make_config(root, epoch_end=1, samples=32, val_samples=8))
    runner.train()
    snapshot_iters = runner.config.iters
    batches = iter(runner.dataloaders.train)
    for _ in range(2):
        runner.train_step(next(batches))  # both processes: the gradients are reduced across them
    if runner.rank == 0:
        runner.save_checkpoint(name="manual")
    du.barrier()  # the file is written before anyone reads it
    checkpoint = dl.load(os.path.join(runner.checkpoint_dir, "manual.pth"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner.load_state_dict(checkpoint)
    report = {
        "snapshot_iters": snapshot_iters,
        "saved_iters": checkpoint["runner"]["iters"],
        "empty": [entry is None for entry in checkpoint["rng"]],
        "warnings": [str(warning.message) for warning in caught if issubclass(warning.category, RuntimeWarning)],
    }
    with open(os.path.join(output, f"rank{runner.rank}.json"), "w", encoding="utf-8") as file:
        json.dump(report, file)


if __name__ == "__main__":
    main()
