"""FSDP2 against DDP and a single process: checkpoint time and memory per process, on 2 CPU processes (gloo).

(a) Checkpoint: a model of about 100 MB with its AdamW state after one step (about 300 MB in all), saved and
loaded as a Distributed Checkpoint by 2 FSDP2 processes (each writes and reads its own shards; the state goes
through `get_state_dict`/`set_state_dict`) against `torch.save` (with fsync, as DCP fsyncs) and `torch.load` +
`load_state_dict` of the same full state on one process. Also: reading the DCP checkpoint back into full tensors
on one process with no process group (`dcp_to_full_state_dict`). Medians of interleaved repeats; the files stay
in the page cache, so loads measure deserialisation and resharding more than the disk.

(b) Memory per process after one training step, FSDP2 against DDP on the same model of about 100 MB: 8 equal
blocks (two linear layers each) inside one `nn.Sequential` container. FSDP2 shards it with no configuration (the
runner's default units: the smallest subtrees of at least `DEFAULT_MIN_UNIT_PARAMS` parameters) and, for
comparison, with the container as the one unit (what a default of "each direct child" gives). Reported: bytes of
the tensors each process holds for parameters, gradients and optimizer state, and the resident memory (RSS) above
the process's baseline, at its peak during model construction + forward/backward/step (sampled every 2 ms) and
after the step. Each mode runs in fresh processes (spawned by each rank), so none inherits another's allocator
state.

    python -m torch.distributed.run --nproc_per_node 2 benchmarks/fsdp.py [--repeats 3] [--megabytes 100]
    python benchmarks/fsdp.py          # launches the line above
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import multiprocessing
import os
import queue as queues
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from danling.runner import dcp, fsdp_utils

WIDTH = 2048
MIB = 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")
M_MMAP_THRESHOLD = -3  # mallopt parameter, from glibc's malloc.h
MEMORY_MODES = ("fsdp", "fsdp-1-unit", "ddp")


def make_model(megabytes: float) -> nn.Sequential:
    torch.manual_seed(0)
    layers = max(1, round(megabytes * MIB / 4 / (WIDTH * WIDTH)))
    return nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(layers)])


class Blocks(nn.Module):
    """8 equal blocks of two linear layers inside one container, about `megabytes` of fp32 parameters in all."""

    def __init__(self, megabytes: float, blocks: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.width = max(8, round((megabytes * MIB / 4 / blocks / 2) ** 0.5))
        width = self.width
        self.blocks = nn.Sequential(
            *[nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width)) for _ in range(blocks)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, zero: bool = True) -> None:
    model(torch.randn(4, WIDTH)).square().mean().backward()
    optimizer.step()
    if zero:
        optimizer.zero_grad(set_to_none=True)


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def timed(function: Callable[[], object]) -> float:
    dist.barrier()
    start = time.perf_counter()
    function()
    dist.barrier()
    return time.perf_counter() - start


# (a) Checkpoints


def checkpoint_benchmark(args: argparse.Namespace, root: str, rank: int) -> None:
    model = fsdp_utils.shard_model(make_model(args.megabytes))
    optimizer = torch.optim.AdamW(model.parameters())
    train_step(model, optimizer)
    fresh = fsdp_utils.shard_model(make_model(args.megabytes))
    fresh_optimizer = torch.optim.AdamW(fresh.parameters())
    # The single-process baseline: the same full state, on rank 0 only.
    plain = make_model(args.megabytes) if rank == 0 else None
    plain_optimizer = torch.optim.AdamW(plain.parameters()) if plain is not None else None
    if plain is not None and plain_optimizer is not None:
        train_step(plain, plain_optimizer)
    plain_path = os.path.join(root, "plain.pt")
    counter = iter(range(1_000_000))
    latest = [""]

    def dcp_save() -> None:
        latest[0] = os.path.join(root, f"dcp-{next(counter)}")  # a fresh directory per save, as a runner would
        dcp.dcp_save({"app": dcp.ModelOptimizerState(model, optimizer)}, latest[0])

    def dcp_load() -> None:
        dcp.dcp_load({"app": dcp.ModelOptimizerState(fresh, fresh_optimizer)}, latest[0])

    def full_read() -> None:
        if rank == 0:
            dcp.dcp_to_full_state_dict(latest[0])

    def plain_save() -> None:
        if plain is not None and plain_optimizer is not None:
            with open(plain_path, "wb") as fp:
                torch.save({"model": plain.state_dict(), "optimizer": plain_optimizer.state_dict()}, fp)
                fp.flush()
                os.fsync(fp.fileno())

    def plain_load() -> None:
        if plain is not None and plain_optimizer is not None:
            state = torch.load(plain_path, weights_only=True)
            plain.load_state_dict(state["model"])
            plain_optimizer.load_state_dict(state["optimizer"])

    def remove_old() -> None:
        if rank == 0:
            for name in os.listdir(root):
                if name.startswith("dcp-") and os.path.join(root, name) != latest[0]:
                    shutil.rmtree(os.path.join(root, name))

    saves = [("DCP save, 2 processes", dcp_save), ("torch.save + fsync, 1 process", plain_save)]
    loads = [
        ("DCP load, 2 processes", dcp_load),
        ("DCP to full tensors, 1 process", full_read),
        ("torch.load, 1 process", plain_load),
    ]
    dcp_save()  # warm-up: page cache, allocator, lazy imports
    plain_save()
    times: dict[str, list[float]] = {name: [] for name, _ in saves + loads}
    for repeat in range(args.repeats):
        # Rotate the order, so no operation always follows the one that leaves the most dirty pages behind.
        for name, function in saves[repeat % 2 :] + saves[: repeat % 2]:
            times[name].append(timed(function))
        for name, function in loads[repeat % 3 :] + loads[: repeat % 3]:
            times[name].append(timed(function))
        remove_old()
    same = all(torch.equal(full(a), full(b)) for a, b in zip(model.parameters(), fresh.parameters()))
    if rank == 0:
        size = sum(os.path.getsize(os.path.join(latest[0], name)) for name in os.listdir(latest[0])) / MIB
        medians = {name: statistics.median(values) for name, values in times.items()}
        print(f"(a) checkpoint of {size:.0f} MiB (model + AdamW state), median of {args.repeats} interleaved runs")
        for name, seconds in medians.items():
            print(f"  {name:<32} {seconds * 1e3:8.1f} ms")
        save_ratio = medians[saves[0][0]] / medians[saves[1][0]]
        load_ratio = medians[loads[0][0]] / medians[loads[2][0]]
        print(f"  save ratio, DCP on 2 processes / torch.save on 1: {save_ratio:.2f}")
        print(f"  load ratio, DCP on 2 processes / torch.load on 1: {load_ratio:.2f}")
        print(f"  the loaded parameters equal the saved ones: {same}")


# (b) Memory


def rss() -> int:
    with open("/proc/self/statm") as fp:
        return int(fp.read().split()[1]) * PAGE


@contextmanager
def peak_rss() -> Iterator[list[int]]:
    """Yields a one-item list that holds, on exit, the peak RSS seen while inside."""
    peak = [rss()]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()
        peak[0] = max(peak[0], rss())


def storage_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the storages under `tensors`, each storage once (FSDP2 gradients are views of one buffer)."""
    storages = {}
    for tensor in tensors:
        if tensor is None:
            continue
        if hasattr(tensor, "to_local"):
            tensor = tensor.to_local()
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def held_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state this process holds."""
    states = [value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)]
    return {
        "params": storage_bytes(list(model.parameters())),
        "grads": storage_bytes([p.grad for p in model.parameters()]),
        "optimizer": storage_bytes(states),
    }


def memory_child(mode: str, rank: int, world_size: int, address: str, megabytes: float, queue: Any) -> None:
    # A fixed threshold keeps each large tensor in its own mapping, returned to the OS when freed; by default glibc
    # raises the threshold after the first large free and keeps freed memory, which blurs RSS. Without glibc
    # (OSError) the figures include what the allocator keeps.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    torch.set_num_threads(1)
    # Under torchrun this variable makes init_process_group join the launcher's store instead of hosting its own.
    os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world_size)
    importlib.import_module("torch.distributed.fsdp")  # before the baseline: its modules are not the model's memory

    gc.collect()
    baseline = rss()
    with peak_rss() as peak:
        blocks = Blocks(megabytes)
        model: nn.Module = blocks
        if mode == "fsdp":
            model = fsdp_utils.shard_model(blocks)
        elif mode == "fsdp-1-unit":
            model = fsdp_utils.shard_model(blocks, [blocks.blocks])
        else:
            model = nn.parallel.DistributedDataParallel(blocks)
        optimizer = torch.optim.AdamW(model.parameters())
        model(torch.randn(4, blocks.width)).square().mean().backward()
        optimizer.step()
    held = held_bytes(model, optimizer)
    result = {**held, "held": sum(held.values()), "peak": peak[0] - baseline, "after": rss() - baseline}
    result["units"] = len(fsdp_utils.fsdp_modules(blocks))
    queue.put(result)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def memory_benchmark(args: argparse.Namespace, rank: int, world_size: int) -> None:
    context = multiprocessing.get_context("spawn")
    results: dict[str, dict[str, float]] = {}
    for mode in MEMORY_MODES:
        port = [free_port() if rank == 0 else 0]
        dist.broadcast_object_list(port)
        address = f"tcp://{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{port[0]}"
        queue = context.Queue()
        child = context.Process(target=memory_child, args=(mode, rank, world_size, address, args.megabytes, queue))
        child.start()
        while mode not in results:
            try:
                results[mode] = queue.get(timeout=1)
            except queues.Empty:
                if not child.is_alive():
                    raise RuntimeError(f"the {mode} memory run on rank {rank} exited with {child.exitcode}") from None
        child.join()
    gathered: list[dict[str, dict[str, float]]] = [{} for _ in range(world_size)]
    dist.all_gather_object(gathered, results)
    if rank == 0:
        units = {mode: gathered[0][mode]["units"] for mode in MEMORY_MODES}
        print(f"(b) memory per process after one step, {world_size} processes (MiB; RSS above the baseline)")
        print(f"  FSDP units, the root included: default {units['fsdp']}, one unit {units['fsdp-1-unit']}")
        columns = ("params", "grads", "optimizer", "held", "peak", "after")
        print(f"  {'':<11} {'rank':>4} " + " ".join(f"{name:>9}" for name in columns))
        for mode in MEMORY_MODES:
            for index, result in enumerate(gathered):
                print(f"  {mode:<11} {index:>4} " + " ".join(f"{result[mode][name] / MIB:9.1f}" for name in columns))
        for mode in ("fsdp", "fsdp-1-unit"):
            for key, label in (("held", "held tensor bytes"), ("peak", "peak RSS"), ("after", "RSS after the step")):
                ratio = max(r[mode][key] for r in gathered) / max(r["ddp"][key] for r in gathered)
                print(f"  {mode} / DDP, {label} (max over ranks): {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--megabytes", type=float, default=100)
    parser.add_argument("--dir", default=None, help="where to write checkpoints (default: a temporary directory)")
    args = parser.parse_args()
    if "RANK" not in os.environ:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", __file__, *sys.argv[1:]]
        raise SystemExit(subprocess.call(command))
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    root = [tempfile.mkdtemp(prefix="danling-fsdp-", dir=args.dir) if rank == 0 else ""]
    dist.broadcast_object_list(root)
    try:
        memory_benchmark(args, rank, world_size)
        checkpoint_benchmark(args, root[0], rank)
    finally:
        dist.barrier()
        if rank == 0:
            shutil.rmtree(root[0], ignore_errors=True)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
