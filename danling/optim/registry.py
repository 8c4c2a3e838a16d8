"""Registries of optimizers and lr schedulers, so that a config can name them.

Both are `chanfig.Registry`s: names are case-insensitive, and `build` picks the component by the
`type` entry and passes every other entry on as a keyword argument.
It accepts the config either unpacked or as a mapping:

- `OPTIMIZERS.build(model.parameters(), **config)` or `OPTIMIZERS.build(params=model.parameters(), **config)`;
- `OPTIMIZERS.build(config, params=model.parameters())` (keyword arguments override entries of `config`).

A component without a `**kwargs` parameter gets only the entries its signature names: chanfig drops the others with a
`UserWarning` rather than failing, so watch for that warning when a setting seems to have no effect.

An unknown name raises `ValueError` listing the registered names.

Examples:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> config = {"type": "sgd", "lr": 0.1, "momentum": 0.9}
    >>> optimizer = OPTIMIZERS.build(model.parameters(), **config)
    >>> type(optimizer).__name__, optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["momentum"]
    ('SGD', 0.1, 0.9)
    >>> optimizer = OPTIMIZERS.build({"type": "AdamW", "lr": 1e-3}, params=model.parameters(), weight_decay=0.05)
    >>> type(optimizer).__name__, optimizer.param_groups[0]["weight_decay"]
    ('AdamW', 0.05)

    The runner's scheduler takes `total_steps` from the runner and the rest from the config:

    >>> config = {"type": "lr_scheduler", "strategy": "linear", "warmup_steps": 0.1}
    >>> scheduler = SCHEDULERS.build(optimizer, total_steps=100, **config)
    >>> type(scheduler).__name__, scheduler.strategy, scheduler.warmup_steps
    ('LRScheduler', 'linear', 10)
    >>> type(SCHEDULERS.build(optimizer, type="step", step_size=10)).__name__
    'StepLR'
    >>> OPTIMIZERS.build(model.parameters(), type="adamm", lr=0.1)
    Traceback (most recent call last):
    ValueError: unknown optimizer 'adamm'; expected one of: ...
"""

from __future__ import annotations

from typing import Any

from chanfig import Registry as _ChanfigRegistry
from torch import optim
from torch.optim import lr_scheduler

from .lr_scheduler import LRScheduler

__all__ = ["OPTIMIZERS", "SCHEDULERS", "Registry"]


class Registry(_ChanfigRegistry):
    """A `chanfig.Registry` whose unknown-name error lists the registered names.

    Args:
        kind: What the registry holds, for error messages (e.g. `"optimizer"`).
        **kwargs: Passed to `chanfig.Registry`.

    Examples:
        >>> registry = Registry(kind="widget")
        >>> @registry.register("plain")
        ... class Widget:
        ...     def __init__(self, size: int):
        ...         self.size = size
        >>> registry.build(type="Plain", size=3).size
        3
        >>> registry.lookup("fancy")
        Traceback (most recent call last):
        ValueError: unknown widget 'fancy'; expected one of: plain
    """

    # Keyword-only: chanfig re-creates registries with positional arguments of its own (`empty(*args)`).
    def __init__(self, *args: Any, kind: str = "component", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # setattr keeps `kind` an attribute; plain assignment on a chanfig dict would register it as an entry.
        self.setattr("kind", kind)

    def lookup(self, name: str, default: Any = None) -> Any:
        """Return the component registered as `name` (case-insensitive).

        Args:
            name: Registered name.
            default: Returned when `name` is not registered; `None` means raise instead.

        Returns:
            The registered component.

        Raises:
            ValueError: If `name` is not registered and no default is given; the message lists the registered names.
        """
        try:
            return super().lookup(name, default) if default is not None else super().lookup(name)
        except ValueError as error:
            kind = self.getattr("kind", "component")
            hint = "" if isinstance(name, str) else f" (is the '{self.getattr('key', 'type')}' entry missing?)"
            raise ValueError(f"unknown {kind} {name!r}{hint}; expected one of: {', '.join(sorted(self))}") from error


OPTIMIZERS = Registry(kind="optimizer")
"""torch optimizers by lowercase name (`sgd`, `adam`, `adamw`, `rmsprop`, `adagrad`, ...)."""

SCHEDULERS = Registry(kind="scheduler")
"""lr schedulers by name: DanLing's [`LRScheduler`][danling.optim.LRScheduler] as `"lr_scheduler"` (aliases
`"danling"` and its class name), and torch's common schedulers (`step`, `multistep`, `cosine`, `onecycle`, ...).

torch's `"cosine"` here is `CosineAnnealingLR` (it takes `T_max`); for a cosine decay with warmup, build
`"lr_scheduler"` with `strategy="cosine"`.
"""

_TORCH_OPTIMIZERS = {
    "sgd": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "adamax": "Adamax",
    "adadelta": "Adadelta",
    "adagrad": "Adagrad",
    "adafactor": "Adafactor",
    "asgd": "ASGD",
    "lbfgs": "LBFGS",
    "muon": "Muon",
    "nadam": "NAdam",
    "radam": "RAdam",
    "rmsprop": "RMSprop",
    "rprop": "Rprop",
    "sparse_adam": "SparseAdam",
}

# ReduceLROnPlateau, SequentialLR and ChainedScheduler are left out: the first needs a metric at every step() and the
# others wrap scheduler objects, neither of which a flat config can express.
_TORCH_SCHEDULERS = {
    "step": "StepLR",
    "multistep": "MultiStepLR",
    "exponential": "ExponentialLR",
    "cosine": "CosineAnnealingLR",
    "cosine_restarts": "CosineAnnealingWarmRestarts",
    "onecycle": "OneCycleLR",
    "cyclic": "CyclicLR",
    "linear": "LinearLR",
    "constant": "ConstantLR",
    "polynomial": "PolynomialLR",
    "lambda": "LambdaLR",
    "multiplicative": "MultiplicativeLR",
}

# Newer optimizers (Adafactor, Muon) are absent from older torch releases that the package still supports.
for _name, _attr in _TORCH_OPTIMIZERS.items():
    if hasattr(optim, _attr):
        OPTIMIZERS.register(getattr(optim, _attr), _name)
for _name, _attr in _TORCH_SCHEDULERS.items():
    if hasattr(lr_scheduler, _attr):
        SCHEDULERS.register(getattr(lr_scheduler, _attr), _name)
del _name, _attr
SCHEDULERS.register(LRScheduler, "lr_scheduler")
SCHEDULERS.register(LRScheduler, "danling")
SCHEDULERS.register(LRScheduler)
