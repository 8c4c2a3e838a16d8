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

import dataclasses
import itertools
import warnings
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
    "device_mesh",
    "fsdp_modules",
    "mixed_precision_policy",
    "no_gradient_sync",
    "shard_model",
    "sharding_units",
    "unit_summary",
    "unsharded",
]

# The fewest parameters a default FSDP unit holds: 4 MiB in fp32, large enough that an all-gather is not
# dominated by its latency, small enough that a model of a few dozen megabytes still has several units.
DEFAULT_MIN_UNIT_PARAMS = 1_000_000

# (param_dtype, reduce_dtype) of `MixedPrecisionPolicy` for each `config.precision`; gradients reduce in fp32.
PRECISION_DTYPES: dict[str, tuple[torch.dtype | None, torch.dtype | None]] = {
    "fp32": (None, None),
    "bf16": (torch.bfloat16, torch.float32),
    "fp16": (torch.float16, torch.float32),
}
OUTPUT_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Sharding


def mixed_precision_policy(precision: str | None, output_precision: str | None = "fp32") -> MixedPrecisionPolicy:
    """The `MixedPrecisionPolicy` for a precision name: compute in `precision`, reduce gradients in fp32.

    Parameters stay fp32 in their shards (the optimizer steps on those); FSDP casts them when it all-gathers.
    Forward outputs are cast to `output_precision`, so by default the criterion gets fp32 logits, as it does
    under `torch.autocast`; `shard_model` has only the root cast its outputs.

    Args:
        precision: One of `fp32`, `bf16`, `fp16`, or `None` (same as `fp32`).
        output_precision: Precision of the forward outputs under `bf16`/`fp16`: one of the same names, or
            `None` to leave them in `precision`.

    Raises:
        ValueError: If `precision` or `output_precision` is not one of those.

    Examples:
        >>> policy = mixed_precision_policy("bf16")
        >>> policy.param_dtype, policy.reduce_dtype, policy.output_dtype
        (torch.bfloat16, torch.float32, torch.float32)
        >>> mixed_precision_policy("bf16", None).output_dtype is None
        True
        >>> mixed_precision_policy("fp32").output_dtype is None  # nothing to cast
        True
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    for name, value in (("precision", precision), ("output precision", output_precision)):
        if value is not None and value not in PRECISION_DTYPES:
            raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(PRECISION_DTYPES)}")
    param_dtype, reduce_dtype = PRECISION_DTYPES[precision or "fp32"]
    output_dtype = None
    if param_dtype is not None and output_precision is not None:
        output_dtype = OUTPUT_DTYPES[output_precision]
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype, output_dtype=output_dtype)


def device_mesh(device: torch.device | str) -> DeviceMesh:
    """A 1-D mesh over every process of the default group, on `device`'s type: what `shard_model` shards over.

    FSDP's own default is the machine's accelerator whatever device the model is on; a model kept on the CPU of
    a GPU machine (`config.device="cpu"`, with `gloo`) needs a CPU mesh. On a CUDA mesh FSDP works on the current
    CUDA device, so make `device` current first.

    Args:
        device: The device the model's parameters are on (an index, if any, is dropped: a mesh names a type).
    """
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(torch.device(device).type, (torch.distributed.get_world_size(),))


def sharding_units(
    model: nn.Module,
    units: Iterable[nn.Module | type[nn.Module]] | None = None,
    min_params: int = DEFAULT_MIN_UNIT_PARAMS,
) -> list[nn.Module]:
    """The submodules `shard_model` gives their own FSDP unit, deepest first; the root is not among them.

    By default the units are the smallest subtrees that hold at least `min_params` parameters not already in a unit
    below them, found bottom-up (the size-based policy of FSDP1's `size_based_auto_wrap_policy`): for a model of
    equal blocks inside one container, each block. `nn.ModuleList` and `nn.ModuleDict` are never units, since FSDP
    runs on `forward` and those containers have none; their parameters count towards the module above.

    Units may nest (a block and the attention inside it): each is sharded, the inner one first, and the outer one
    manages only the parameters outside its inner units. A parameter shared by two units neither of which contains
    the other (tied embeddings) cannot be split between them: such units are dropped, with a warning naming them,
    and their parameters are left to a unit around both or to the root.

    Args:
        model: The root module.
        units: Submodules, or module classes whose every instance in `model` is a unit, to use instead of
            the default.
        min_params: For the default units: the fewest parameters a unit holds.

    Raises:
        ValueError: If a given module is not a submodule of `model`, or is `model` itself.
    """
    order = {id(module): index for index, module in enumerate(model.modules())}
    if units is None:
        chosen = _units_by_size(model, min_params)
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
    shared = _units_sharing_parameters(model, unique)
    if shared:
        warnings.warn(
            "FSDP units dropped, as they share a parameter with a unit neither inside nor around them (tied "
            f"weights); their parameters go to the unit around them or the root: {', '.join(shared.values())}",
            RuntimeWarning,
            stacklevel=2,
        )
    kept = [module for key, module in unique.items() if key not in shared]
    # Reversed pre-order puts every module after its descendants: fully_shard must run bottom-up.
    return sorted(kept, key=lambda module: -order[id(module)])


def _units_sharing_parameters(model: nn.Module, units: dict[int, nn.Module]) -> dict[int, str]:
    # For each parameter, the units holding it; nested units hold a parameter together legitimately (the innermost
    # manages it), but two units that do not contain one another cannot both hold it. Returns id -> qualified name.
    names = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
    inside = {key: {id(sub) for sub in unit.modules()} for key, unit in units.items()}
    holders: dict[int, list[int]] = {}
    for key, unit in units.items():
        for parameter in unit.parameters():
            holders.setdefault(id(parameter), []).append(key)
    shared: dict[int, str] = {}
    for keys in holders.values():
        for a, b in itertools.combinations(keys, 2):
            if b not in inside[a] and a not in inside[b]:
                shared[a], shared[b] = names[a], names[b]
    return shared


def _units_by_size(model: nn.Module, min_params: int) -> list[nn.Module]:
    found: list[nn.Module] = []
    seen: set[int] = set()  # a parameter counts once, for the first subtree that reaches it (tied weights)

    def pending(module: nn.Module) -> int:
        # Parameters of `module`'s subtree not yet in a unit; makes `module` a unit when they reach min_params.
        count = sum(pending(child) for child in module.children())
        for parameter in module.parameters(recurse=False):
            if id(parameter) not in seen:
                seen.add(id(parameter))
                count += parameter.numel()
        if module is not model and count >= min_params and not isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            found.append(module)
            return 0
        return count

    pending(model)
    return found


def unit_summary(model: nn.Module, units: Iterable[nn.Module]) -> str:
    """One line per unit, its qualified name and the parameters it manages, then the root's: for the log.

    Args:
        model: The root module.
        units: The units, as [`sharding_units`][danling.runner.fsdp_utils.sharding_units] returns them.
    """
    names = {id(module): name for name, module in model.named_modules()}
    managed: set[int] = set()
    lines = []
    for unit in units:  # deepest first, so an outer unit's count leaves out its inner units'
        own = [p for p in unit.parameters() if id(p) not in managed]
        managed.update(id(p) for p in own)
        lines.append(f"  {names[id(unit)]} ({type(unit).__name__}): {_count(own)} parameters")
    rest = [p for p in model.parameters() if id(p) not in managed]
    lines.append(f"  (root) ({type(model).__name__}): {_count(rest)} parameters")
    return "\n".join(lines)


def _count(parameters: list[nn.Parameter]) -> str:
    return f"{sum(p.numel() for p in parameters):,}"


def shard_model(
    model: nn.Module,
    units: Iterable[nn.Module | type[nn.Module]] | None = None,
    *,
    min_params: int = DEFAULT_MIN_UNIT_PARAMS,
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
        min_params: The fewest parameters a default unit holds; see `sharding_units`.
        mesh: Device mesh to shard over; default: all ranks of the default group, on the accelerator if any
            (give one built from the device the model is on: see
            [`device_mesh`][danling.runner.fsdp_utils.device_mesh]).
        mp_policy: Mixed precision; default: none. See
            [`mixed_precision_policy`][danling.runner.fsdp_utils.mixed_precision_policy].
        reshard_after_forward: Free gathered parameters after forward (`True`) or keep them for backward
            (`False`); `None` is FSDP's default: `True` for units, `False` for the root.

    Returns:
        `model`, now also an `FSDPModule`.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = mp_policy or MixedPrecisionPolicy()
    options: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    # Units hand their outputs on in the compute dtype; only what leaves the model is cast (to the criterion).
    unit_policy = dataclasses.replace(policy, output_dtype=None)
    for unit in sharding_units(model, units, min_params):
        fully_shard(unit, mp_policy=unit_policy, **options)
    fully_shard(model, mp_policy=policy, **options)
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
