"""Benchmark `danling.metrics` against torchmetrics (when installed) and scikit-learn.

Two workloads, fed in batches of 1000: 1M binary predictions and 100k x 100 multiclass logits. For each library
the script times the updates and the epoch computation (`average()` / `compute()`), and measures the peak memory
the computation adds on top of what is already held. scikit-learn has no updates; it is timed computing the same
metrics on the concatenated arrays.

Memory is read from the process's resident set (`VmHWM`, reset through `/proc/self/clear_refs`): torch allocates
tensors outside Python's allocator, so `tracemalloc` does not see them. The script re-runs itself with
`MALLOC_MMAP_THRESHOLD_` lowered so that freed tensors go back to the system and the resident set follows the
memory in use. On systems without `/proc` the memory columns are left empty.

Usage:
    python benchmarks/metrics.py [--binary-samples N] [--multiclass-samples N] [--classes C] [--batch B]
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from danling.metrics import AverageMeter, AverageMeters, Metrics, binary_metrics, multiclass_metrics

try:
    import torchmetrics
    from torchmetrics import classification as tmc
except ImportError:  # torchmetrics is optional: its columns are skipped
    torchmetrics = None

try:
    from sklearn import metrics as sk
    from sklearn.preprocessing import label_binarize
except ImportError:  # likewise for scikit-learn
    sk = None

MiB = 1 << 20


# Memory


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as file:
            match = re.search(rf"^{field}:\s+(\d+) kB", file.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def peak_extra(function: Callable[[], Any]) -> tuple[Any, float, int | None]:
    """Run `function`; return its result, its wall time and the peak resident memory it added, in bytes."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")  # resets the peak resident set to the current one
        before = _status("VmRSS")
    except OSError:
        before = None
    start = time.perf_counter()
    result = function()
    elapsed = time.perf_counter() - start
    peak = _status("VmHWM")
    return result, elapsed, None if before is None or peak is None else max(peak - before, 0)


# Data


def binary_data(samples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 2, (samples,), generator=generator)
    scores = (0.3 * target + 0.7 * torch.rand(samples, generator=generator)).float()
    return scores, target


def multiclass_data(samples: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, (samples,), generator=generator)
    logits = torch.randn(samples, classes, generator=generator)
    logits[torch.arange(samples), target] += 1.0
    return logits, target


# Runners


def run_danling(metrics: Metrics, input: torch.Tensor, target: torch.Tensor, batch: int) -> dict[str, Any]:
    inputs, targets = input.split(batch), target.split(batch)
    start = time.perf_counter()
    for batch_input, batch_target in zip(inputs, targets):
        metrics.update(batch_input, batch_target)
    update = time.perf_counter() - start
    metrics.inputs  # noqa: B018 -- concatenate the batches first, so `average()` is measured on its own
    result, compute, memory = peak_extra(metrics.average)
    return {"update": update, "compute": compute, "memory": memory, "result": dict(result), "calls": len(inputs)}


def run_torchmetrics(collection: Any, input: torch.Tensor, target: torch.Tensor, batch: int) -> dict[str, Any]:
    inputs, targets = input.split(batch), target.split(batch)
    start = time.perf_counter()
    for batch_input, batch_target in zip(inputs, targets):
        collection.update(batch_input, batch_target)
    update = time.perf_counter() - start
    result, compute, memory = peak_extra(collection.compute)
    result = {name: float(value) for name, value in result.items()}
    return {"update": update, "compute": compute, "memory": memory, "result": result, "calls": len(inputs)}


def run_sklearn(metrics: dict[str, Callable[[], float]]) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        result = {name: float(function()) for name, function in metrics.items()}
    return {"update": None, "compute": time.perf_counter() - start, "memory": None, "result": result, "calls": 0}


# Workloads


def binary_workload(samples: int, batch: int) -> tuple[int, dict[str, dict[str, Any]]]:
    scores, target = binary_data(samples)
    runs = {"danling": run_danling(binary_metrics(), scores, target, batch)}
    if torchmetrics is not None:
        collection = torchmetrics.MetricCollection(
            {
                "auroc": tmc.BinaryAUROC(),
                "auprc": tmc.BinaryAveragePrecision(),
                "acc": tmc.BinaryAccuracy(),
                "f1": tmc.BinaryF1Score(),
                "mcc": tmc.BinaryMatthewsCorrCoef(),
            }
        )
        runs["torchmetrics"] = run_torchmetrics(collection, scores, target, batch)
    if sk is not None:
        y, s = target.numpy(), scores.double().numpy()
        p = s >= 0.5
        runs["scikit-learn"] = run_sklearn(
            {
                "auroc": lambda: sk.roc_auc_score(y, s),
                "auprc": lambda: sk.average_precision_score(y, s),
                "acc": lambda: sk.accuracy_score(y, p),
                "f1": lambda: sk.f1_score(y, p),
                "mcc": lambda: sk.matthews_corrcoef(y, p),
            }
        )
    stored = scores.element_size() * scores.numel() + target.element_size() * target.numel()
    return stored, runs


def multiclass_workload(samples: int, classes: int, batch: int) -> tuple[int, dict[str, dict[str, Any]]]:
    logits, target = multiclass_data(samples, classes)
    runs = {"danling": run_danling(multiclass_metrics(num_classes=classes), logits, target, batch)}
    if torchmetrics is not None:
        collection = torchmetrics.MetricCollection(
            {
                "auroc": tmc.MulticlassAUROC(classes),
                "auprc": tmc.MulticlassAveragePrecision(classes),
                "acc": tmc.MulticlassAccuracy(classes, average="micro"),
                "f1": tmc.MulticlassF1Score(classes, average="macro"),
                "mcc": tmc.MulticlassMatthewsCorrCoef(classes),
            }
        )
        runs["torchmetrics"] = run_torchmetrics(collection, logits, target, batch)
    if sk is not None:
        y = target.numpy()
        probabilities = torch.softmax(logits, dim=1).double().numpy()
        onehot = label_binarize(y, classes=range(classes))
        prediction = probabilities.argmax(axis=1)
        runs["scikit-learn"] = run_sklearn(
            {
                "auroc": lambda: sk.roc_auc_score(y, probabilities, multi_class="ovr"),
                "auprc": lambda: sk.average_precision_score(onehot, probabilities),
                "acc": lambda: sk.accuracy_score(y, prediction),
                "f1": lambda: sk.f1_score(y, prediction, average="macro"),
                "mcc": lambda: sk.matthews_corrcoef(y, prediction),
            }
        )
    stored = logits.element_size() * logits.numel() + target.element_size() * target.numel()
    return stored, runs


def meter_updates(steps: int = 20000) -> dict[str, float]:
    """Microseconds per hot-path call: the runner updates meters and metrics on every step."""
    loss = torch.tensor(0.5)
    input, target = torch.rand(32), torch.randint(0, 2, (32,))
    meter, meters, metrics = AverageMeter(), AverageMeters(), binary_metrics()
    timings = {}
    for name, call in {
        "AverageMeter.update(tensor)": lambda: meter.update(loss, 32),
        "AverageMeter.update(float)": lambda: meter.update(0.5, 32),
        "AverageMeters.update(loss=tensor)": lambda: meters.update(loss=loss),
        "Metrics.update(input, target)": lambda: metrics.update(input, target),
    }.items():
        call()
        start = time.perf_counter()
        for _ in range(steps):
            call()
        timings[name] = (time.perf_counter() - start) / steps * 1e6
    return timings


# Report


def report(title: str, stored: int, runs: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"  stored predictions + targets: {stored / MiB:.1f} MiB")
    print(f"  {'library':<14}{'update s':>10}{'us/call':>10}{'compute s':>11}{'total s':>9}{'peak extra MiB':>16}")
    for library, run in runs.items():
        update = run["update"]
        per_call = f"{update / run['calls'] * 1e6:.1f}" if update is not None and run["calls"] else "-"
        update_text = f"{update:.3f}" if update is not None else "-"
        total = (update or 0.0) + run["compute"]
        memory = f"{run['memory'] / MiB:.1f}" if run["memory"] is not None else "-"
        print(f"  {library:<14}{update_text:>10}{per_call:>10}{run['compute']:>11.3f}{total:>9.3f}{memory:>16}")
    danling = runs["danling"]
    danling_total = danling["update"] + danling["compute"]
    for library, run in runs.items():
        if library == "danling":
            continue
        total = (run["update"] or 0.0) + run["compute"]
        difference = max(abs(danling["result"][name] - run["result"][name]) for name in danling["result"])
        print(
            f"  {library} / danling: compute x{run['compute'] / danling['compute']:.2f}, "
            f"total x{total / danling_total:.2f}; largest metric difference {difference:.1e}"
        )
    if danling["memory"] is not None:
        print(f"  danling peak extra / stored: {danling['memory'] / stored:.2f}")
    print("  danling: " + ", ".join(f"{name}={value:.6f}" for name, value in danling["result"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary-samples", type=int, default=1_000_000)
    parser.add_argument("--multiclass-samples", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # Large blocks then come from mmap and go back to the system when freed, so the resident set measures the
        # memory in use rather than what the allocator keeps around.
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 16)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; numpy {np.__version__}")
    print(f"torchmetrics: {torchmetrics.__version__ if torchmetrics else 'not installed'}")
    print(f"scikit-learn: {'installed' if sk else 'not installed'}")
    # Warm up every library on small inputs, so one-time set-up is not counted as the first workload's memory.
    binary_workload(4 * args.batch, args.batch)
    multiclass_workload(4 * args.batch, args.classes, args.batch)
    print("\nhot path, microseconds per call:")
    for name, micros in meter_updates().items():
        print(f"  {name:<36}{micros:8.2f}")
    report(
        f"binary: {args.binary_samples:,} predictions in batches of {args.batch}",
        *binary_workload(args.binary_samples, args.batch),
    )
    report(
        f"multiclass: {args.multiclass_samples:,} x {args.classes} logits in batches of {args.batch}",
        *multiclass_workload(args.multiclass_samples, args.classes, args.batch),
    )


if __name__ == "__main__":
    main()
