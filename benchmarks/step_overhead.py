"""Per-step cost of `TorchRunner` against a hand-written PyTorch loop with the same features.

Both train the same model on the same in-memory data, with the same optimizer, the same sample-weighted epoch
loss and a log line every `log_interval` steps. Runs are interleaved (runner, loop, runner, loop, ...) in one
process so that drift in machine load hits both alike; the figure is the ratio of median time per step.

    python benchmarks/step_overhead.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import tempfile
import time

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


class BenchRunner(dl.TorchRunner):
    def __init__(self, config):
        super().__init__(config)
        self.model = mlp(tuple(self.config.sizes))
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.datasets.train = dataset(tuple(self.config.sizes), self.config.batch_size * self.config.batches)


def runner_epoch(runner: BenchRunner) -> float:
    start = time.perf_counter()
    runner.train_epoch("train")
    return (time.perf_counter() - start) / len(runner.dataloaders.train)


def hand_written_epoch(model, criterion, optimizer, loader, log_interval: int) -> float:
    start = time.perf_counter()
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
    return (time.perf_counter() - start) / length


DEVNULL = open("/dev/null", "w")  # noqa: SIM115 - the log lines must be formatted, not shown


def count_item_calls_on_quiet_steps(runner: BenchRunner) -> int:
    """`Tensor.item` calls (host synchronisations on an accelerator) during steps that do not log."""
    calls = 0
    original = torch.Tensor.item

    def counting_item(self):
        nonlocal calls
        calls += 1
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


def bench(name: str, sizes, batch_size: int, batches: int, repeats: int, root: str) -> None:
    config = dl.Config(seed=0, log=False, progress=False, save_checkpoints=False, epoch_end=1, project_root=root)
    config.sizes, config.batch_size, config.batches = list(sizes), batch_size, batches
    config.dataloader.batch_size = batch_size
    runner = BenchRunner(config)
    log_interval = runner.config.log_interval

    torch.manual_seed(0)
    model, criterion = mlp(sizes), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(
        runner.datasets.train, batch_size=batch_size, sampler=TrainingSampler(len(runner.datasets.train))
    )

    runner_times, loop_times = [], []
    # Both write their log lines to /dev/null: the comparison is of the loops, not of the terminal.
    with contextlib.redirect_stdout(DEVNULL):
        runner_epoch(runner)  # warm-up both paths
        hand_written_epoch(model, criterion, optimizer, loader, log_interval)
        for _ in range(repeats):
            runner_times.append(runner_epoch(runner))
            loop_times.append(hand_written_epoch(model, criterion, optimizer, loader, log_interval))
    runner_median, loop_median = statistics.median(runner_times), statistics.median(loop_times)
    quiet_items = count_item_calls_on_quiet_steps(runner)
    print(
        f"{name}: runner {runner_median * 1e6:8.1f} us/step, hand-written {loop_median * 1e6:8.1f} us/step, "
        f"ratio {runner_median / loop_median:.3f} (log every {log_interval} steps; "
        f"Tensor.item calls on 5 non-logging steps: {quiet_items})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 makes timings steadier)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        for name, case in CASES.items():
            bench(name, repeats=args.repeats, root=root, **case)
    restore_print()


if __name__ == "__main__":
    main()
