"""Metrics computed on every batch and averaged over batches, for metrics that decompose over samples.

Unlike [`Metrics`][danling.metrics.Metrics], metric meters store no predictions: each batch's metric becomes one
value of an average weighted by the batch's number of samples. That is exact for metrics that are means over
samples (accuracy, a loss) and cheap in memory, but not for ranking metrics such as AUROC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from .average_meter import BaseMeter, BaseMeters, BaseMultiTaskMeters
from .multitask import MISSING, add_tasks, iter_tasks, lookup
from .preprocess import Preprocess

__all__ = ["MetricMeter", "MetricMeters", "MultiTaskMetricMeters"]


class MetricMeter(BaseMeter):
    """Running average of `metric` over batches, weighted by the number of samples in each batch.

    The metric runs on every update (which may synchronise with the device, as metrics that check their inputs
    do). The number of samples is the length of the target after `preprocess`, so a preprocess that drops ignored
    targets makes the weights exact.

    Args:
        metric: A function `(input, target) -> value`.
        preprocess: A function `(input, target) -> (input, target)` applied before `metric`.

    Examples:
        >>> from functools import partial
        >>> import torch
        >>> from danling.metrics.functional import accuracy
        >>> meter = MetricMeter(partial(accuracy, task="binary"))
        >>> meter.update(torch.tensor([0.9, 0.2, 0.7, 0.1]), torch.tensor([1, 0, 0, 0]))
        >>> meter.update(torch.tensor([0.6, 0.3]), torch.tensor([1, 1]))
        >>> meter.val, meter.avg, meter.count
        (0.5, 0.6666666666666666, 6)
    """

    __slots__ = ("metric", "preprocess")

    def __init__(self, metric: Callable[[Any, Any], float | Tensor], preprocess: Preprocess | None = None) -> None:
        super().__init__()
        self.metric = metric
        self.preprocess = preprocess

    def update(self, input: Any, target: Any) -> None:
        """Compute the metric on one batch and add it to the average.

        Args:
            input: Predictions of the batch.
            target: Targets of the batch.
        """
        if self.preprocess is not None:
            input, target = self.preprocess(input, target)
        self.accumulate(self.metric(input, target), _num_samples(target))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({_name(self.metric)}, val={self.val}, avg={self.avg}, count={self.count})"


class MetricMeters(BaseMeters):
    """Named [`MetricMeter`][danling.metrics.MetricMeter]s fed the same batches.

    Args:
        *args: Mappings from names to metric functions (or `MetricMeter`s).
        preprocess: A function `(input, target) -> (input, target)` applied once per batch before every metric.
        **metrics: Names to metric functions (or `MetricMeter`s).

    Examples:
        >>> from functools import partial
        >>> import torch
        >>> from danling.metrics.functional import accuracy, f1_score
        >>> meters = MetricMeters(acc=partial(accuracy, task="binary"), f1=partial(f1_score, task="binary"))
        >>> meters.update(torch.tensor([0.9, 0.2, 0.7, 0.1]), torch.tensor([1, 0, 0, 0]))
        >>> meters.update(torch.tensor([0.6, 0.3]), torch.tensor([1, 1]))
        >>> f"{meters:.4f}"
        'acc: 0.5000 (0.6667)\\tf1: 0.6667 (0.6667)'
        >>> {name: round(value, 4) for name, value in meters.average().items()}
        {'acc': 0.6667, 'f1': 0.6667}
    """

    def __init__(
        self,
        *args: Mapping[str, Callable | MetricMeter],
        preprocess: Preprocess | None = None,
        **metrics: Callable | MetricMeter,
    ) -> None:
        super().__init__(None)
        self.setattr("preprocess", preprocess)
        for name, metric in dict(*args, **metrics).items():
            self.set(name, metric if isinstance(metric, MetricMeter) else MetricMeter(metric))

    def update(self, input: Any, target: Any) -> None:  # type: ignore[override]
        """Compute every metric on one batch and add it to the averages.

        Args:
            input: Predictions of the batch.
            target: Targets of the batch.
        """
        preprocess = self.getattr("preprocess", None)
        if preprocess is not None:
            input, target = preprocess(input, target)
        for meter in self.values():
            meter.update(input, target)


class MultiTaskMetricMeters(BaseMultiTaskMeters):
    """[`MetricMeters`][danling.metrics.MetricMeters] by task, fed dicts of predictions and targets keyed by task.

    Args:
        *args: Mappings from (dotted) task names to `MetricMeters`.
        return_average: Add an `"average"` entry to the value reads (`val`, `bat`, `avg`, `value()`, `batch()`,
            `average()`): for each metric name, the mean over the tasks that report it.
        **tasks: Task names to `MetricMeters`.

    Examples:
        >>> from functools import partial
        >>> import torch
        >>> from danling.metrics.functional import accuracy, rmse
        >>> meters = MultiTaskMetricMeters(
        ...     spam=MetricMeters(acc=partial(accuracy, task="binary")), price=MetricMeters(rmse=rmse)
        ... )
        >>> meters.update(
        ...     {"spam": torch.tensor([0.9, 0.2]), "price": torch.tensor([1.0, 2.0])},
        ...     {"spam": torch.tensor([1, 1]), "price": torch.tensor([1.0, 2.0])},
        ... )
        >>> meters.average().dict()
        {'spam': {'acc': 0.5}, 'price': {'rmse': 0.0}}
    """

    def __init__(self, *args: Mapping[str, MetricMeters], return_average: bool = False, **tasks: MetricMeters) -> None:
        super().__init__()
        add_tasks(self, dict(*args, **tasks))
        # Set after the tasks, so that the containers chanfig creates for dotted task names do not inherit it.
        self.setattr("return_average", return_average)

    def update(self, input: Mapping[str, Any], target: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Update every task whose name is in both `input` and `target`; other tasks are left as they are.

        Args:
            input: Predictions by task name, flat (`{"a.b": x}`) or nested (`{"a": {"b": x}}`).
            target: Targets by task name, likewise.
        """
        for name, meters in iter_tasks(self, MetricMeters):
            task_input, task_target = lookup(input, name), lookup(target, name)
            if task_input is not MISSING and task_target is not MISSING:
                meters.update(task_input, task_target)


def _num_samples(target: Any) -> int:
    if isinstance(target, Tensor):
        return target.shape[0] if target.dim() else 1
    return len(target)


def _name(function: Callable) -> str:
    inner = getattr(function, "func", function)
    return getattr(inner, "__name__", type(inner).__name__)
