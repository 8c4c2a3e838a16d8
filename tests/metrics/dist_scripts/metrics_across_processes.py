"""Feed meters and metrics an uneven shard per process and write what every read returns, as JSON.

Run with `python -m torch.distributed.run --nproc_per_node 2 metrics_across_processes.py OUT_DIR`; each process
writes `OUT_DIR/rank{rank}.json`. Importing this module only defines the data, so a test can rebuild the shards.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch

from danling.metrics import (
    AverageMeter,
    AverageMeters,
    MetricMeters,
    Metrics,
    MultiTaskAverageMeters,
    MultiTaskMetrics,
    accuracy,
    binary_metrics,
    multiclass_metrics,
    multilabel_metrics,
    regression_metrics,
)

# Batch sizes per rank: 37 and 64 samples, with one-sample batches, and the ranks' last batches of different sizes.
BATCH_SIZES = {0: (1, 16, 20), 1: (30, 1, 33)}
CLASSES, LABELS, OUTPUTS = 4, 3, 2


def build_metrics() -> dict[str, Any]:
    """One factory-made `Metrics` per task."""
    return {
        "binary": binary_metrics(),
        "multiclass": multiclass_metrics(num_classes=CLASSES),
        "multilabel": multilabel_metrics(num_labels=LABELS),
        "regression": regression_metrics(num_outputs=OUTPUTS),
    }


def make_batch(task: str, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of `size` samples for `task`, with some signal in the scores."""
    if task == "binary":
        target = torch.randint(0, 2, (size,), generator=generator)
        return torch.randn(size, generator=generator) + target, target
    if task == "multiclass":
        target = torch.randint(0, CLASSES, (size,), generator=generator)
        one_hot = torch.nn.functional.one_hot(target, CLASSES).float()
        return torch.randn(size, CLASSES, generator=generator) + one_hot, target
    if task == "multilabel":
        target = torch.randint(0, 2, (size, LABELS), generator=generator)
        return torch.round(torch.rand(size, LABELS, generator=generator) * 5 + target * 3) / 10, target
    target = torch.randn(size, OUTPUTS, generator=generator)
    return target + torch.randn(size, OUTPUTS, generator=generator), target


def make_batches(rank: int) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Every batch process `rank` holds, by task (plus the loss values under `"loss"`)."""
    generator = torch.Generator().manual_seed(1234 + rank)
    batches = {task: [make_batch(task, size, generator) for size in BATCH_SIZES[rank]] for task in build_metrics()}
    batches["loss"] = [(torch.rand((), generator=generator), torch.tensor(size)) for size in BATCH_SIZES[rank]]
    return batches


def run(rank: int) -> dict[str, Any]:
    """Feed this rank's shard and read every meter and metric (collectively when distributed)."""
    batches = make_batches(rank)
    meter, meters = AverageMeter(), AverageMeters()
    task_meters = MultiTaskAverageMeters(return_average=True)
    for loss, size in batches["loss"]:
        meter.update(loss, int(size))
        meters.update(loss=(loss, int(size)))
        task_meters.update({"a.loss": (loss, int(size))})
        if rank == 1:
            meters.update(aux=float(size))  # a meter that only one process holds
            task_meters.update({"b": {"loss": float(size)}})  # a task that only one process holds
    metrics = build_metrics()
    multitask = MultiTaskMetrics(binary=binary_metrics(), rare=binary_metrics(), return_average=True)
    metric_meters = MetricMeters(acc=accuracy)
    for task, task_metrics in metrics.items():
        for input, target in batches[task]:
            task_metrics.update(input, target)
    lone, empty = Metrics(acc=accuracy), Metrics(acc=accuracy)
    for input, target in batches["binary"]:
        metric_meters.update(input, target)
        if rank == 1:
            lone.update(input, target)  # a Metrics that only one process feeds
        multitask.update({"binary": input}, {"binary": target})
        if rank == 1:
            multitask.update({"rare": input}, {"rare": target})  # a task that only one process sees
    return {
        "meter": {"batch": meter.batch(), "bat": meter.bat, "average": meter.average()},
        "task_meters": {"batch": task_meters.bat.dict(), "average": task_meters.average().dict()},
        "meters": {"batch": meters.batch().dict(), "average": meters.average().dict()},
        "metrics": {task: {"value": m.value().dict(), "average": m.average().dict()} for task, m in metrics.items()},
        "multitask": multitask.average().dict(),
        "metric_meters": metric_meters.average().dict(),
        "stored": {name: read_stored(m) for name, m in {**metrics, "lone": lone, "empty": empty}.items()},
    }


def read_stored(metrics: Metrics) -> dict[str, Any]:
    """What `input`, `target`, `inputs` and `targets` hold (every read is collective), with their shapes."""
    stored = {name: getattr(metrics, name) for name in ("input", "target", "inputs", "targets")}
    return {
        name: None if value is None else {"values": value.tolist(), "shape": list(value.shape)}
        for name, value in stored.items()
    }


def main() -> None:
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    results = run(rank)
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as file:
        json.dump(results, file)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
