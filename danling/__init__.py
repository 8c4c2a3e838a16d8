"""DanLing: a PyTorch training runner.

Subclass [`TorchRunner`][danling.TorchRunner] (or [`Runner`][danling.Runner]), assign a model, optimizer,
criterion and datasets in `__init__`, and call `train()`, `evaluate()` or `infer()`.

The names below are imported when first used (`dl.TorchRunner` imports the runner, and torch with it), so that the
`danling` command (`python -m danling`), which only reads run directories, starts without importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from . import metrics, optim, runner, utils
    from .metrics import (
        AverageMeter,
        AverageMeters,
        MetricMeter,
        MetricMeters,
        Metrics,
        MultiTaskAverageMeters,
        MultiTaskMetricMeters,
        MultiTaskMetrics,
    )
    from .optim import LRScheduler
    from .runner import BaseRunner, Config, Runner, TorchRunner
    from .utils import catch, ensure_dir, flexible_decorator, is_json_serializable, load, method_cache, save
    from .utils.contextmanagers import debug

__all__ = [
    "AverageMeter",
    "AverageMeters",
    "BaseRunner",
    "Config",
    "LRScheduler",
    "MetricMeter",
    "MetricMeters",
    "Metrics",
    "MultiTaskAverageMeters",
    "MultiTaskMetricMeters",
    "MultiTaskMetrics",
    "Runner",
    "TorchRunner",
    "__version__",
    "catch",
    "debug",
    "ensure_dir",
    "flexible_decorator",
    "is_json_serializable",
    "load",
    "method_cache",
    "metrics",
    "optim",
    "runner",
    "save",
    "utils",
]

_SUBPACKAGES = ("metrics", "optim", "runner", "utils")
# Each public name, and the module (relative to this package) it comes from.
_SOURCES = {
    **dict.fromkeys(
        (
            "AverageMeter",
            "AverageMeters",
            "MetricMeter",
            "MetricMeters",
            "Metrics",
            "MultiTaskAverageMeters",
            "MultiTaskMetricMeters",
            "MultiTaskMetrics",
        ),
        ".metrics",
    ),
    "LRScheduler": ".optim",
    **dict.fromkeys(("BaseRunner", "Config", "Runner", "TorchRunner"), ".runner"),
    **dict.fromkeys(
        ("catch", "ensure_dir", "flexible_decorator", "is_json_serializable", "load", "method_cache", "save"), ".utils"
    ),
    "debug": ".utils.contextmanagers",
}


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562) and keep it, so later look-ups are plain attribute reads."""
    if name in _SUBPACKAGES:
        value = import_module(f".{name}", __name__)
    elif name in _SOURCES:
        value = getattr(import_module(_SOURCES[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
