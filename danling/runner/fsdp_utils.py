"""FSDP2 pieces the FSDP runner calls (sharding, precision, accumulation, clipping, evaluation), each checked by
2-process gloo runs; its checkpoints are in [`danling.runner.dcp`][danling.runner.dcp].

What these functions rely on (torch 2.13, verified on CPU/gloo; see `notes/fsdp2_findings.md`):

- `fully_shard` is applied bottom-up: every unit first, the root last. Containers without `forward`
  (`nn.ModuleList`, `nn.ModuleDict`) cannot be units; modules that share a parameter cannot be separate units.
- FSDP all-gathers parameters inside `forward`, so every rank must run the same number of forwards, and
  forwards under `torch.no_grad()` are still recorded for the next backward's prefetch order.
  [`unsharded`][danling.runner.fsdp_utils.unsharded] lifts both limits for evaluation.

`torch.distributed.fsdp` costs about a second to import, so it is imported inside the functions that need it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy

__all__ = [
    "clip_grad_norm",
    "fsdp_modules",
    "mixed_precision_policy",
    "no_gradient_sync",
    "shard_model",
    "sharding_units",
    "unsharded",
]

# (param_dtype, reduce_dtype) of `MixedPrecisionPolicy` for each `config.precision`; gradients reduce in fp32.
PRECISION_DTYPES: dict[str, tuple[torch.dtype | None, torch.dtype | None]] = {
    "fp32": (None, None),
    "bf16": (torch.bfloat16, torch.float32),
    "fp16": (torch.float16, torch.float32),
}

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
