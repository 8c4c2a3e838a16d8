"""DanLing: a PyTorch training runner.

Subclass [`TorchRunner`][danling.TorchRunner] (or [`Runner`][danling.Runner]), assign a model, optimizer,
criterion and datasets in `__init__`, and call `train()`, `evaluate()` or `infer()`.
"""

from . import metrics, optim, runner, utils
from ._version import __version__
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
