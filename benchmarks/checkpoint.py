"""Saving and loading a checkpoint with `TorchRunner` against plain `torch.save` / `torch.load` of the same objects.

The model holds about 100 MB of parameters and Adam doubles that with its state. DanLing's save adds the composed
run state (config, results, RNG states), a checksum trailer, an fsync, an atomic rename and a hard link for `best`;
its load verifies every byte against the checksums. Two ways of saving, each in a run directory of its own:

- "save, new best each time": every save is also `best` (a run improving at every epoch); the `best` it replaces
  becomes the spare that the next save writes into;
- "periodic save": `latest` only, as `checkpoint_interval` saves inside an epoch, written in place into the spare
  file the previous save left.

The plain baseline is `torch.save` into an existing file name (no fsync) and `torch.load` of it. Runs are
interleaved in one process; figures are medians.

    python benchmarks/checkpoint.py [--repeats 5] [--megabytes 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from torch import nn

import danling as dl
from danling.runner.printing import restore_print


class CheckpointRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        width = 2048
        layers = max(1, int(self.config.megabytes * 2**20 / 4 / (width * width)))
        self.model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
        self.optimizer = torch.optim.Adam(self.model.parameters())
        # One step so Adam has its moment estimates: the optimizer state is as large as it is in training.
        self.model(torch.randn(2, width)).sum().backward()
        self.optimizer.step()


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def plain_save(runner: CheckpointRunner, path: str, fsync: bool, fresh: bool = False) -> None:
    if fresh and os.path.exists(path):
        os.unlink(path)  # a new file each time, as an atomic writer must create
    with open(path, "wb") as fp:
        torch.save({"model": runner.model.state_dict(), "optimizer": runner.optimizer.state_dict()}, fp)
        if fsync:
            fp.flush()
            os.fsync(fp.fileno())


def plain_load(runner: CheckpointRunner, path: str) -> None:
    state = torch.load(path, weights_only=True)
    runner.model.load_state_dict(state["model"])
    runner.optimizer.load_state_dict(state["optimizer"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--megabytes", type=float, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        runners = {}
        for kind in ("best", "periodic"):
            config = dl.Config(seed=0, log=False, project_root=os.path.join(root, kind), megabytes=args.megabytes)
            runners[kind] = CheckpointRunner(config)
        runner = runners["best"]
        latest = {kind: os.path.join(each.checkpoint_dir, "latest.pth") for kind, each in runners.items()}
        plain = os.path.join(root, "plain.pth")
        for each in runners.values():  # warm-up: page cache, allocator, the spare file
            each.save_checkpoint()
            each.save_checkpoint(save_best=False)
        plain_save(runner, plain, fsync=False)
        operations = {
            "danling save, new best each time": runners["best"].save_checkpoint,
            "danling periodic save": lambda: runners["periodic"].save_checkpoint(save_best=False),
            "plain save": lambda: plain_save(runner, plain, fsync=False),
            "plain save + fsync": lambda: plain_save(runner, plain, fsync=True),
            "plain save to a new file": lambda: plain_save(runner, plain, fsync=True, fresh=True),
            "danling load": lambda: runners["periodic"].load_checkpoint(latest["periodic"]),
            "plain load": lambda: plain_load(runner, plain),
        }
        times: dict[str, list[float]] = {name: [] for name in operations}
        order = list(operations)
        for repeat in range(args.repeats):
            # Rotate the order, so no operation always follows the one that leaves the most dirty pages behind.
            for name in order[repeat % len(order) :] + order[: repeat % len(order)]:
                times[name].append(timed(operations[name]))
        size = os.path.getsize(latest["periodic"]) / 2**20
        medians = {name: statistics.median(values) for name, values in times.items()}
        print(f"checkpoint of {size:.0f} MiB (model and Adam state), median of {args.repeats} interleaved runs")
        for name, seconds in medians.items():
            print(f"  {name:<34} {seconds * 1e3:8.1f} ms")
        plain_both = medians["plain save"] + medians["plain load"]
        for name in ("danling save, new best each time", "danling periodic save"):
            print(f"  {name} / plain torch.save: {medians[name] / medians['plain save']:.3f}")
            both = (medians[name] + medians["danling load"]) / plain_both
            print(f"    with the load, / plain torch.save + torch.load: {both:.3f}")
        print(f"  load / plain torch.load: {medians['danling load'] / medians['plain load']:.3f}")
        print("  saving is synchronous: training is blocked for the save's duration, so blocked time = save time")
    restore_print()


if __name__ == "__main__":
    main()
