"""Distributed Checkpoint (DCP) pieces the FSDP runner calls, each checked by 2-process gloo runs.

What these functions rely on (torch 2.13, verified on CPU/gloo; see `notes/fsdp2_findings.md`):

- A DCP checkpoint is a directory: one `__{rank}_{n}.distcp` file per writing rank and a `.metadata` file that
  rank 0 renames into place after every rank has written, so `.metadata` marks a finished save.
- A DCP checkpoint loads on any number of processes (resharding is done by the reader), and on one process
  without a process group.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = [
    "METADATA_FILE",
    "ModelOptimizerState",
    "checkpoint_complete",
    "dcp_async_save",
    "dcp_load",
    "dcp_save",
    "snapshot_stager",
    "dcp_to_full_state_dict",
]

METADATA_FILE = ".metadata"

# The warning DCP gives whenever it runs without collectives, which is what a single process means to do.
_NO_DIST_WARNING = "torch.distributed is disabled, unavailable or uninitialized"


def _process_group_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextmanager
def _quiet_single_process() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_DIST_WARNING)
        yield


class ModelOptimizerState:
    """A model and its optimizer as one DCP `Stateful`: FQN-keyed, sharded state in, and back out.

    `dcp.save` and `dcp.load` call `state_dict()`/`load_state_dict()` on it. The state has two entries, `model`
    and `optimizer` (the optimizer keyed by parameter name, so it loads at any world size and into an unsharded
    model). Give `optimizer=None` for a model alone (an EMA).

    Args:
        model: A sharded or plain module.
        optimizer: Its optimizer, or `None`.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model = model
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        """The model's (and optimizer's) state; DTensors for sharded modules."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        if self.optimizer is None:
            return {"model": get_model_state_dict(self.model)}
        untouched = not self.optimizer.state
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        if untouched:
            # get_state_dict fills an optimizer that has not stepped by stepping it with lr 0 (AdamW's `step`
            # becomes 1); empty it again so that taking a state dict does not change the run.
            self.optimizer.state.clear()
        return {"model": model_state, "optimizer": optimizer_state}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load what `state_dict()` returned (after DCP filled it in) into the model and optimizer."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        if self.optimizer is None:
            set_model_state_dict(self.model, state_dict["model"])
        else:
            set_state_dict(
                self.model,
                self.optimizer,
                model_state_dict=state_dict["model"],
                optim_state_dict=state_dict["optimizer"],
            )


def dcp_save(state: dict[str, Any], directory: str | os.PathLike, overwrite: bool = False) -> None:
    """Save `state` as a DCP checkpoint in `directory`; every rank calls it (or one process, without a group).

    Each rank writes its own shards; tensors replicated across ranks are written once, by one rank. Values of
    `Stateful` objects (such as [`ModelOptimizerState`][danling.runner.dcp.ModelOptimizerState]) are
    taken with `state_dict()`. Non-tensor values are written by one rank only, so keep per-rank values (RNG
    states) out of `state`.

    Args:
        state: Nested mapping of tensors, DTensors, picklable values and `Stateful` objects.
        directory: Where to write. Write into a fresh directory and then point to it: DCP overwrites in place.
        overwrite: Allow replacing a finished checkpoint already in `directory`.

    Raises:
        FileExistsError: If `directory` holds a finished checkpoint and `overwrite` is false.
    """
    import torch.distributed.checkpoint as dcp

    if not overwrite and os.path.exists(os.path.join(directory, METADATA_FILE)):
        raise FileExistsError(f"{directory} already holds a checkpoint; pass overwrite=True to replace it")
    writer = dcp.FileSystemWriter(directory, overwrite=True)
    with _quiet_single_process():
        dcp.save(state, storage_writer=writer, no_dist=not _process_group_active())


def snapshot_stager(pinned: bool) -> Any:
    """A DCP stager that copies a state to host memory on the calling thread, into storages it keeps and reuses.

    One per runner: it caches a host copy of every storage it has staged (keyed by the original storage), so saving
    the same state again allocates nothing. `pinned` (for a state on a GPU) pins those copies and transfers them
    without blocking, synchronizing once they are all queued. Close it (`close()`) when done with it.
    """
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    return DefaultStager(
        StagingOptions(
            use_pinned_memory=pinned, use_shared_memory=False, use_async_staging=False, use_non_blocking_copy=pinned
        )
    )


def dcp_async_save(state: dict[str, Any], directory: str | os.PathLike, stager: Any, process_group: Any) -> Any:
    """Start saving `state` as a DCP checkpoint in `directory`; return a future done when this rank's part is.

    Every rank calls it. The state is staged (copied by `stager`, see `snapshot_stager`) before this returns, so
    training may change it at once; the writes, and the collectives that finish the checkpoint (`.metadata`, by the
    coordinator, once every rank has written), run in a background thread on `process_group`, which must be a
    `gloo` group used by nothing else (the background collectives must never interleave with training's).

    Raises:
        FileExistsError: If `directory` already holds a finished checkpoint.
    """
    import torch.distributed.checkpoint as dcp

    if os.path.exists(os.path.join(directory, METADATA_FILE)):
        raise FileExistsError(f"{directory} already holds a checkpoint")
    writer = dcp.FileSystemWriter(directory, overwrite=True)
    active = _process_group_active()
    with _quiet_single_process():
        return dcp.async_save(
            state,
            storage_writer=writer,
            process_group=process_group if active else None,
            async_stager=stager,
            no_dist=not active,
        )


def dcp_load(state: dict[str, Any], directory: str | os.PathLike) -> None:
    """Load the DCP checkpoint in `directory` into `state`, in place; every rank calls it.

    `state` is the template: its tensors (sharded or not) receive the saved values, resharded to whatever
    the current world size is; `Stateful` values are loaded with `load_state_dict`; other values are replaced.
    Only keys present in `state` are read, and an empty dict in `state` reads nothing.

    Args:
        state: Same layout as the saved state, for example `{"app": ModelOptimizerState(model, optimizer)}`.
        directory: A finished checkpoint.

    Raises:
        FileNotFoundError: If `directory` is not a finished checkpoint; the message lists what is wrong.
    """
    import torch.distributed.checkpoint as dcp

    problems = checkpoint_complete(directory)
    if problems:
        raise FileNotFoundError(f"cannot load checkpoint {directory}: " + "; ".join(problems))
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=directory, no_dist=not _process_group_active())


def _read_metadata(directory: str | os.PathLike) -> Any:
    import torch.distributed.checkpoint as dcp

    return dcp.FileSystemReader(directory).read_metadata()


def checkpoint_complete(directory: str | os.PathLike) -> list[str]:
    """What is wrong with the DCP checkpoint in `directory`; an empty list if it is complete.

    Checks that `.metadata` is there and readable, and that every file it references exists and is long enough
    to hold every entry (offset plus length) the metadata places in it. Reads no tensor data.

    Args:
        directory: The checkpoint directory.
    """
    if not os.path.isdir(directory):
        return [f"{directory} is not a directory"]
    if not os.path.isfile(os.path.join(directory, METADATA_FILE)):
        return [f"{METADATA_FILE} is missing (the save did not finish)"]
    try:
        metadata = _read_metadata(directory)
    # The metadata is a pickle: a truncated or foreign file fails in many ways, all meaning "unreadable".
    except Exception as error:
        return [f"{METADATA_FILE} is unreadable: {type(error).__name__}: {error}"]
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        path = info.relative_path
        needed[path] = max(needed.get(path, 0), info.offset + info.length)
    problems = []
    for path, size in sorted(needed.items()):
        full = os.path.join(directory, path)
        if not os.path.isfile(full):
            problems.append(f"{path} is missing")
        elif os.path.getsize(full) < size:
            problems.append(f"{path} holds {os.path.getsize(full)} bytes, the metadata needs {size}")
    return problems


def dcp_to_full_state_dict(directory: str | os.PathLike, keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Read a DCP checkpoint into ordinary full tensors on this process alone, with no collectives.

    Works without a process group, and on one rank of a running group. The result has the saved layout, e.g.
    `{"app": {"model": {...}, "optimizer": {"state": {fqn: ...}, "param_groups": [...]}}}`; the model part loads
    with `module.load_state_dict`, the optimizer part with `torch.distributed.checkpoint.state_dict.set_state_dict`
    (it is keyed by parameter name).

    Args:
        directory: A finished checkpoint.
        keys: Top-level keys to read (e.g. `["app"]`); default: all.

    Raises:
        FileNotFoundError: If `directory` is not a finished checkpoint.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    problems = checkpoint_complete(directory)
    if problems:
        raise FileNotFoundError(f"cannot read checkpoint {directory}: " + "; ".join(problems))
    metadata = _read_metadata(directory)
    paths = metadata.planner_data or {}
    template: dict[str, Any] = {}
    for fqn, item in metadata.state_dict_metadata.items():
        path = tuple(paths.get(fqn, (fqn,)))
        if keys is not None and path[0] not in keys:
            continue
        value = torch.empty(item.size, dtype=item.properties.dtype) if isinstance(item, TensorStorageMetadata) else None
        _set_path(template, path, value)
    with _quiet_single_process():
        dcp.load(template, checkpoint_id=directory, no_dist=True)
    return template


def _set_path(root: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    # The path of a flattened key, as the default planner records it: strings index dicts, integers lists.
    node: Any = root
    for key, following in itertools.pairwise(path):
        _grow(node, key)
        if node[key] is None:
            node[key] = [] if isinstance(following, int) else {}
        node = node[key]
    _grow(node, path[-1])
    node[path[-1]] = value


def _grow(node: Any, key: Any) -> None:
    if isinstance(node, list):
        node.extend([None] * (key + 1 - len(node)))
    elif key not in node:
        node[key] = None
