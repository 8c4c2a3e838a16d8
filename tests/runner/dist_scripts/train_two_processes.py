"""Run under torchrun with 2 processes: train, evaluate and infer, and record what each rank saw.

Usage: train_two_processes.py OUTPUT_DIR PROJECT_ROOT
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch
from toys import ClassificationRunner, make_config

output_dir, project_root = sys.argv[1], os.path.abspath(sys.argv[2])

# Every filesystem write this process attempts under the project root, observed through Python's audit hooks.
writes: list[str] = []


def audit(event: str, args: tuple) -> None:
    if event in ("open", "tempfile.mkstemp", "os.mkdir", "os.rename", "os.link", "os.remove"):
        path = args[0]
        inside = isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).startswith(project_root)
        if inside and (event != "open" or any(flag in str(args[1]) for flag in "wax+")):
            writes.append(f"{event}:{os.fsdecode(path)}")


sys.addaudithook(audit)

# No seed: rank 0 draws one and every rank must receive it.
config = make_config(
    project_root, seed=None, epoch_end=2, log_interval=3, with_metrics=True, samples=96, val_samples=101
)
runner = ClassificationRunner(config)
rank = runner.rank

# Evaluate the untrained model first: DDP made rank 0's initial weights everyone's, as in a single process.
initial_eval = runner.evaluate(["val"])["val"].dict()

logged = []
original_step_log = runner.step_log


def step_log(split, iteration, length=None):
    local = runner.meters.value()["loss"]
    result = original_step_log(split, iteration, length)
    logged.append({"split": split, "local": local, "logged": result["loss"]})
    return result


runner.step_log = step_log
runner.train()
predictions = runner.infer("val")

record = {
    "rank": rank,
    "world_size": runner.world_size,
    "id": runner.id,
    "dir": runner.dir,
    "seed": runner.config.seed,
    "parameters": [p.detach().flatten().tolist() for p in runner.unwrap(runner.model).parameters()],
    "initial_eval": initial_eval,
    "logged": logged,
    "predictions": predictions.tolist(),
    "writes": writes,
    "results": {str(k): v.dict() for k, v in runner.results.items()},
}
with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as fp:
    json.dump(record, fp)
torch.distributed.destroy_process_group()
