"""The EMA as the backends handle it: the module that holds its weights, and an update one tensor at a time.

A runner's `ema` is either a `torch.optim.swa_utils.AveragedModel` (updated with `update_parameters(model)`) or an
object of the `update(model)` kind (timm's `ModelEmaV2` style), which holds its copy of the model in `.module`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_swa_avg_fn, get_swa_multi_avg_fn
from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices  # as `update_parameters` decides

from ..utils import distributed as du

__all__ = ["average_in_place", "broadcast_ema", "ema_module"]


def ema_module(ema: Any) -> nn.Module | None:
    """The module holding the EMA's weights and buffers: the EMA itself when it is a module (`AveragedModel`, an
    `nn.Module` EMA), else its `.module`; `None` when it has neither (no EMA, or one that keeps no module)."""
    if isinstance(ema, nn.Module):
        return ema
    module = getattr(ema, "module", None)
    return module if isinstance(module, nn.Module) else None


def broadcast_ema(ema: Any, src: int = 0) -> None:
    """Give every process the EMA's parameters and buffers as process `src` holds them, in place.

    Each process seeds differently (by rank), so each builds its EMA from differently initialised weights. A
    backend broadcasts the model from rank 0 when it wraps it (DDP does it itself); the EMA must follow, or an
    EMA of the `update(model)` kind (and an EMA's buffers) stays different on each process for about
    `1 / (1 - decay)` steps: evaluation would average metrics of different models, and only rank 0's is saved.
    """
    module = ema_module(ema)
    if module is not None:
        du.broadcast_module(module, src)


@torch.no_grad()
def average_in_place(ema: AveragedModel, parameters: Iterable[torch.Tensor], buffers: Iterable[torch.Tensor]) -> None:
    """`ema.update_parameters(model)`, from the model's `parameters` and `buffers` given one tensor at a time.

    `AveragedModel.update_parameters` first collects every parameter of the model moved to the EMA's device, and
    averages them in groups of one device and dtype; where the model's dtype differs from the EMA's (a bf16 module,
    an fp32 EMA), that is a cast copy of the whole model at every step. Here each pair is averaged in place by the
    EMA's own function (`multi_avg_fn` on one-element lists, or `avg_fn`; `torch._foreach_lerp_` for torch's EMA
    and SWA functions), so at most one tensor is cast at a time, and none when the dtypes already agree.

    Args:
        ema: The averaged model, updated in place (`n_averaged` too).
        parameters: The model's parameters, in the order of `ema.module.parameters()` (in any dtype).
        buffers: The model's buffers, in the order of `ema.module.buffers()`.
    """
    averaged: Iterable[torch.Tensor] = ema.module.parameters()
    sources: Iterable[torch.Tensor] = parameters
    if ema.use_buffers:
        averaged, sources = [*averaged, *ema.module.buffers()], [*sources, *buffers]
    first = bool(ema.n_averaged == 0)
    counts: dict[torch.device, torch.Tensor] = {}
    # Without a function of its own, an AveragedModel averages as SWA does: with `_foreach_lerp_` on devices with
    # foreach kernels, else with the element-wise formula (the two round differently).
    foreach_devices = _get_foreach_kernels_supported_devices()
    swa_multi_avg_fn, swa_avg_fn = get_swa_multi_avg_fn(), get_swa_avg_fn()
    for target, source in zip(averaged, sources, strict=True):
        target = target.detach()
        source = source.detach().to(device=target.device, dtype=target.dtype)  # no copy when both agree
        if first:
            target.copy_(source)
            continue
        count = counts.get(target.device)
        if count is None:
            count = counts[target.device] = ema.n_averaged.to(target.device)
        if ema.multi_avg_fn is not None:
            ema.multi_avg_fn([target], [source], count)
        elif ema.avg_fn is not None:
            target.copy_(ema.avg_fn(target, source, count))
        elif target.device.type in foreach_devices:
            swa_multi_avg_fn([target], [source], count)
        else:
            target.copy_(swa_avg_fn(target, source, count))
    if not ema.use_buffers:
        # As `update_parameters`: buffers not averaged follow the model's.
        for target, source in zip(ema.module.buffers(), buffers, strict=True):
            target.detach().copy_(source.detach())
    ema.n_averaged += 1
