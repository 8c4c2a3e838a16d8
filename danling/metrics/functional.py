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

from collections.abc import Iterable, Iterator, Sequence
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

# Boolean masks are counted with `count_nonzero`: `sum` first copies them to int64, eight bytes per element.

# Ranking metrics sort the positives in runs of `_RUN` and stream everything else in blocks of `_BLOCK`, so their
# working memory is the positives of one class plus a fixed amount: a single sort of n values takes about 20n bytes
# (values, int64 indices and scratch), more than the scores it sorts.
_BLOCK = 1 << 16
_RUN = 1 << 18


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
        tensor(0.7500, dtype=torch.float64)
        >>> accuracy(torch.tensor([[2.0, 0.1], [0.3, 1.5]]), torch.tensor([0, 0]), task="multiclass")
        tensor(0.5000, dtype=torch.float64)
    """
    if task == "binary":
        scores, labels = preprocess_binary(input, target, ignore_index)
        correct = (_threshold(scores, threshold) == labels.bool()).count_nonzero()
        return _ratio(correct, labels.numel())
    if task == "multiclass":
        scores, labels = preprocess_multiclass(input, target, num_classes, ignore_index)
        correct = (scores.argmax(dim=1) == labels).count_nonzero()
        return _ratio(correct, labels.numel())
    if task == "multilabel":
        scores, labels = preprocess_multilabel(input, target, num_labels, ignore_index)
        positive, negative = labels == 1, labels == 0
        prediction = _threshold(scores, threshold)
        right = (prediction & positive) | (~prediction & negative) | ~(positive | negative)
        scored = (positive | negative).any(dim=1)
        return _ratio((right.all(dim=1) & scored).count_nonzero(), scored.count_nonzero())
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
        tensor(0.7500, dtype=torch.float64)
        >>> auroc(torch.tensor([0.1, 0.4]), torch.tensor([1, 1]))
        tensor(nan, dtype=torch.float64)
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
        tensor(0.8333, dtype=torch.float64)
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
        tensor(0.5000, dtype=torch.float64)
    """
    if task == "binary":
        scores, labels = preprocess_binary(input, target, ignore_index)
        true_pos, false_pos, false_neg, _ = _binary_counts(_threshold(scores, threshold), labels.bool())
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
        true_pos = (prediction & positive).count_nonzero(dim=0).double()
        false_pos = (prediction & negative).count_nonzero(dim=0).double()
        support = positive.count_nonzero(dim=0).double()
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
        tensor(0., dtype=torch.float64)
    """
    if task == "binary":
        scores, labels = preprocess_binary(input, target, ignore_index)
        return _binary_mcc(*_binary_counts(_threshold(scores, threshold), labels.bool()))
    if task == "multiclass":
        scores, labels = preprocess_multiclass(input, target, num_classes, ignore_index)
        prediction = scores.argmax(dim=1)
        classes = scores.shape[1]
        support, predicted = _bincount(labels, classes), _bincount(prediction, classes)
        correct = (prediction == labels).count_nonzero().double()
        total = float(labels.numel())
        covariance = correct * total - (support * predicted).sum()
        spread = (total**2 - (predicted * predicted).sum()) * (total**2 - (support * support).sum())
        return covariance / spread.sqrt()
    if task == "multilabel":
        scores, labels = preprocess_multilabel(input, target, num_labels, ignore_index)
        prediction = _threshold(scores, threshold)
        positive, negative = labels == 1, labels == 0
        true_pos = (prediction & positive).count_nonzero().double()
        false_pos = (prediction & negative).count_nonzero().double()
        false_neg = positive.count_nonzero() - true_pos
        true_neg = negative.count_nonzero() - false_pos
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
        positive = labels.bool()
        if metric == "auroc" and 2 * int(positive.count_nonzero()) > positive.numel():
            # AUROC is unchanged by swapping the classes and negating the scores, and sorting the smaller class
            # needs less memory.
            negated = (block.neg_() for block in _blocks(scores, positive))
            return _rank_metric(metric, _select(scores, positive, invert=True).neg_(), negated, scores.numel())
        return _rank_metric(metric, _select(scores, positive), _blocks(scores, positive, invert=True), scores.numel())
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
    rows = max(1, _BLOCK // max(classes, 1))
    # A softmax mixes the classes of a sample, so ranks need true probabilities. They are made one class (or one
    # block of samples) at a time from the log-normaliser, never as a second copy of every score.
    log_norm = None
    if not is_probability(scores):
        log_norm = torch.cat([torch.logsumexp(block, dim=1, keepdim=True) for block in scores.split(rows)])

    def probabilities(block: Tensor, start: int) -> Tensor:
        return block if log_norm is None else (block - log_norm[start : start + block.shape[0]]).exp()

    if average == "micro":
        # scikit-learn's micro average: the one-hot targets and the scores flattened into one binary problem.
        own = scores.gather(1, labels.unsqueeze(1))

        def others() -> Iterator[Tensor]:
            for start in range(0, samples, rows):
                block = probabilities(scores[start : start + rows], start)
                is_own = torch.nn.functional.one_hot(labels[start : start + rows], classes).bool()
                yield block[~is_own]

        return _rank_metric(metric, probabilities(own, 0).squeeze(1), others(), scores.numel())

    support = _bincount(labels, classes)
    bounds = [0, *torch.cumsum(support, 0).long().tolist()]
    order = torch.argsort(labels, stable=True)
    values = []
    for index in range(classes):
        # The class's scores with its positives gathered into one run: positives and negatives are then slices.
        column = probabilities(scores[:, index : index + 1], 0).squeeze(1)[order]
        start, end = bounds[index], bounds[index + 1]
        negatives = [block for part in (column[:start], column[end:]) for block in part.split(_BLOCK)]
        values.append(_rank_metric(metric, column[start:end], negatives, samples))
    return _average(torch.stack(values), support, average)


def _multilabel_ranking(metric: str, scores: Tensor, labels: Tensor, average: Average) -> Tensor:
    positive, negative = labels == 1, labels == 0
    if average == "micro":
        flat, positive_flat, negative_flat = scores.reshape(-1), positive.reshape(-1), negative.reshape(-1)
        return _rank_metric(metric, _select(flat, positive_flat), _blocks(flat, negative_flat), flat.numel())
    values = [
        _rank_metric(
            metric,
            _select(scores[:, index], positive[:, index]),
            _blocks(scores[:, index], negative[:, index]),
            scores.shape[0],
        )
        for index in range(scores.shape[1])
    ]
    return _average(torch.stack(values), positive.count_nonzero(dim=0).double(), average)


def _rank_metric(metric: str, positives: Tensor, negatives: Iterable[Tensor], total: int) -> Tensor:
    """AUROC or average precision of one binary problem, in float64 (`nan` when undefined).

    The positives are sorted in place, in runs of `_RUN`, and the negatives streamed past them in blocks, each
    located in every run by binary search: no step holds more than the positives, one count per positive, and a
    block. `positives` must be a tensor the caller owns (it is reordered); `total` bounds the number of samples,
    which picks the integer width of the counts.
    """
    if positives.numel() == 0:
        return torch.tensor(nan, dtype=torch.float64, device=positives.device)
    runs = positives.split(_RUN)
    for run in runs:
        run.copy_(run.sort().values)
    if metric == "auroc":
        return _auroc(runs, negatives)
    return _average_precision(runs, negatives, torch.int32 if total < 2**31 else torch.int64)


def _auroc(runs: Sequence[Tensor], negatives: Iterable[Tensor]) -> Tensor:
    """AUROC from sorted runs of positive scores, as the Mann-Whitney statistic.

    A negative scores 1 for every positive above it and 1/2 for every positive tied with it; with `left` and
    `right` its insertion points among sorted positives, that is `P - (left + right) / 2`. Ties counting half is
    exactly the trapezoid over distinct thresholds that scikit-learn integrates.
    """
    num_pos = sum(run.numel() for run in runs)
    positions = torch.zeros((), dtype=torch.int64, device=runs[0].device)
    num_neg = 0
    for block in negatives:
        for run in runs:
            left = torch.searchsorted(run, block)
            positions += left.add_(torch.searchsorted(run, block, right=True)).sum()
        num_neg += block.numel()
    if num_neg == 0:
        return torch.tensor(nan, dtype=torch.float64, device=runs[0].device)
    return 1 - positions.double() / (2 * num_pos * num_neg)


def _average_precision(runs: Sequence[Tensor], negatives: Iterable[Tensor], dtype: torch.dtype) -> Tensor:
    """Average precision from sorted runs of positive scores.

    Recall rises by `1 / P` at each positive, where the precision counts every sample scoring at least as much, so
    tied scores enter together as in scikit-learn: the result is the mean of those precisions over the positives.
    """
    num_pos, device = sum(run.numel() for run in runs), runs[0].device
    # For each run, how many negatives reach exactly its first i elements (their insertion point is i).
    reached = [torch.zeros(run.numel() + 1, dtype=dtype, device=device) for run in runs]
    num_neg = 0
    for block in negatives:
        for run, counts in zip(runs, reached):
            position = torch.searchsorted(run, block, right=True)
            counts.index_add_(0, position, torch.ones_like(position, dtype=dtype))
        num_neg += block.numel()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for run, counts in zip(runs, reached):
        # Negatives at or above run[i]: those whose insertion point lies beyond i.
        false_pos = counts.flip(0).cumsum(0, dtype=dtype).flip(0)[1:]
        for start in range(0, run.numel(), _BLOCK):
            scores = run[start : start + _BLOCK]
            true_pos = torch.full_like(scores, num_pos, dtype=torch.int64)
            for other in runs:
                true_pos -= torch.searchsorted(other, scores)  # positives of that run scoring less
            precision = true_pos.double() / (true_pos + false_pos[start : start + _BLOCK])
            total += precision.sum(dtype=torch.float64)
    return total / num_pos


def _select(values: Tensor, mask: Tensor, invert: bool = False) -> Tensor:
    """`values[mask]` (`values[~mask]` if `invert`) for 1-D tensors, built block by block.

    Boolean indexing first lists the int64 position of every selected element, which for a large selection costs
    twice the result; a block at a time it costs a block.
    """
    count = int(mask.count_nonzero())
    selected = values.new_empty(mask.numel() - count if invert else count)
    filled = 0
    for part in _blocks(values, mask, invert):
        selected[filled : filled + part.numel()] = part
        filled += part.numel()
    return selected


def _blocks(values: Tensor, mask: Tensor, invert: bool = False) -> Iterator[Tensor]:
    """`values[mask]` (`values[~mask]` if `invert`) for 1-D tensors, one block at a time."""
    for block, block_mask in zip(values.split(_BLOCK), mask.split(_BLOCK)):
        yield block[~block_mask if invert else block_mask]


# Counting metrics


def _threshold(scores: Tensor, threshold: float) -> Tensor:
    probabilities = scores if is_probability(scores) else scores.sigmoid()
    return probabilities >= threshold


def _binary_counts(prediction: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    true_pos = (prediction & labels).count_nonzero().double()
    false_pos = prediction.count_nonzero() - true_pos
    false_neg = labels.count_nonzero() - true_pos
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
