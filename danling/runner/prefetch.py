"""Batches copied to the GPU a step ahead, on a stream of their own, while the current step runs.

Without prefetching, a step's batch is copied at the start of the step, on the stream the step runs on: the copy
queues behind the previous step's kernels, and the step's kernels queue behind the copy. A
[`DevicePrefetcher`][danling.runner.prefetch.DevicePrefetcher] issues the copy of batch `k + 1` on a side stream
before it hands out batch `k`, so the copy runs while the GPU computes step `k`; step `k + 1` then waits for its own
copy only, on the device (the host does not wait for a batch in pinned memory).

The copy of a batch is allocated on the side stream and read on the current one. Each tensor handed out is marked
as used there (`Tensor.record_stream`): otherwise the caching allocator could give its memory to the next copy while
the step's kernels still read it.

The batches are the loader's, in its order, value for value, and the steps' kernels are the same. What moves is
when the loader is asked: for batch `k + 1` before step `k`. A loader whose batches draw random numbers in the main
process would then draw batch `k + 1`'s before step `k` draws, and a checkpoint taken after step `k` would hold the
generators past them; the runner therefore prefetches only from loaders that cannot (workers, or in-memory data
fetched a batch at a time: see `EvaluationLoop._prefetched`).

On any other device than CUDA, [`prefetch`][danling.runner.prefetch.prefetch] returns the batches as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sized
from typing import Any

import torch

from .data import to_device

__all__ = ["DevicePrefetcher", "prefetch", "side_stream"]


def prefetch(batches: Iterable, device: torch.device) -> Iterable:
    """`batches` copied to `device` a batch ahead when it is a CUDA device; elsewhere `batches` itself.

    Args:
        batches: The batches, as a loader yields them.
        device: The device the steps run on.

    Returns:
        A [`DevicePrefetcher`][danling.runner.prefetch.DevicePrefetcher] over `batches` on a CUDA device, else
        `batches` (the same object: nothing is added to a CPU run).

    Examples:
        >>> batches = [torch.zeros(2), torch.ones(2)]
        >>> prefetch(batches, torch.device("cpu")) is batches
        True
    """
    if device.type != "cuda":
        return batches
    return DevicePrefetcher(batches, device)


class DevicePrefetcher:
    """The batches of `batches` on a CUDA `device`, each copied while the previous one is in use.

    Every pass over it keeps one batch ahead: when it hands out batch `k`, it has taken batch `k + 1` from
    `batches` and issued its copy on `stream`. Tensors nested in mappings, lists and tuples are copied with
    `non_blocking=True`, as [`to_device`][danling.runner.data.to_device] copies them; anything else passes as it is.
    A batch in pinned memory (a loader with `pin_memory=True`) is copied without the host waiting; one in pageable
    memory is copied too, with the host waiting for the copy.

    An error raised while taking or copying batch `k + 1` is raised when batch `k + 1` is asked for, after step
    `k`, as it would be without prefetching.

    Args:
        batches: The batches (a `DataLoader` or any iterable); `len()` is theirs.
        device: The CUDA device to copy them to.
        stream: The stream the copies run on; by default [`side_stream(device)`][danling.runner.prefetch.side_stream],
            which every prefetcher on `device` shares.
    """

    def __init__(self, batches: Iterable, device: torch.device, stream: torch.cuda.Stream | None = None) -> None:
        self.batches = batches
        self.device = device
        # Chosen when a pass begins, so that constructing touches no CUDA state.
        self.stream = stream

    def __len__(self) -> int:
        # A progress bar without a given total takes it from here.
        if isinstance(self.batches, Sized):
            return len(self.batches)
        raise TypeError(f"the batches ({type(self.batches).__name__}) have no len()")

    def __iter__(self) -> Iterator[Any]:
        device = self.device
        if self.stream is None:
            self.stream = side_stream(device)
        stream = self.stream
        batches = iter(self.batches)
        ahead = self._copy_next(batches, stream)
        while ahead is not _END:
            if isinstance(ahead, _Failed):
                raise ahead.error
            current = torch.cuda.current_stream(device)
            # Only work queued from now on waits: the step's kernels start after the copy, the host goes on. Waiting
            # here, before the next copy is issued, makes the step wait for its own batch's copy and no other.
            current.wait_stream(stream)
            _record_stream(ahead, current)
            batch, ahead = ahead, self._copy_next(batches, stream)
            yield batch

    def _copy_next(self, batches: Iterator, stream: torch.cuda.Stream) -> Any:
        """The next batch, its copy issued on `stream`; `_END` after the last; `_Failed` if taking or copying raised."""
        try:
            batch = next(batches, _END)
            if batch is _END:
                return _END
            with torch.cuda.stream(stream):
                return to_device(batch, self.device)
        except Exception as error:  # raised when the batch is asked for, so the step before it still runs
            return _Failed(error)


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream batches are copied on to `device`: one per device, for every pass of the run.

    The caching allocator reuses a freed block only for tensors allocated on the block's own stream: with a new
    stream every pass, each pass would leave a batch or two of device memory cached for a stream no one uses again.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = _SIDE_STREAMS.get(index)
    if stream is None:
        stream = _SIDE_STREAMS[index] = torch.cuda.Stream(index)
    return stream


_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


class _Failed:
    """An error raised while taking or copying a batch ahead, kept until that batch is asked for."""

    def __init__(self, error: Exception) -> None:
        self.error = error


_END = object()


def _record_stream(data: Any, stream: torch.cuda.Stream) -> None:
    """Mark every tensor in `data`, nested as `to_device` nests them, as used by `stream`."""
    if isinstance(data, torch.Tensor):
        data.record_stream(stream)
    elif isinstance(data, Mapping):
        for value in data.values():
            _record_stream(value, stream)
    elif isinstance(data, (list, tuple)):
        for value in data:
            _record_stream(value, stream)
