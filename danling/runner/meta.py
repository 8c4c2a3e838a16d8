"""`RunnerMeta` runs `__post_init__` after the most-derived `__init__`; `RunnerMode` names the running modes."""

from __future__ import annotations

from enum import Enum
from typing import Any

__all__ = ["RunnerMeta", "RunnerMode"]


class RunnerMode(str, Enum):
    """What a runner is doing: `train`, `eval` (evaluate) or `inf` (infer).

    Examples:
        >>> RunnerMode("eval") is RunnerMode.eval
        True
        >>> RunnerMode.train == "train"
        True
    """

    train = "train"
    eval = "eval"
    inf = "inf"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> Any:
        raise ValueError(f"unknown mode {value!r}; expected one of: {', '.join(mode.value for mode in cls)}")


class RunnerMeta(type):
    """Metaclass that calls `__post_init__` once the whole `__init__` chain has run.

    A subclass assigns its model, optimizer and datasets in `__init__`; the runner then acts on them in
    `__post_init__` (seeding, logging, dataloaders, device placement, DDP), whatever the depth of subclassing.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__call__(*args, **kwargs)
        post_init = getattr(instance, "__post_init__", None)
        if post_init is not None:
            post_init()
        return instance
