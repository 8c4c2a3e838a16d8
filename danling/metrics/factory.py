"""Ready-made [`Metrics`][danling.metrics.Metrics] for the common tasks.

Each factory returns `Metrics` whose functions are [`functional`][danling.metrics.functional] metrics bound with
`functools.partial` to the task and its settings, so `metrics.metrics["auroc"]` can also be called on its own.
Extra keyword arguments add metrics, replace one by name, or remove one when given `None`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from .functional import Average, accuracy, auprc, auroc, f1_score, mcc, pearson, r2_score, rmse, spearman
from .metrics import Metrics
from .preprocess import preprocess_binary, preprocess_multiclass, preprocess_multilabel, preprocess_regression

__all__ = ["binary_metrics", "multiclass_metrics", "multilabel_metrics", "regression_metrics"]


def binary_metrics(ignore_index: int | None = None, threshold: float = 0.5, **metrics: Callable | None) -> Metrics:
    """`auroc`, `auprc` (average precision), `acc`, `f1` and `mcc` for binary classification.

    Args:
        ignore_index: Target value whose samples are skipped.
        threshold: Probability at or above which a prediction is positive, for `acc`, `f1` and `mcc`.
        **metrics: Metrics to add or replace by name; `None` removes one.

    Examples:
        >>> import torch
        >>> metrics = binary_metrics(ignore_index=-100)
        >>> metrics.update(torch.tensor([0.2, 0.8, 0.6, 0.4]), torch.tensor([0, 1, 0, -100]))
        >>> metrics.update(torch.tensor([0.9, 0.3]), torch.tensor([1, 1]))
        >>> {name: round(value, 4) for name, value in metrics.average().items()}
        {'auroc': 0.8333, 'auprc': 0.9167, 'acc': 0.6, 'f1': 0.6667, 'mcc': 0.1667}
    """
    task = partial(_bind, task="binary", ignore_index=ignore_index)
    defaults: dict[str, Callable] = {
        "auroc": task(auroc),
        "auprc": task(auprc),
        "acc": task(accuracy, threshold=threshold),
        "f1": task(f1_score, threshold=threshold),
        "mcc": task(mcc, threshold=threshold),
    }
    preprocess = partial(preprocess_binary, ignore_index=ignore_index)
    return Metrics(_merge(defaults, metrics), preprocess=preprocess)


def multiclass_metrics(
    num_classes: int, ignore_index: int | None = None, average: Average = "macro", **metrics: Callable | None
) -> Metrics:
    """`auroc`, `auprc`, `acc`, `f1` and `mcc` for multiclass classification with `num_classes` classes.

    `auroc` and `auprc` are one-vs-rest and, like `f1`, averaged by `average`; `acc` is the fraction of correct
    argmax predictions and `mcc` the multiclass MCC of the argmax.

    Args:
        num_classes: Number of classes; the input is `(N, C)` scores, the target `(N,)` class indices.
        ignore_index: Target value whose samples are skipped.
        average: `"macro"`, `"weighted"` or `"micro"` for `auroc`, `auprc` and `f1`.
        **metrics: Metrics to add or replace by name; `None` removes one.

    Examples:
        >>> import torch
        >>> metrics = multiclass_metrics(num_classes=3)
        >>> metrics.update(torch.tensor([[2.0, 0.5, 0.1], [0.2, 1.5, 0.3]]), torch.tensor([0, 2]))
        >>> metrics.update(torch.tensor([[0.1, 0.2, 3.0], [0.4, 2.2, 0.1]]), torch.tensor([2, 1]))
        >>> {name: round(value, 4) for name, value in metrics.average().items()}
        {'auroc': 1.0, 'auprc': 1.0, 'acc': 0.75, 'f1': 0.7778, 'mcc': 0.7}
    """
    task = partial(_bind, task="multiclass", num_classes=num_classes, ignore_index=ignore_index)
    defaults: dict[str, Callable] = {
        "auroc": task(auroc, average=average),
        "auprc": task(auprc, average=average),
        "acc": task(accuracy),
        "f1": task(f1_score, average=average),
        "mcc": task(mcc),
    }
    preprocess = partial(preprocess_multiclass, num_classes=num_classes, ignore_index=ignore_index)
    return Metrics(_merge(defaults, metrics), preprocess=preprocess)


def multilabel_metrics(
    num_labels: int,
    ignore_index: int | None = None,
    threshold: float = 0.5,
    average: Average = "macro",
    **metrics: Callable | None,
) -> Metrics:
    """`auroc`, `auprc`, `acc`, `f1` and `mcc` for multilabel classification with `num_labels` labels.

    `auroc`, `auprc` and `f1` are per label, averaged by `average`; `acc` is exact-match (subset) accuracy and
    `mcc` the MCC of the flattened label matrix.

    Args:
        num_labels: Number of labels; input and target are `(N, L)`.
        ignore_index: Target value of entries to skip.
        threshold: Probability at or above which a label is predicted, for `acc`, `f1` and `mcc`.
        average: `"macro"`, `"weighted"` or `"micro"` for `auroc`, `auprc` and `f1`.
        **metrics: Metrics to add or replace by name; `None` removes one.

    Examples:
        >>> import torch
        >>> metrics = multilabel_metrics(num_labels=2, mcc=None)
        >>> metrics.update(torch.tensor([[0.9, 0.2], [0.3, 0.8], [0.6, 0.7]]), torch.tensor([[1, 0], [0, 1], [0, 0]]))
        >>> {name: round(value, 4) for name, value in metrics.average().items()}
        {'auroc': 1.0, 'auprc': 1.0, 'acc': 0.6667, 'f1': 0.6667}
    """
    task = partial(_bind, task="multilabel", num_labels=num_labels, ignore_index=ignore_index)
    defaults: dict[str, Callable] = {
        "auroc": task(auroc, average=average),
        "auprc": task(auprc, average=average),
        "acc": task(accuracy, threshold=threshold),
        "f1": task(f1_score, average=average, threshold=threshold),
        "mcc": task(mcc, threshold=threshold),
    }
    preprocess = partial(preprocess_multilabel, num_labels=num_labels, ignore_index=ignore_index)
    return Metrics(_merge(defaults, metrics), preprocess=preprocess)


def regression_metrics(num_outputs: int = 1, **metrics: Callable | None) -> Metrics:
    """`pearson`, `spearman`, `r2` and `rmse` for regression with `num_outputs` outputs.

    Correlations and R² are averaged uniformly over outputs; `rmse` is the root of the mean squared error over
    every output.

    Args:
        num_outputs: Number of outputs; input and target are `(N,)` or `(N, num_outputs)`.
        **metrics: Metrics to add or replace by name; `None` removes one.

    Examples:
        >>> import torch
        >>> metrics = regression_metrics()
        >>> metrics.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0]))
        >>> metrics.update(torch.tensor([3.0, 5.0]), torch.tensor([4.0, 4.0]))
        >>> {name: round(value, 4) for name, value in metrics.average().items()}
        {'pearson': 0.8281, 'spearman': 0.9487, 'r2': 0.5, 'rmse': 0.866}
    """
    defaults: dict[str, Callable] = {"pearson": pearson, "spearman": spearman, "r2": r2_score, "rmse": rmse}
    preprocess = partial(preprocess_regression, num_outputs=num_outputs)
    return Metrics(_merge(defaults, metrics), preprocess=preprocess)


def _bind(metric: Callable, **options: Any) -> partial:
    """`metric` with the task's options bound; a helper so each factory states its task's options once."""
    return partial(metric, **options)


def _merge(defaults: Mapping[str, Callable], overrides: Mapping[str, Callable | None]) -> dict[str, Callable]:
    merged: dict[str, Callable | None] = {**defaults, **overrides}
    return {name: metric for name, metric in merged.items() if metric is not None}
