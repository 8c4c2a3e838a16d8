"""Asynchronous checkpoints (`config.async_checkpoint`) against synchronous ones, on the same runner.

The model holds about 100 MB of parameters (`--megabytes`) and Adam doubles that with its state. Measured, in one
process, interleaved over `--repeats` rounds (medians):

- stall per save: how long `save_checkpoint()` blocks the training loop, synchronous (serialise, checksum, write,
  fsync, rename) and asynchronous (the snapshot into the reused buffers only; the previous write is waited for
  beforehand, so what is measured is the save's own cost);
- throughput while a background write runs: training steps per second during the steps right after an
  asynchronous save returns, while its write is in flight, against the same number of steps with no save at all;
- the memory the snapshot holds (its buffers, allocated once and reused: their addresses are checked to stay put);
- with `--compare-writers`, training steps while the same snapshot is written by a thread or by another process
  (the choice of a thread rests on it).

With `--platform fsdp`, run it under `torchrun --nproc_per_node 2`: the same table for DCP's asynchronous save
against its synchronous one (every process saves its shards; the pointer moves once all have written).

    python benchmarks/async_checkpoint.py [--repeats 5] [--megabytes 100] [--steps 4] [--compare-writers]
    torchrun --nproc_per_node 2 benchmarks/async_checkpoint.py --platform fsdp
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

import torch
from torch import nn

import danling as dl
from danling.runner.printing import restore_print

WIDTH = 2048
BATCH = 16


class BenchmarkRunner(dl.Runner):
    """Linear layers of `WIDTH` squared, about `config.megabytes` of fp32 parameters, trained with Adam."""

    def __init__(self, config):
        super().__init__(config)
        layers = max(1, int(self.config.megabytes * 2**20 / 4 / (WIDTH * WIDTH)))
        self.model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(layers)])
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-6)
        self.batch = (torch.randn(BATCH, WIDTH), torch.randn(BATCH, WIDTH))


def train_steps(runner: BenchmarkRunner, steps: int) -> float:
    """Seconds `steps` training steps take (forward, backward, Adam), synchronised with the device."""
    input, target = (tensor.to(runner.device) for tensor in runner.batch)
    start = time.perf_counter()
    for _ in range(steps):
        runner.train_step((input, target))
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def save(runner: BenchmarkRunner, background: bool) -> float:
    """The stall of one save: the time `save_checkpoint` blocks, the previous background write already done."""
    runner.wait_for_checkpoint()
    runner.config.async_checkpoint = background
    return timed(lambda: runner.save_checkpoint(save_best=False))


def snapshot_storages(runner: BenchmarkRunner) -> list:
    """The host storages the snapshot is copied into: our writer's buffers, or those DCP's stager keeps."""
    writer = runner.__dict__.get("_checkpoint_writer")
    if writer is not None:
        return [buffer.untyped_storage() for buffer in writer.buffers._buffers.values()]
    made = runner.__dict__.get("_background_checkpointing_made")
    if made is None:
        return []
    # DefaultStager -> StateDictStager, which maps each staged storage (weakly) to its host copy.
    return list(made[0]._state_dict_stager._cached_storage_mapping.values())


def _write_on_request(connection, snapshot, path: str) -> None:
    """In a writer process: write `snapshot` (received once, through shared memory) at each request."""
    connection.send("ready")
    while connection.recv() == "write":
        dl.save(snapshot, path)
        connection.send("written")


def compare_writers(runner: BenchmarkRunner, root: str, steps: int, repeats: int) -> None:
    """Training steps while the same snapshot is written by a thread of this process, or by another process.

    The process receives the snapshot once, in shared memory, so what is compared is the write itself competing
    with training (for the GIL, the cores and the memory bandwidth), not the transfer a process writer would add.
    """
    from danling.runner.async_checkpoint import SnapshotBuffers

    snapshot = SnapshotBuffers().copy(runner.state_dict())
    for tensor in _tensors(snapshot):
        tensor.share_memory_()
    context = torch.multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_write_on_request, args=(theirs, snapshot, os.path.join(root, "process.pth")))
    process.start()
    ours.recv()
    times: dict[str, list[float]] = {"no write": [], "thread writes": [], "process writes": [], "write alone": []}
    for _ in range(repeats):
        times["no write"].append(train_steps(runner, steps))
        thread = threading.Thread(target=dl.save, args=(snapshot, os.path.join(root, "thread.pth")))
        thread.start()
        times["thread writes"].append(train_steps(runner, steps))
        thread.join()
        ours.send("write")
        times["process writes"].append(train_steps(runner, steps))
        ours.recv()
        times["write alone"].append(timed(lambda: dl.save(snapshot, os.path.join(root, "thread.pth"))))
    ours.send("stop")
    process.join()
    print(f"writer in a thread or in a process: {steps} steps while the snapshot is written, median of {repeats}")
    for name, values in times.items():
        print(f"  {name:<16} {statistics.median(values) * 1e3:8.1f} ms")


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--megabytes", type=float, default=100)
    parser.add_argument("--steps", type=int, default=4, help="training steps timed after each save")
    parser.add_argument("--platform", default="torch", choices=["torch", "fsdp"])
    parser.add_argument("--root", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument(
        "--compare-writers", action="store_true", help="also time a writer thread against a writer process (torch)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.root) as root:
        config = dl.Config(
            seed=0, log=False, project_root=root, megabytes=args.megabytes, platform=args.platform, run_id="bench"
        )
        config.dataloader.batch_size = BATCH
        runner = BenchmarkRunner(config)
        runner.mode = "train"
        train_steps(runner, 2)  # Adam's state exists, allocator and caches warm
        save(runner, background=False)
        save(runner, background=True)
        runner.wait_for_checkpoint()
        addresses = {storage.data_ptr() for storage in snapshot_storages(runner)}
        stalls: dict[str, list[float]] = {"sync": [], "async": []}
        quiet: list[float] = []
        during: list[float] = []
        writes: list[float] = []
        for repeat in range(args.repeats):
            # Alternate which goes first, so neither always follows the other's dirty pages.
            for background in (False, True) if repeat % 2 == 0 else (True, False):
                stalls["async" if background else "sync"].append(save(runner, background))
                if background:
                    # Steps while the write just started runs, then how much longer the write took after them.
                    during.append(train_steps(runner, args.steps))
                    writes.append(timed(runner.wait_for_checkpoint))
            quiet.append(train_steps(runner, args.steps))
        assert {storage.data_ptr() for storage in snapshot_storages(runner)} == addresses, "buffers were reallocated"
        runner.wait_for_checkpoint()
        if runner.is_main_process:
            sync, background = statistics.median(stalls["sync"]), statistics.median(stalls["async"])
            step_quiet, step_during = statistics.median(quiet), statistics.median(during)
            device = torch.cuda.get_device_name() if runner.device.type == "cuda" else "CPU"
            state_mb = sum(p.numel() for p in runner.unwrap(runner.model).parameters()) * 4 * 3 / 2**20
            print(
                f"{args.platform} on {device}, {runner.world_size} process(es), model + Adam state of "
                f"{state_mb:.0f} MiB, median of {args.repeats} interleaved rounds"
            )
            print(f"  stall per save, synchronous      {sync * 1e3:8.1f} ms")
            print(f"  stall per save, asynchronous     {background * 1e3:8.1f} ms (the snapshot)")
            print(f"  stall ratio async / sync         {background / sync:8.3f}   (aim: <= 0.10)")
            print(f"  {args.steps} steps, no save              {step_quiet * 1e3:8.1f} ms")
            print(f"  {args.steps} steps, write in background  {step_during * 1e3:8.1f} ms")
            print(f"  throughput ratio during / none   {step_quiet / step_during:8.3f}   (aim: >= 0.90)")
            left = statistics.median(writes)
            print(f"  write still running after them   {left * 1e3:8.1f} ms (0: it ended within the steps)")
            held = sum(storage.nbytes() for storage in snapshot_storages(runner)) / 2**20
            print(f"  snapshot memory (this process)   {held:8.1f} MiB, reused across saves")
        if args.compare_writers and args.platform == "torch":
            compare_writers(runner, root, args.steps, args.repeats)
    restore_print()


if __name__ == "__main__":
    main()
