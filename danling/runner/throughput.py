"""Throughput of training, measured between two log lines: samples (and tokens) per second over every process, the
share of time spent waiting for data, peak memory, and the model FLOP utilisation when the FLOPs are known.

Each micro-batch costs two clock reads and a look at the batch's first dimension: nothing waits for the device.
The numbers are gathered across processes only when a line is logged (one reduction, at the step where the meters
are reduced anyway). Times are host times: on a GPU, a step's kernels may still run when the next batch is asked
for, so a pipeline that keeps the GPU busy shows little waiting, as it should.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Mapping, Sequence
from time import perf_counter
from typing import Any

import torch

from ..utils import distributed as du

__all__ = ["Throughput", "batch_samples", "peak_memory_bytes"]


def batch_samples(batch: Any) -> int:
    """The number of samples in `batch`: the first dimension of its first tensor (or array), else its length.

    Examples:
        >>> batch_samples((torch.zeros(5, 3), torch.zeros(5)))
        5
        >>> batch_samples({"input_ids": torch.zeros(4, 16, dtype=torch.long), "label": torch.zeros(4)})
        4
        >>> batch_samples([[1, 2], [3, 4], [5, 6]])
        2
    """
    # The common batches first, without abstract-class checks: this runs at every micro-batch.
    kind = type(batch)
    if (kind is tuple or kind is list) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0]) if batch[0].dim() else 1
    if kind is dict and batch:
        first = next(iter(batch.values()))
        if isinstance(first, torch.Tensor):
            return int(first.shape[0]) if first.dim() else 1
    if isinstance(batch, torch.Tensor) or hasattr(batch, "shape"):
        return int(batch.shape[0]) if len(batch.shape) else 1
    if isinstance(batch, Mapping):
        return batch_samples(next(iter(batch.values()))) if batch else 0
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        if batch and (isinstance(batch[0], (torch.Tensor, Mapping)) or hasattr(batch[0], "shape")):
            return batch_samples(batch[0])
        if batch and isinstance(batch[0], Sequence) and not isinstance(batch[0], str):
            return batch_samples(batch[0])  # (inputs, targets) of lists: the inputs' length
        return len(batch)
    return 1


def peak_memory_bytes(device: torch.device) -> int:
    """The most memory this process has held: on CUDA, tensors allocated on `device`; elsewhere, its peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, kilobytes on Linux


class Throughput:
    """Counts of the micro-batches since the last log line, turned into rates when one is logged.

    The training loop calls [`asking`][danling.runner.throughput.Throughput.asking] just before it asks its loader
    for the next batch, [`arrived`][danling.runner.throughput.Throughput.arrived] when the batch is there, and
    [`done`][danling.runner.throughput.Throughput.done] when its step is over: the time from asking to arrival is
    time spent waiting for data; the window runs from the last read to the last micro-batch done.

    Args:
        flops_per_sample: FLOPs of one sample's forward and backward, for the model FLOP utilisation (`mfu`).
        peak_flops: FLOP/s one process's device can do at most (its datasheet figure for the precision used).
    """

    clock = staticmethod(perf_counter)

    def __init__(self, flops_per_sample: float | None = None, peak_flops: float | None = None) -> None:
        self.flops_per_sample = flops_per_sample
        self.peak_flops = peak_flops
        self.start()

    def start(self) -> None:
        """Begin a window now (a pass starts: the wait for its first batch counts)."""
        self.samples, self.tokens, self.waiting = 0, 0, 0.0
        self._since = self._last = self._asked = self.clock()

    def asking(self) -> None:
        """The loop asks its loader for the next batch now."""
        self._asked = self.clock()

    def arrived(self) -> None:
        """The batch asked for has arrived."""
        self.waiting += self.clock() - self._asked

    def done(self, samples: int, tokens: int | None = None) -> None:
        """A micro-batch of `samples` samples (and `tokens` tokens) is done."""
        self.samples += samples
        if tokens is not None:
            self.tokens += tokens
        self._last = self.clock()

    def read(self, device: torch.device, reduce: bool = True) -> dict[str, float]:
        """The window's rates over every process (collective when `reduce`), and start a new window.

        `samples_per_s` (and `tokens_per_s` when tokens were counted) sum the processes' samples over their mean
        time; `data_wait` is the share of that time spent waiting for batches; `peak_memory_gb` is the largest
        process's peak; `mfu` is achieved FLOP/s over the peak of every process's device.
        """
        elapsed = max(self._last - self._since, 1e-12)
        totals = torch.tensor([self.samples, self.tokens, elapsed, self.waiting], dtype=torch.float64)
        memory = torch.tensor([peak_memory_bytes(device)], dtype=torch.float64)
        world_size = 1
        if reduce and du.is_distributed():
            world_size = du.get_world_size()
            totals = du.all_reduce_sum(totals)
            memory = du.all_reduce_max(memory)
        samples, tokens, elapsed_sum, waiting_sum = totals.tolist()
        seconds = elapsed_sum / world_size
        result = {"samples_per_s": samples / seconds}
        if tokens:
            result["tokens_per_s"] = tokens / seconds
        result["data_wait"] = waiting_sum / elapsed_sum
        result["peak_memory_gb"] = memory.item() / 1e9
        if self.flops_per_sample and self.peak_flops:
            result["mfu"] = samples * self.flops_per_sample / seconds / (self.peak_flops * world_size)
        self.start()
        return result
