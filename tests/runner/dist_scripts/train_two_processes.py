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

# Every change this process makes to the filesystem under the project root, observed through Python's audit hooks.
writes: list[tuple[str, str]] = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
# The audit events that change the filesystem besides `open`, and the positions of the paths each one changes.
CHANGING_EVENTS = {
    "os.mkdir": (0,),
    "os.rmdir": (0,),
    "os.remove": (0,),
    "os.rename": (0, 1),
    "os.link": (1,),
    "os.symlink": (1,),
    "os.truncate": (0,),
    "os.chmod": (0,),
}


def audit(event: str, args: tuple) -> None:
    if event == "open":  # builtin open and os.open alike: (path, mode or None, flags)
        positions = (0,) if args[2] & WRITE_FLAGS else ()
    else:
        positions = CHANGING_EVENTS.get(event, ())
    for position in positions:
        path = args[position]
        if isinstance(path, (str, bytes, os.PathLike)):  # not a file descriptor, opened (and recorded) before
            path = os.path.abspath(os.fsdecode(path))
            if path == project_root or path.startswith(project_root + os.sep):
                writes.append((event, path))


sys.addaudithook(audit)

# torch.save to a path writes from C++ and raises no audit event: announce the open it makes.
_open_path_writer = torch.serialization._open_zipfile_writer_file.__init__


def _announced_open_path_writer(self, name):
    sys.audit("open", name, "wb", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    _open_path_writer(self, name)


torch.serialization._open_zipfile_writer_file.__init__ = _announced_open_path_writer

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
# No destroy_process_group() here: the runner created the group and tears it down at exit, after dropping the
# DDP wrapper that would keep it alive (destroying it while that wrapper lives can abort the process at exit).
