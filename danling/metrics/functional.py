"""Metric functions on torch tensors for binary, multiclass and multilabel classification, and regression.

Conventions shared by every function here:

- Scores outside `[0, 1]` are logits (a sigmoid turns them into probabilities for binary and multilabel tasks, a
  softmax over classes for multiclass), scores inside are probabilities. Thresholded metrics use `threshold` on
  the probabilities; multiclass predictions are the argmax.
- Targets equal to `ignore_index` are skipped (a whole sample for binary and multiclass, one entry for multilabel).
- Ties follow scikit-learn and SciPy: AUROC is the trapezoid over distinct thresholds, average precision steps
  over distinct thresholds, and Spearman correlation uses average ranks.
- A metric that is undefined (one class present, a constant input, nothing to score) is `nan`, without warnings.
  Classes, labels or outputs on which a metric is undefined are left out of `"macro"` and `"weighted"` averages,
  which are `nan` only when no class is defined. For F1 this matches scikit-learn's `zero_division=np.nan`.
- `average` picks how per-class (or per-label) values combine: `"macro"` is their mean, `"weighted"` their mean
  weighted by the number of positive targets, `"micro"` pools every decision first (for multiclass AUROC and
  average precision that is the flattened one-hot problem of scikit-learn's `average="micro"`), and `None` returns
  the per-class values. Regression metrics take `"uniform"` (mean over outputs) or `None`.
- The result is a tensor on the input's device: 0-dimensional, or one value per class/output when `average` is
  `None`. Classification metrics are computed from exact counts and returned as float64 whatever the scores'
  dtype; regression metrics are computed and returned in float64 when either input is float64, else float32.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from math import nan
from typing import Literal

import torch
from torch import Tensor

from .preprocess import (
    is_probability,
    preprocess_binary,
    preprocess_multiclass,
    preprocess_multilabel,
    preprocess_regression,
)

__all__ = ["accuracy", "auprc", "auroc", "f1_score", "mcc", "pearson", "r2_score", "rmse", "spearman"]

Task = Literal["binary", "multiclass", "multilabel"]
Average = Literal["micro", "macro", "weighted"] | None
OutputAverage = Literal["uniform"] | None

# Negatives are scored against the sorted positives this many at a time, so the working memory of ranking metrics
# is the positives of one class plus a fixed block, not a copy of every score.
_BLOCK = 1 << 18


def accuracy(
    input: Tensor,
    target: Tensor,
    task: Task = "binary",
    *,
    num_classes: int | None = None,
    num_labels: int | None = None,
    ignore_index: int | None = None,
    threshold: float = 0.5,
) -> Tensor:
    """Fraction of correct predictions.

    Binary: thresholded scores against targets. Multiclass: argmax against the class index. Multilabel: exact match
    (subset accuracy), a sample counting only if every label that is not ignored is right.

    Args:
        input: Scores: `(N,)` binary, `(N, C)` multiclass, `(N, L)` multilabel; probabilities or logits.
        target: Targets: `(N,)` 0/1, `(N,)` class indices, or `(N, L)` 0/1.
        task: `"binary"`, `"multiclass"` or `"multilabel"`.
        num_classes: Number of classes (multiclass), checked against `input`.
        num_labels: Number of labels (multilabel), checked against `input`.
        ignore_index: Target value to skip.
        threshold: Probability at or above which a binary or multilabel prediction is positive.

    Returns:
        The accuracy, `nan` when nothing is scored.

    Examples:
        >>> accuracy(torch.tensor([0.9, 0.2, 0.6, 0.4]), torch.tensor([1, 0, 0, 0]))
        tensor(0.7500)
        >>> accuracy(torch.tensor([[2.0, 0.1], [0.3, 1.5]]), torch.tensor([0, 0]), task="multiclass")
        tensor(0.5000)
    """
    if task == "binary":
        scores, labels = preprocess_binary(input, target, ignore_index)
        correct = (_threshold(scores, threshold) == labels).sum()
        return _ratio(correct, labels.numel())
    if task == "multiclass":
        scores, labels = preprocess_multiclass(input, target, num_classes, ignore_index)
        correct = (scores.argmax(dim=1) == labels).sum()
        return _ratio(correct, labels.numel())
    if task == "multilabel":
        scores, labels = preprocess_multilabel(input, target, num_labels, ignore_index)
        positive, negative = labels == 1, labels == 0
        prediction = _threshold(scores, threshold)
        right = (prediction & positive) | (~prediction & negative) | ~(positive | negative)
        scored = (positive | negative).any(dim=1)
        return _ratio((right.all(dim=1) & scored).sum(), scored.sum())
    raise _task_error(task)


def auroc(
    input: Tensor,
    target: Tensor,
    task: Task = "binary",
    *,
    num_classes: int | None = None,
    num_labels: int | None = None,
    average: Average = "macro",
    ignore_index: int | None = None,
) -> Tensor:
    """Area under the receiver operating characteristic curve.

    Multiclass AUROC is one-vs-rest on the class probabilities; multilabel AUROC is per label. Tied scores are
    handled as scikit-learn does: the curve is a trapezoid over distinct thresholds (a tie counts half).

    Args:
        input: Scores: `(N,)` binary, `(N, C)` multiclass, `(N, L)` multilabel; probabilities or logits.
        target: Targets: `(N,)` 0/1, `(N,)` class indices, or `(N, L)` 0/1.
        task: `"binary"`, `"multiclass"` or `"multilabel"`.
        num_classes: Number of classes (multiclass), checked against `input`.
        num_labels: Number of labels (multilabel), checked against `input`.
        average: `"macro"`, `"weighted"`, `"micro"` or `None` (per class); ignored for binary.
        ignore_index: Target value to skip.

    Returns:
        The AUROC, `nan` when only one class is present.

    Examples:
        >>> auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        tensor(0.7500)
        >>> auroc(torch.tensor([0.1, 0.4]), torch.tensor([1, 1]))
        tensor(nan)
    """
    return _ranking("auroc", input, target, task, num_classes, num_labels, average, ignore_index)


def auprc(
    input: Tensor,
    target: Tensor,
    task: Task = "binary",
    *,
    num_classes: int | None = None,
    num_labels: int | None = None,
    average: Average = "macro",
    ignore_index: int | None = None,
) -> Tensor:
    """Area under the precision-recall curve, as average precision (scikit-learn's `average_precision_score`).

    The precision at each distinct threshold is weighted by the recall gained there, so tied scores enter together.

    Args:
        input: Scores: `(N,)` binary, `(N, C)` multiclass, `(N, L)` multilabel; probabilities or logits.
        target: Targets: `(N,)` 0/1, `(N,)` class indices, or `(N, L)` 0/1.
        task: `"binary"`, `"multiclass"` or `"multilabel"`.
        num_classes: Number of classes (multiclass), checked against `input`.
        num_labels: Number of labels (multilabel), checked against `input`.
        average: `"macro"`, `"weighted"`, `"micro"` or `None` (per class); ignored for binary.
        ignore_index: Target value to skip.

    Returns:
        The average precision, `nan` when there is no positive target.

    Examples:
        >>> auprc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        tensor(0.8333)
    """
    return _ranking("auprc", input, target, task, num_classes, num_labels, average, ignore_index)


def f1_score(
    input: Tensor,
    target: Tensor,
    task: Task = "binary",
    *,
    num_classes: int | None = None,
    num_labels: int | None = None,
    average: Average = "macro",
    ignore_index: int | None = None,
    threshold: float = 0.5,
) -> Tensor:
    """F1 score, the harmonic mean of precision and recall.

    Args:
        input: Scores: `(N,)` binary, `(N, C)` multiclass, `(N, L)` multilabel; probabilities or logits.
        target: Targets: `(N,)` 0/1, `(N,)` class indices, or `(N, L)` 0/1.
        task: `"binary"`, `"multiclass"` or `"multilabel"`.
        num_classes: Number of classes (multiclass), checked against `input`.
        num_labels: Number of labels (multilabel), checked against `input`.
        average: `"macro"`, `"weighted"`, `"micro"` or `None` (per class); ignored for binary.
        ignore_index: Target value to skip.
        threshold: Probability at or above which a binary or multilabel prediction is positive.

    Returns:
        The F1 score; `nan` for a class with neither positive targets nor positive predictions.

    Examples:
        >>> f1_score(torch.tensor([0.9, 0.2, 0.6, 0.4]), torch.tensor([1, 0, 0, 1]))
        tensor(0.5000)
    """
    if task == "binary":
        scores, labels = preprocess_binary(input, target, ignore_index)
        true_pos, false_pos, false_neg, _ = _binary_counts(_threshold(scores, threshold), labels)
        return 2 * true_pos / (2 * true_pos + false_pos + false_neg)
    _check_average(average)
    if task == "multiclass":
        scores, labels = preprocess_multiclass(input, target, num_classes, ignore_index)
        prediction = scores.argmax(dim=1)
        classes = scores.shape[1]
        support = _bincount(labels, classes)
        true_pos = torch.zeros(classes, dtype=torch.float64, device=labels.device)
        true_pos.index_add_(0, labels, (prediction == labels).double())
        predicted = _bincount(prediction, classes)
        false_pos, false_neg = predicted - true_pos, support - true_pos
    elif task == "multilabel":
        scores, labels = preprocess_multilabel(input, target, num_labels, ignore_index)
        prediction = _threshold(scores, threshold)
        positive, negative = labels == 1, labels == 0
        true_pos = (prediction & positive).sum(dim=0).double()
        false_pos = (prediction & negative).sum(dim=0).double()
        support = positive.sum(dim=0).double()
        false_neg = support - true_pos
    else:
        raise _task_error(task)
    if average == "micro":
        true_pos, false_pos, false_neg = true_pos.sum(), false_pos.sum(), false_neg.sum()
    values = 2 * true_pos / (2 * true_pos + false_pos + false_neg)
    return _average(values, support, average)


def mcc(
    input: Tensor,
    target: Tensor,
    task: Task = "binary",
    *,
    num_classes: int | None = None,
    num_labels: int | None = None,
    ignore_index: int | None = None,
    threshold: float = 0.5,
) -> Tensor:
    """Matthews correlation coefficient.

    Binary: on the thresholded scores. Multiclass: the multiclass generalisation on the argmax (as scikit-learn's
    `matthews_corrcoef`). Multilabel: the binary MCC of the flattened label matrix.

    Args:
        input: Scores: `(N,)` binary, `(N, C)` multiclass, `(N, L)` multilabel; probabilities or logits.
        target: Targets: `(N,)` 0/1, `(N,)` class indices, or `(N, L)` 0/1.
        task: `"binary"`, `"multiclass"` or `"multilabel"`.
        num_classes: Number of classes (multiclass), checked against `input`.
        num_labels: Number of labels (multilabel), checked against `input`.
        ignore_index: Target value to skip.
        threshold: Probability at or above which a binary or multilabel prediction is positive.

    Returns:
        The MCC; `nan` when targets or predictions are constant (scikit-learn reports 0 there).

    Examples:
        >>> mcc(torch.tensor([0.9, 0.2, 0.6, 0.4]), torch.tensor([1, 0, 0, 1]))
        tensor(0.)
    """
    if task == "binary":
        scores, labels = preprocess_binary(input, target, ignore_index)
        return _binary_mcc(*_binary_counts(_threshold(scores, threshold), labels))
    if task == "multiclass":
        scores, labels = preprocess_multiclass(input, target, num_classes, ignore_index)
        prediction = scores.argmax(dim=1)
        classes = scores.shape[1]
        support, predicted = _bincount(labels, classes), _bincount(prediction, classes)
        correct = (prediction == labels).sum().double()
        total = float(labels.numel())
        covariance = correct * total - (support * predicted).sum()
        spread = (total**2 - (predicted * predicted).sum()) * (total**2 - (support * support).sum())
        return covariance / spread.sqrt()
    if task == "multilabel":
        scores, labels = preprocess_multilabel(input, target, num_labels, ignore_index)
        prediction = _threshold(scores, threshold)
        positive, negative = labels == 1, labels == 0
        true_pos = (prediction & positive).sum().double()
        false_pos = (prediction & negative).sum().double()
        false_neg = positive.sum() - true_pos
        true_neg = negative.sum() - false_pos
        return _binary_mcc(true_pos, false_pos, false_neg, true_neg)
    raise _task_error(task)


def pearson(input: Tensor, target: Tensor, *, average: OutputAverage = "uniform") -> Tensor:
    """Pearson correlation coefficient between predictions and targets, per output.

    Args:
        input: Predictions `(N,)` or `(N, D)`.
        target: Targets of the same shape.
        average: `"uniform"` for the mean over outputs, `None` for one value per output.

    Returns:
        The correlation; `nan` for an output whose predictions or targets are constant.

    Examples:
        >>> pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0]))
        tensor(0.9934)
    """
    prediction, truth = preprocess_regression(input, target)
    return _average_outputs(_pearson(prediction, truth), average)


def spearman(input: Tensor, target: Tensor, *, average: OutputAverage = "uniform") -> Tensor:
    """Spearman rank correlation coefficient, per output; tied values share their average rank (as SciPy).

    Args:
        input: Predictions `(N,)` or `(N, D)`.
        target: Targets of the same shape.
        average: `"uniform"` for the mean over outputs, `None` for one value per output.

    Returns:
        The rank correlation; `nan` for an output whose predictions or targets are constant.

    Examples:
        >>> spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0]))
        tensor(1.)
    """
    prediction, truth = preprocess_regression(input, target)
    ranks = _pearson(_average_ranks(prediction), _average_ranks(truth))
    return _average_outputs(ranks.to(prediction.dtype), average)


def r2_score(input: Tensor, target: Tensor, *, average: OutputAverage = "uniform") -> Tensor:
    """Coefficient of determination, per output (scikit-learn's `r2_score`, averaged uniformly).

    Args:
        input: Predictions `(N,)` or `(N, D)`.
        target: Targets of the same shape.
        average: `"uniform"` for the mean over outputs, `None` for one value per output.

    Returns:
        The R²; `nan` for an output whose targets are constant.

    Examples:
        >>> r2_score(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0]))
        tensor(0.7857)
    """
    prediction, truth = preprocess_regression(input, target)
    residual = (truth - prediction).square().sum(dim=0)
    total = (truth - truth.mean(dim=0)).square().sum(dim=0)
    values = torch.where(_constant(truth), nan, 1 - residual / total)
    return _average_outputs(values, average)


def rmse(input: Tensor, target: Tensor, *, average: OutputAverage = "uniform") -> Tensor:
    """Root mean squared error.

    Args:
        input: Predictions `(N,)` or `(N, D)`.
        target: Targets of the same shape.
        average: `"uniform"` for the root of the mean squared error over every output, `None` for one value per
            output.

    Returns:
        The RMSE; `nan` when there is no sample.

    Examples:
        >>> rmse(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 5.0]))
        tensor(1.1547)
    """
    _check_output_average(average)
    prediction, truth = preprocess_regression(input, target)
    squared = (prediction - truth).square()
    return squared.mean().sqrt() if average == "uniform" else squared.mean(dim=0).sqrt()


# Ranking metrics


def _ranking(
    metric: str,
    input: Tensor,
    target: Tensor,
    task: str,
    num_classes: int | None,
    num_labels: int | None,
    average: Average,
    ignore_index: int | None,
) -> Tensor:
    if task == "binary":
        # Ranks are all these metrics use, and a sigmoid preserves them: logits are scored as they are.
        scores, labels = preprocess_binary(input, target, ignore_index)
        return _rank_metric(metric, scores[labels], scores[~labels])
    _check_average(average)
    if task == "multiclass":
        scores, labels = preprocess_multiclass(input, target, num_classes, ignore_index)
        return _multiclass_ranking(metric, scores, labels, average)
    if task == "multilabel":
        scores, labels = preprocess_multilabel(input, target, num_labels, ignore_index)
        return _multilabel_ranking(metric, scores, labels, average)
    raise _task_error(task)


def _multiclass_ranking(metric: str, scores: Tensor, labels: Tensor, average: Average) -> Tensor:
    samples, classes = scores.shape
    # A softmax mixes the classes of a sample, so ranks need true probabilities; they are made one class (or one
    # block of samples) at a time from the log-normaliser rather than as a second copy of every score.
    log_norm = None if is_probability(scores) else torch.logsumexp(scores, dim=1, keepdim=True)

    def probabilities(block: Tensor, norm: Tensor | None) -> Tensor:
        return block if norm is None else (block - norm).exp()

    if average == "micro":
        rows = torch.arange(samples, device=scores.device)
        own = probabilities(scores[rows, labels].unsqueeze(1), log_norm).squeeze(1)

        def others() -> Iterator[Tensor]:
            step = max(1, _BLOCK // max(classes, 1))
            for start in range(0, samples, step):
                block = probabilities(scores[start : start + step], _slice(log_norm, start, step))
                is_own = torch.nn.functional.one_hot(labels[start : start + step], classes).bool()
                yield block[~is_own]

        return _rank_metric(metric, own, others())

    support = _bincount(labels, classes)
    bounds = [0, *torch.cumsum(support, 0).long().tolist()]
    order = torch.argsort(labels, stable=True)
    values = []
    for index in range(classes):
        column = probabilities(scores[:, index : index + 1], log_norm).squeeze(1)[order]
        start, end = bounds[index], bounds[index + 1]
        values.append(_rank_metric(metric, column[start:end], [column[:start], column[end:]]))
    return _average(torch.stack(values), support, average)


def _multilabel_ranking(metric: str, scores: Tensor, labels: Tensor, average: Average) -> Tensor:
    positive, negative = labels == 1, labels == 0
    if average == "micro":
        step = max(1, _BLOCK // max(scores.shape[1], 1))
        blocks = (scores[s : s + step][negative[s : s + step]] for s in range(0, scores.shape[0], step))
        return _rank_metric(metric, scores[positive], blocks)
    values = [
        _rank_metric(metric, scores[:, index][positive[:, index]], scores[:, index][negative[:, index]])
        for index in range(scores.shape[1])
    ]
    return _average(torch.stack(values), positive.sum(dim=0).double(), average)


def _rank_metric(metric: str, positives: Tensor, negatives: Tensor | Iterable[Tensor]) -> Tensor:
    """AUROC or average precision of one binary problem, in float64 (`nan` when undefined).

    Only the positives are sorted; each negative is located among their distinct scores by binary search. Counting
    negatives strictly below and tied with every distinct positive score gives both the Mann-Whitney form of AUROC
    (a tie counts half, which is the trapezoid over distinct thresholds) and the precision at every threshold where
    recall rises, which is what average precision sums.
    """
    if isinstance(negatives, Tensor):
        if metric == "auroc" and positives.numel() > negatives.numel():
            # AUROC is unchanged by swapping the classes and negating the scores; sorting the smaller class is cheaper.
            positives, negatives = negatives.neg(), positives.neg()
        negatives = [negatives]
    num_pos, device = positives.numel(), positives.device
    if num_pos == 0:
        return torch.tensor(nan, dtype=torch.float64, device=device)
    thresholds, counts = torch.unique_consecutive(positives.sort().values, return_counts=True)
    size = thresholds.numel() + 1
    below = torch.zeros(size, dtype=torch.int64, device=device)
    tied = torch.zeros(size, dtype=torch.int64, device=device)
    num_neg = 0
    for chunk in negatives:
        for block in chunk.reshape(-1).split(_BLOCK):
            # rank = number of distinct positive scores at or below the negative's score.
            rank = torch.searchsorted(thresholds, block, right=True)
            below += torch.bincount(rank, minlength=size)
            tied.index_add_(0, rank, (thresholds[(rank - 1).clamp_(min=0)] == block).long())
            num_neg += block.numel()
    counts = counts.double()
    less = below.cumsum(0)[:-1].double()
    if metric == "auroc":
        if num_neg == 0:
            return torch.tensor(nan, dtype=torch.float64, device=device)
        return (counts * (less + 0.5 * tied[1:].double())).sum() / (num_pos * num_neg)
    true_pos = num_pos - counts.cumsum(0) + counts
    false_pos = num_neg - less
    return (counts * true_pos / (true_pos + false_pos)).sum() / num_pos


# Counting metrics


def _threshold(scores: Tensor, threshold: float) -> Tensor:
    probabilities = scores if is_probability(scores) else scores.sigmoid()
    return probabilities >= threshold


def _binary_counts(prediction: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    true_pos = (prediction & labels).sum().double()
    false_pos = prediction.sum() - true_pos
    false_neg = labels.sum() - true_pos
    true_neg = labels.numel() - true_pos - false_pos - false_neg
    return true_pos, false_pos, false_neg, true_neg


def _binary_mcc(true_pos: Tensor, false_pos: Tensor, false_neg: Tensor, true_neg: Tensor) -> Tensor:
    covariance = true_pos * true_neg - false_pos * false_neg
    spread = (true_pos + false_pos) * (true_pos + false_neg) * (true_neg + false_pos) * (true_neg + false_neg)
    return covariance / spread.sqrt()


def _bincount(values: Tensor, size: int) -> Tensor:
    return torch.bincount(values, minlength=size).double()


def _ratio(numerator: Tensor, denominator: Tensor | int) -> Tensor:
    return numerator.double() / denominator


# Regression


def _pearson(prediction: Tensor, truth: Tensor) -> Tensor:
    centred_prediction = prediction - prediction.mean(dim=0)
    centred_truth = truth - truth.mean(dim=0)
    covariance = (centred_prediction * centred_truth).sum(dim=0)
    spread = (centred_prediction.square().sum(dim=0) * centred_truth.square().sum(dim=0)).sqrt()
    # A constant column's mean may not round back to its value, so its spread is tested, not trusted to be zero.
    return torch.where(_constant(prediction) | _constant(truth), nan, covariance / spread)


def _average_ranks(values: Tensor) -> Tensor:
    """Average ranks of every column of `values`, as float64, each column shifted by a constant.

    All columns are ranked in one sort. Positions are counted over the flattened sorted columns, so column `j`'s
    ranks are offset by `j * N`; correlations do not see the offset.
    """
    samples, outputs = values.shape
    ordered, order = values.t().sort(dim=1)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.reshape(-1).cumsum(0) - 1
    sizes = torch.bincount(group).double()
    first = sizes.cumsum(0) - sizes
    mean_rank = (first + (sizes + 1) / 2)[group].view(outputs, samples)
    ranks = torch.empty_like(mean_rank).scatter_(1, order, mean_rank)
    return ranks.t()


def _constant(values: Tensor) -> Tensor:
    return (values == values[:1]).all(dim=0)


# Averaging and argument checks


def _average(values: Tensor, support: Tensor, average: Average) -> Tensor:
    """Combine per-class `values`, leaving out the undefined (`nan`) ones; `micro` values arrive already pooled."""
    if average is None or average == "micro":
        return values
    defined = ~values.isnan()
    weights = support.double() * defined if average == "weighted" else defined.double()
    return (torch.where(defined, values, 0) * weights).sum() / weights.sum()


def _average_outputs(values: Tensor, average: OutputAverage) -> Tensor:
    _check_output_average(average)
    if average is None:
        return values
    defined = ~values.isnan()
    return torch.where(defined, values, 0).sum() / defined.sum()


def _check_average(average: Average) -> None:
    if average not in ("micro", "macro", "weighted", None):
        raise ValueError(f"average must be 'micro', 'macro', 'weighted' or None, got {average!r}")


def _check_output_average(average: OutputAverage) -> None:
    if average not in ("uniform", None):
        raise ValueError(f"average must be 'uniform' or None, got {average!r}")


def _task_error(task: str) -> ValueError:
    return ValueError(f"task must be 'binary', 'multiclass' or 'multilabel', got {task!r}")


def _slice(tensor: Tensor | None, start: int, length: int) -> Tensor | None:
    return None if tensor is None else tensor[start : start + length]
