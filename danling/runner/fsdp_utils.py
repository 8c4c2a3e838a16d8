"""FSDP2 and Distributed Checkpoint (DCP) pieces the FSDP runner calls, each checked by 2-process gloo runs.

What these functions rely on (torch 2.13, verified on CPU/gloo; see `notes/fsdp2_findings.md`):

- `fully_shard` is applied bottom-up: every unit first, the root last. Containers without `forward`
  (`nn.ModuleList`, `nn.ModuleDict`) cannot be units; modules that share a parameter cannot be separate units.
- FSDP all-gathers parameters inside `forward`, so every rank must run the same number of forwards, and
  forwards under `torch.no_grad()` are still recorded for the next backward's prefetch order.
  [`unsharded`][danling.runner.fsdp_utils.unsharded] lifts both limits for evaluation.
- A DCP checkpoint is a directory: one `__{rank}_{n}.distcp` file per writing rank and a `.metadata` file that
  rank 0 renames into place after every rank has written, so `.metadata` marks a finished save.
- A DCP checkpoint loads on any number of processes (resharding is done by the reader), and on one process
  without a process group.

`torch.distributed.fsdp` costs about a second to import, so it is imported inside the functions that need it.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy

__all__ = [
    "ModelOptimizerState",
    "checkpoint_complete",
    "clip_grad_norm",
    "dcp_load",
    "dcp_save",
    "dcp_to_full_state_dict",
    "fsdp_modules",
    "mixed_precision_policy",
    "no_gradient_sync",
    "shard_model",
    "sharding_units",
    "unsharded",
]

METADATA_FILE = ".metadata"

# (param_dtype, reduce_dtype) of `MixedPrecisionPolicy` for each `config.precision`; gradients reduce in fp32.
PRECISION_DTYPES: dict[str, tuple[torch.dtype | None, torch.dtype | None]] = {
    "fp32": (None, None),
    "bf16": (torch.bfloat16, torch.float32),
    "fp16": (torch.float16, torch.float32),
}

# The warning DCP gives whenever it runs without collectives, which is what a single process means to do.
_NO_DIST_WARNING = "torch.distributed is disabled, unavailable or uninitialized"


def _process_group_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextmanager
def _quiet_single_process() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_DIST_WARNING)
        yield


# Sharding


def mixed_precision_policy(precision: str | None) -> MixedPrecisionPolicy:
    """The `MixedPrecisionPolicy` for a precision name: compute in `precision`, reduce gradients in fp32.

    Parameters stay fp32 in their shards (the optimizer steps on those); FSDP casts them when it all-gathers.
    Forward outputs come out in the compute dtype.

    Args:
        precision: One of `fp32`, `bf16`, `fp16`, or `None` (same as `fp32`).

    Raises:
        ValueError: If `precision` is not one of those.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision is None:
        precision = "fp32"
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"unknown precision {precision!r}; expected one of: {', '.join(PRECISION_DTYPES)}")
    param_dtype, reduce_dtype = PRECISION_DTYPES[precision]
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)


def sharding_units(model: nn.Module, units: Iterable[nn.Module | type[nn.Module]] | None = None) -> list[nn.Module]:
    """The submodules `shard_model` gives their own FSDP unit, deepest first; the root is not among them.

    By default a unit is each direct child that holds parameters; `nn.ModuleList` and `nn.ModuleDict` are opened
    and their children taken instead, since FSDP runs on `forward` and those containers have none. Modules that
    share a parameter with another unit (tied embeddings) are left to the root, as FSDP cannot split a parameter
    between two units.

    Args:
        model: The root module.
        units: Submodules, or module classes whose every instance in `model` is a unit, to use instead of
            the default.

    Raises:
        ValueError: If a given module is not a submodule of `model`, or is `model` itself.
    """
    order = {id(module): index for index, module in enumerate(model.modules())}
    if units is None:
        chosen = _children_with_parameters(model)
    else:
        chosen = []
        for unit in units:
            if isinstance(unit, type):
                chosen.extend(module for module in model.modules() if isinstance(module, unit) and module is not model)
            elif id(unit) not in order or unit is model:
                raise ValueError(f"unit {type(unit).__name__} is not a submodule of the model being sharded")
            else:
                chosen.append(unit)
    unique = {id(module): module for module in chosen if any(True for _ in module.parameters())}
    owners: dict[int, int] = {}
    for module in unique.values():
        for parameter in module.parameters():
            owners[id(parameter)] = owners.get(id(parameter), 0) + 1
    kept = [m for m in unique.values() if all(owners[id(p)] == 1 for p in m.parameters())]
    # Reversed pre-order puts every module after its descendants: fully_shard must run bottom-up.
    return sorted(kept, key=lambda module: -order[id(module)])


def _children_with_parameters(module: nn.Module) -> list[nn.Module]:
    found: list[nn.Module] = []
    for child in module.children():
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            found.extend(_children_with_parameters(child))
        elif any(True for _ in child.parameters()):
            found.append(child)
    return found


def shard_model(
    model: nn.Module,
    units: Iterable[nn.Module | type[nn.Module]] | None = None,
    *,
    mesh: DeviceMesh | None = None,
    mp_policy: MixedPrecisionPolicy | None = None,
    reshard_after_forward: bool | None = None,
) -> nn.Module:
    """Apply `fully_shard` to each unit of `model` and then to `model` itself, in place.

    Call it before building the optimizer (which must hold the sharded parameters) and after copying the model
    for an EMA (`copy.deepcopy` of a sharded module raises). Shard the EMA copy with the same call so its shards
    line up with the model's and can be averaged locally.

    Args:
        model: The module to shard; a process group must be initialised (FSDP creates a 1-D mesh from it).
        units: See [`sharding_units`][danling.runner.fsdp_utils.sharding_units].
        mesh: Device mesh to shard over; default: all ranks of the default group, on the accelerator if any.
        mp_policy: Mixed precision; default: none. See
            [`mixed_precision_policy`][danling.runner.fsdp_utils.mixed_precision_policy].
        reshard_after_forward: Free gathered parameters after forward (`True`) or keep them for backward
            (`False`); `None` is FSDP's default: `True` for units, `False` for the root.

    Returns:
        `model`, now also an `FSDPModule`.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    options: dict[str, Any] = {
        "mesh": mesh,
        "mp_policy": mp_policy or MixedPrecisionPolicy(),
        "reshard_after_forward": reshard_after_forward,
    }
    for unit in sharding_units(model, units):
        fully_shard(unit, **options)
    fully_shard(model, **options)
    return model


def fsdp_modules(model: nn.Module) -> list[FSDPModule]:
    """Every module of `model` that `fully_shard` was applied to, the root first."""
    from torch.distributed.fsdp import FSDPModule

    return [module for module in model.modules() if isinstance(module, FSDPModule)]  # type: ignore[misc]


# Training


@contextmanager
def no_gradient_sync(model: nn.Module) -> Iterator[None]:
    """Skip the gradient reduce-scatter for backwards run inside; the first backward after it reduces everything.

    Use it for the micro-batches that do not close an accumulation window, as `DistributedDataParallel.no_sync`.
    Ranks hold full-size (unsharded) gradients in between. Verified equal, to 6e-8, to one large batch.

    Args:
        model: The root `FSDPModule`.
    """
    model.set_requires_gradient_sync(False)  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)  # type: ignore[operator]


def clip_grad_norm(
    parameters: Iterable[torch.Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> torch.Tensor:
    """`nn.utils.clip_grad_norm_` over sharded gradients; returns the global norm as a plain tensor.

    `clip_grad_norm_` already computes the norm of the whole (unsharded) gradient for DTensor gradients, but it
    returns a DTensor, which for `norm_type=inf` is a pending max (`Partial(max)`). This returns the reduced value,
    equal on every rank.

    Args:
        parameters: Parameters whose gradients to clip.
        max_norm: Largest norm allowed.
        norm_type: Order of the norm.
        error_if_nonfinite: Raise if the norm is nan or inf (on every rank, as the norm is global).
    """
    from torch.distributed.tensor import DTensor

    norm = nn.utils.clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


# Evaluation


@contextmanager
def unsharded(model: nn.Module, reshard_after_forward: bool | None = None) -> Iterator[nn.Module]:
    """Hold the full parameters of every FSDP unit, so ranks may run different numbers of forwards.

    Inside, forwards issue no collectives: a rank with one batch more (or none at all) does not hang and does
    not pair its all-gather with another rank's unrelated collective. Costs the memory of the full model on each
    rank while inside. On exit the parameters are sharded again and, if this rank ran a forward, the forward
    order FSDP recorded for backward prefetching is cleared with `reset_iter_state()`: left in place, it makes the
    next backward hang when ranks ran different numbers of forwards. Do not enter it with an accumulation window
    open.

    Args:
        model: The root `FSDPModule`.
        reshard_after_forward: The value given to `shard_model`, restored on exit.

    Yields:
        `model`.
    """
    modules = fsdp_modules(model)
    if not modules or modules[0] is not model:
        raise ValueError(f"expected the root module returned by shard_model, got {type(model).__name__}")
    forwards = 0

    def count(*_: Any) -> None:
        nonlocal forwards
        forwards += 1

    handle = model.register_forward_pre_hook(count)
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield model
    finally:
        handle.remove()
        for module in modules:
            module.reshard()
        # Only a root that ran forward has the per-iteration state reset_iter_state clears (it raises otherwise).
        if forwards:
            model.reset_iter_state()  # type: ignore[operator]
        for module in modules:
            value = reshard_after_forward if reshard_after_forward is not None else module is not model
            module.set_reshard_after_forward(value, recurse=False)


# Checkpoints


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
    `Stateful` objects (such as [`ModelOptimizerState`][danling.runner.fsdp_utils.ModelOptimizerState]) are
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
