"""DanLing: a PyTorch training runner.

Subclass [`TorchRunner`][danling.TorchRunner] (or [`Runner`][danling.Runner]), assign a model, optimizer,
criterion and datasets in `__init__`, and call `train()`, `evaluate()` or `infer()`.

The names below are imported when first used (`dl.TorchRunner` imports the runner, and torch with it), so that the
`danling` command (`python -m danling`), which only reads run directories, starts without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
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

# Each public name, and the module (relative to this package) it comes from; a subpackage comes from itself.
_SOURCES = {
    **{name: f".{name}" for name in ("metrics", "optim", "runner", "utils")},
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

__getattr__, __dir__ = lazy_exports(__name__, _SOURCES)
