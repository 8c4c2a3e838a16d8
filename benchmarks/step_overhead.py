"""Per-step cost of `TorchRunner` against hand-written PyTorch loops with the same features.

All train an MLP on in-memory data (a `TensorDataset`), with the same optimizer, the same sample-weighted epoch
loss and a log line every `log_interval` steps. They take turns on the very same objects: a set of model, optimizer
and data (one of `--instances` sets, a set per repeat in turn) is trained one epoch by each contestant, in a freshly
shuffled order. Identical sets were seen to differ by up to 10% in time per step (where their memory landed, most
likely), more than the differences measured here; on one set, that luck is the same for every contestant and
cancels in the ratios. Every contestant takes the samples in the same order (the runner's sampler's), so each does
the same arithmetic as the others would on the same weights.

- runner: `TorchRunner`, which fetches this dataset a batch at a time (`config.fetch_batches`, the default);
- runner per-sample: `TorchRunner` with `fetch_batches=False`, one `__getitem__` per sample and a collate;
- hand-written: `DataLoader(dataset, batch_size, sampler)`, the loop people write (one `__getitem__` per sample);
- hand-written batch-indexing: a permutation split into batches, each fetched as `tensor[indices]`, no
  `DataLoader`: the floor for in-memory data.

Repeats run in one process so that drift in machine load hits all alike. Each ratio is given twice: of the
contestants' median times per step, and paired (the median of the ratios within each repeat, which drift from one
repeat to the next does not reach).

    python benchmarks/step_overhead.py [--repeats 7] [--instances 4] [--threads 1] [--clock wall|cpu] [--case ...]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import random
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import danling as dl
from danling.runner.printing import restore_print
from danling.runner.samplers import TrainingSampler

CASES = {
    "tiny MLP 32-64-10, batch 64": {"sizes": (32, 64, 10), "batch_size": 64, "batches": 400},
    "compute-bound MLP 512-2048-2048-10, batch 256": {"sizes": (512, 2048, 2048, 10), "batch_size": 256, "batches": 30},
}


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def dataset(sizes: tuple[int, ...], samples: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(samples, sizes[0], generator=generator), torch.randint(sizes[-1], (samples,), generator=generator)
    )


# The sets of model, optimizer and data the contestants take turns on; `BenchRunner` trains the set its
# `config.instance` names.
PARTS: list[tuple[nn.Module, torch.optim.Optimizer, TensorDataset]] = []


class BenchRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        self.model, self.optimizer, self.datasets.train = PARTS[self.config.instance]
        self.criterion = nn.CrossEntropyLoss()


def runner_epoch(runner: BenchRunner) -> float:
    start = clock()
    runner.train_epoch("train")
    return (clock() - start) / len(runner.dataloaders.train)


def hand_written_epoch(model, criterion, optimizer, loader, log_interval: int) -> float:
    start = clock()
    model.train()
    loss_sum, count = torch.zeros(()), 0
    length = len(loader)
    for iteration, (input, target) in enumerate(loader):
        pred = model(input)
        loss = criterion(pred, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach() * target.shape[0]
        count += target.shape[0]
        if iteration % log_interval == 0 or iteration == length - 1:
            print(f"training on train [{iteration}/{length - 1}]\tloss: {loss.item():.4f}", file=DEVNULL)
    _ = (loss_sum / count).item()
    return (clock() - start) / length


def batch_indexing_epoch(model, criterion, optimizer, tensors, batch_size: int, log_interval: int) -> float:
    start = clock()
    model.train()
    loss_sum, count = torch.zeros(()), 0
    length = -(-len(tensors[0]) // batch_size)
    # The order the runner's sampler gives its pass (seed 0, epoch 0): every loop does the same arithmetic.
    order = torch.randperm(len(tensors[0]), generator=torch.Generator().manual_seed(0))
    for iteration, index in enumerate(order.split(batch_size)):
        input, target = tensors[0][index], tensors[1][index]
        pred = model(input)
        loss = criterion(pred, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach() * target.shape[0]
        count += target.shape[0]
        if iteration % log_interval == 0 or iteration == length - 1:
            print(f"training on train [{iteration}/{length - 1}]\tloss: {loss.item():.4f}", file=DEVNULL)
    _ = (loss_sum / count).item()
    return (clock() - start) / length


# Wall time by default; `--clock cpu` counts this process's CPU time instead, which a machine shared with other
# work disturbs less (the loops are single-threaded and never wait on a device).
clock = time.perf_counter

DEVNULL = open("/dev/null", "w")  # noqa: SIM115 - the log lines must be formatted, not shown


def count_item_calls_on_quiet_steps(runner: BenchRunner) -> int:
    """`Tensor.item` calls on accelerator tensors (each a host synchronisation) during steps that do not log.

    Reading a CPU tensor waits for nothing, and the runner reads a CPU loss at once (into its float64 sum), so on a
    CPU run this is 0 whatever the loop does: it tells something on a GPU.
    """
    calls = 0
    original = torch.Tensor.item

    def counting_item(self):
        nonlocal calls
        calls += not self.is_cpu
        return original(self)

    loader = runner.dataloaders.train
    batches = [batch for _, batch in zip(range(5), loader)]
    torch.Tensor.item = counting_item  # type: ignore[method-assign]
    try:
        for batch in batches:
            runner.train_step(batch)
    finally:
        torch.Tensor.item = original  # type: ignore[method-assign]
    return calls


def bench(name: str, sizes, batch_size: int, batches: int, repeats: int, instances: int, root: str) -> None:
    PARTS.clear()
    for _ in range(instances):
        torch.manual_seed(0)
        model = mlp(sizes)
        PARTS.append((model, torch.optim.SGD(model.parameters(), lr=0.01), dataset(sizes, batch_size * batches)))
    runners: dict[bool, list[BenchRunner]] = {}
    for fetch_batches in (True, False):
        runners[fetch_batches] = []
        for instance in range(instances):
            config = dl.Config(seed=0, log=False, progress=False, save_checkpoints=False, epoch_end=1)
            config.project_root, config.instance = root, instance
            config.dataloader.batch_size = batch_size
            config.fetch_batches = fetch_batches
            runners[fetch_batches].append(BenchRunner(config))
    runner = runners[True][0]
    log_interval = runner.config.log_interval
    criterion = nn.CrossEntropyLoss()

    def hand_written(instance: int) -> float:
        model, optimizer, data = PARTS[instance]
        loader = DataLoader(data, batch_size=batch_size, sampler=TrainingSampler(len(data)))
        return hand_written_epoch(model, criterion, optimizer, loader, log_interval)

    def hand_written_batch_indexing(instance: int) -> float:
        model, optimizer, data = PARTS[instance]
        return batch_indexing_epoch(model, criterion, optimizer, data.tensors, batch_size, log_interval)

    def runner_variant(fetch_batches: bool, throughput: bool = True) -> Callable[[int], float]:
        # Without throughput, the same runner objects with the switch off for the pass: two runner objects on one
        # set differ by a few percent by themselves, which would drown the meter's cost.
        def run(instance: int) -> float:
            variant = runners[fetch_batches][instance]
            variant.config.throughput = throughput
            try:
                return runner_epoch(variant)
            finally:
                variant.config.throughput = True

        return run

    contestants = {
        "runner": runner_variant(True),
        "runner per-sample": runner_variant(False),
        "runner without throughput": runner_variant(True, throughput=False),
        "hand-written": hand_written,
        "hand-written batch-indexing": hand_written_batch_indexing,
    }
    times: dict[str, list[float]] = {contestant: [] for contestant in contestants}
    order = list(contestants)
    shuffler = random.Random(0)
    # All write their log lines to /dev/null: the comparison is of the loops, not of the terminal.
    with contextlib.redirect_stdout(DEVNULL):
        # Warm-up: every contestant on every set, so no first pass (a runner's first batch, say) is timed.
        for instance in range(instances):
            for run in contestants.values():
                run(instance)
        for repeat in range(repeats):
            # A fresh order every repeat (seeded): rotating one order would have each contestant run right after
            # the same other in almost every repeat, and what runs just before a loop (a per-sample loop's many small
            # allocations, say) was seen to shift its time by several percent.
            shuffler.shuffle(order)
            for contestant in order:
                times[contestant].append(contestants[contestant](repeat % instances))
    medians = {contestant: statistics.median(values) for contestant, values in times.items()}
    quiet_items = count_item_calls_on_quiet_steps(runner)
    device = runner.device.type
    waits = f"host waits on 5 non-logging steps: {quiet_items}" if device != "cpu" else "no device to wait for"
    print(f"{name} on {device} (log every {log_interval} steps; {waits})")
    for contestant, median in medians.items():
        print(f"  {contestant:28s} {median * 1e6:8.1f} us/step")
    ratios = [
        ("runner / hand-written", "runner", "hand-written", 0.80),
        ("runner / hand-written batch-indexing", "runner", "hand-written batch-indexing", 1.03),
        ("runner per-sample / hand-written", "runner per-sample", "hand-written", 1.03),
        ("runner / runner without throughput", "runner", "runner without throughput", None),
    ]
    # Issue 20's targets are for the framework-bound case; with a compute-bound step every ratio tends to 1.
    framework_bound = name.startswith("tiny")
    print(f"  {'ratio':38s} {'medians':>8s} {'paired':>8s}")
    for label, numerator, denominator, target in ratios:
        goal = f" (target <= {target:.2f})" if framework_bound and target is not None else ""
        paired = statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))
        print(f"  {label:38s} {medians[numerator] / medians[denominator]:8.3f} {paired:8.3f}{goal}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 makes timings steadier)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: process time, on a busy machine")
    parser.add_argument("--case", choices=("all", "tiny", "compute"), default="all", help="which case(s) to run")
    parser.add_argument("--instances", type=int, default=4, help="sets of model, optimizer and data, used in turn")
    args = parser.parse_args()
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        for name, case in CASES.items():
            if args.case == "all" or name.startswith(args.case):
                bench(name, repeats=args.repeats, instances=args.instances, root=root, **case)
    restore_print()


if __name__ == "__main__":
    main()
