"""What a run measures: meters for running averages and metrics over predictions, per step, epoch and process.

- [`AverageMeter`][danling.metrics.AverageMeter], [`AverageMeters`][danling.metrics.AverageMeters] and
  [`MultiTaskAverageMeters`][danling.metrics.MultiTaskAverageMeters] average values such as the loss.
- [`Metrics`][danling.metrics.Metrics] and [`MultiTaskMetrics`][danling.metrics.MultiTaskMetrics] store predictions
  and compute metrics such as AUROC over all of them; the factories build the usual sets, e.g.
  `multiclass_metrics(num_classes=10)`.
- [`MetricMeter`][danling.metrics.MetricMeter], [`MetricMeters`][danling.metrics.MetricMeters] and
  [`MultiTaskMetricMeters`][danling.metrics.MultiTaskMetricMeters] average per-batch metrics without storing
  predictions.
- [`functional`][danling.metrics.functional] holds the metric functions, written on torch.

Examples:
    >>> import torch
    >>> import danling.metrics as dm
    >>> metrics = dm.multiclass_metrics(num_classes=3)
    >>> metrics.update(torch.tensor([[2.0, 0.1, 0.3], [0.2, 0.4, 1.9]]), torch.tensor([0, 2]))
    >>> metrics.average()["acc"]
    1.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from . import functional
    from .average_meter import AverageMeter, AverageMeters, MultiTaskAverageMeters
    from .factory import binary_metrics, multiclass_metrics, multilabel_metrics, regression_metrics
    from .functional import accuracy, auprc, auroc, f1_score, mcc, pearson, r2_score, rmse, spearman
    from .metric_meter import MetricMeter, MetricMeters, MultiTaskMetricMeters
    from .metrics import Metrics, MultiTaskMetrics

__all__ = [
    "AverageMeter",
    "AverageMeters",
    "MetricMeter",
    "MetricMeters",
    "Metrics",
    "MultiTaskAverageMeters",
    "MultiTaskMetricMeters",
    "MultiTaskMetrics",
    "accuracy",
    "auprc",
    "auroc",
    "binary_metrics",
    "f1_score",
    "functional",
    "mcc",
    "multiclass_metrics",
    "multilabel_metrics",
    "pearson",
    "r2_score",
    "regression_metrics",
    "rmse",
    "spearman",
]

# Each public name, and the module it comes from: loaded when first used, so a run that only averages its loss
# never loads the metric functions (the runner's own meters come from `average_meter`).
_SOURCES = {
    **dict.fromkeys(("AverageMeter", "AverageMeters", "MultiTaskAverageMeters"), ".average_meter"),
    **dict.fromkeys(("binary_metrics", "multiclass_metrics", "multilabel_metrics", "regression_metrics"), ".factory"),
    **dict.fromkeys(
        ("accuracy", "auprc", "auroc", "f1_score", "mcc", "pearson", "r2_score", "rmse", "spearman"), ".functional"
    ),
    **dict.fromkeys(("MetricMeter", "MetricMeters", "MultiTaskMetricMeters"), ".metric_meter"),
    **dict.fromkeys(("Metrics", "MultiTaskMetrics"), ".metrics"),
    "functional": ".functional",
}


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES)
