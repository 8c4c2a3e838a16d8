"""Saving and loading a checkpoint with `TorchRunner` against plain `torch.save` / `torch.load` of the same objects.

The model holds about 100 MB of parameters and Adam doubles that with its state. DanLing's save adds the composed
run state (config, results, RNG states), a CRC-32 trailer, an fsync, an atomic rename and a hard link for `best`;
its load adds the checksum verification. A "periodic" save is the one `checkpoint_interval` makes inside an epoch:
`latest` only, written in place into the spare file the previous save left. Runs are interleaved in one process;
figures are medians.

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
        config = dl.Config(seed=0, log=False, project_root=root, megabytes=args.megabytes)
        runner = CheckpointRunner(config)
        latest = os.path.join(runner.checkpoint_dir, "latest.pth")
        plain = os.path.join(root, "plain.pth")
        names = (
            "danling save",
            "danling periodic save",
            "plain save",
            "plain save + fsync",
            "plain save to a new file",
        )
        times: dict[str, list[float]] = {name: [] for name in names}
        times.update({"danling load": [], "plain load": []})
        runner.save_checkpoint()  # warm-up: page cache, allocator
        plain_save(runner, plain, fsync=False)
        operations = {
            "danling save": runner.save_checkpoint,
            # A periodic save inside an epoch writes `latest` only: no `best` link, so its spare file is reused.
            "danling periodic save": lambda: runner.save_checkpoint(save_best=False),
            "plain save": lambda: plain_save(runner, plain, fsync=False),
            "plain save + fsync": lambda: plain_save(runner, plain, fsync=True),
            "plain save to a new file": lambda: plain_save(runner, plain, fsync=True, fresh=True),
            "danling load": lambda: runner.load_checkpoint(latest),
            "plain load": lambda: plain_load(runner, plain),
        }
        order = list(operations)
        for repeat in range(args.repeats):
            # Rotate the order, so no operation always follows the one that leaves the most dirty pages behind.
            for name in order[repeat % len(order) :] + order[: repeat % len(order)]:
                times[name].append(timed(operations[name]))
        size = os.path.getsize(latest) / 2**20
        medians = {name: statistics.median(values) for name, values in times.items()}
        print(f"checkpoint of {size:.0f} MiB (model and Adam state), median of {args.repeats} interleaved runs")
        for name, seconds in medians.items():
            print(f"  {name:<20} {seconds * 1e3:8.1f} ms")
        print(f"  save ratio vs plain torch.save: {medians['danling save'] / medians['plain save']:.3f}")
        periodic = medians["danling periodic save"]
        print(f"  periodic save ratio vs plain torch.save: {periodic / medians['plain save']:.3f}")
        print(f"  save ratio vs torch.save + fsync: {medians['danling save'] / medians['plain save + fsync']:.3f}")
        fresh = medians["plain save to a new file"]
        print(f"  save ratio vs torch.save + fsync to a new file: {medians['danling save'] / fresh:.3f}")
        print(f"  load ratio vs plain torch.load: {medians['danling load'] / medians['plain load']:.3f}")
        print("  saving is synchronous: training is blocked for the save's duration, so blocked time = save time")
    restore_print()


if __name__ == "__main__":
    main()
