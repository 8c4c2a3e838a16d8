"""Checkpoints written in the background: a snapshot on the training thread, the write and its publication after.

With `config.async_checkpoint`, a save copies the state into buffers that training never touches (pinned host
memory for tensors on a GPU, plain memory for tensors on the CPU) and returns; a writer thread then writes the file,
fsyncs it and publishes it (`latest`, `best`, `epoch-N`) exactly as a synchronous save does, through the same atomic
writes. A crash at any instant therefore leaves what a synchronous save would have left: the previous checkpoint, or
the new one, complete.

At most one save is in flight: the next save (and the end of training, and a load) first waits for the previous one,
so a single set of buffers, as large as the state, is reused from save to save. A failure of the writer is kept and
raised on the training thread by the next save, by [`wait`][danling.runner.async_checkpoint.CheckpointWriter.wait] or
at the end of training; its message names the file. The writer thread is not a daemon: an interpreter that exits
while a save is in flight finishes and publishes it first.
"""

from __future__ import annotations

import atexit
import copy
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CheckpointWriter", "SnapshotBuffers"]

# Leaves that nothing can change after the snapshot: kept as they are instead of being copied.
_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)

# Every writer alive, so that failures nobody collected are reported when the interpreter exits.
_WRITERS: weakref.WeakSet = weakref.WeakSet()


class SnapshotBuffers:
    """Host buffers that receive a copy of a state's tensors, kept and reused from one snapshot to the next.

    A buffer is keyed by where its tensor sits in the state (`("model", "weight")`) and reused while the shape and
    dtype stay the same, so saving the same state again and again allocates nothing after the first time. Buffers
    for tensors on a GPU are pinned, so the copy runs as a DMA transfer; the transfers are ordered on each device's
    current stream, after every kernel already queued (and before any queued later, such as the next optimizer
    step), and `ready` waits for them.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._events: list[Any] = []

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers: what the snapshot costs in host memory."""
        return sum(buffer.untyped_storage().nbytes() for buffer in self._buffers.values())

    def copy(self, state: Any) -> Any:
        """A copy of `state` that shares nothing training can change: its tensors copied into the buffers.

        Containers (dicts, lists, tuples) are rebuilt; other mutable leaves are deep-copied. Tensors that share
        memory in `state` (tied weights) share one buffer in the copy, as `torch.save` would store them once. Call
        [`ready`][danling.runner.async_checkpoint.SnapshotBuffers.ready] before reading the copy on another thread.
        """
        used: dict[tuple, torch.Tensor] = {}
        shared: dict[tuple, torch.Tensor] = {}
        devices: set[torch.device] = set()
        copied = self._copy(state, (), used, shared, devices)
        self._buffers = used  # buffers of tensors that are gone are dropped, not kept for ever
        self._events = []
        for device in devices:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            self._events.append(event)
        return copied

    def ready(self) -> None:
        """Wait until the copies from a GPU have landed in the buffers (callable from any thread)."""
        for event in self._events:
            event.synchronize()

    def _copy(
        self, value: Any, path: tuple, used: dict[tuple, torch.Tensor], shared: dict, devices: set[torch.device]
    ) -> Any:
        if isinstance(value, torch.Tensor):
            return self._copy_tensor(value, path, used, shared, devices)
        if type(value) in (dict, OrderedDict):
            return type(value)(
                (key, self._copy(item, (*path, key), used, shared, devices)) for key, item in value.items()
            )
        if type(value) in (list, tuple):
            return type(value)(
                self._copy(item, (*path, index), used, shared, devices) for index, item in enumerate(value)
            )
        if isinstance(value, _IMMUTABLE):
            return value
        # Any other object (a dict subclass that needs more to be built, say) is copied whole.
        return copy.deepcopy(value)

    def _copy_tensor(
        self, tensor: torch.Tensor, path: tuple, used: dict, shared: dict, devices: set[torch.device]
    ) -> torch.Tensor:
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter) or tensor.layout != torch.strided:
            # A tensor subclass or a sparse tensor: no buffer of ours fits it; a fresh copy on the host does.
            return tensor.detach().to("cpu", copy=True)
        tensor = tensor.detach()
        alias = (
            tensor.device,
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tensor.shape,
            tensor.stride(),
            tensor.dtype,
        )
        if tensor.numel() and alias in shared:
            return shared[alias]
        buffer = self._buffers.get(path)
        pin = tensor.device.type == "cuda"
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype or buffer.is_pinned() != pin:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pin)
        if pin:
            buffer.copy_(tensor, non_blocking=True)
            devices.add(tensor.device)
        else:
            buffer.copy_(tensor)
        used[path] = shared[alias] = buffer
        return buffer


class CheckpointWriter:
    """One checkpoint at a time written in a background thread, from a snapshot taken on the caller's thread.

    Examples:
        >>> import os, tempfile, danling as dl
        >>> path = os.path.join(tempfile.mkdtemp(), "latest.pth")
        >>> writer = CheckpointWriter()
        >>> weights = torch.zeros(3)
        >>> writer.submit({"w": weights}, lambda state: dl.save(state, path), path)
        >>> weights += 1  # training goes on; the checkpoint holds the state at the save
        >>> writer.wait()
        >>> dl.load(path)["w"]
        tensor([0., 0., 0.])
    """

    def __init__(self) -> None:
        self.buffers = SnapshotBuffers()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._path: str | None = None
        _WRITERS.add(self)

    @property
    def busy(self) -> bool:
        """Whether a save is still being written."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, state: Any, write: Callable[[Any], None], path: str) -> None:
        """Snapshot `state`, then run `write(snapshot)` in the background; return once the snapshot is taken.

        Waits for the save in flight first, and raises its failure if it failed (nothing new is started then).

        Args:
            state: The state to save; nothing in what `write` receives is shared with it.
            write: Writes and publishes the checkpoint; whatever it raises is kept for `wait`.
            path: The file `write` writes, to name in messages.
        """
        self.wait()
        snapshot = self.buffers.copy(state)
        self._path = path
        self._thread = threading.Thread(
            target=self._run, args=(write, snapshot), name=f"danling-checkpoint-writer:{path}", daemon=False
        )
        self._thread.start()

    def _run(self, write: Callable[[Any], None], snapshot: Any) -> None:
        try:
            self.buffers.ready()
            write(snapshot)
        # Any failure belongs to the training thread, which raises it at the next save or at the end.
        except BaseException as error:
            self._error = error

    def wait(self, raise_error: bool = True) -> BaseException | None:
        """Wait for the save in flight, if any; raise its failure (or, with `raise_error=False`, return it).

        A failure is reported once: after it is raised (or returned), the writer is ready for the next save.
        """
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is None:
            return None
        path = self._path
        if path is not None and isinstance(error, Exception) and path not in str(error):
            # The atomic writes name their file; anything else that failed in the writer is made to.
            renamed = RuntimeError(f"checkpoint {path!r} was not written: {type(error).__name__}: {error}")
            renamed.__cause__ = error
            error = renamed
        if raise_error:
            raise error
        return error


@atexit.register
def _report_uncollected_failures() -> None:
    # Runs after the interpreter joined the writer threads (they are not daemons): every save in flight is done.
    for writer in list(_WRITERS):
        error = writer.wait(raise_error=False)
        if error is not None:
            print(
                f"danling: a checkpoint written in the background failed: {type(error).__name__}: {error}",
                file=sys.stderr,
            )
