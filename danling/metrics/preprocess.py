"""Input handling shared by the functional metrics: shapes, targets to ignore, and logits versus probabilities.

Every `preprocess_*` function takes `(input, target)` as a model and a data loader produce them and returns them in
the canonical form the metrics compute on. The canonical form is a fixed point: preprocessing it again changes
nothing, so a [`Metrics`][danling.metrics.Metrics] may preprocess once and its metric functions may preprocess again
cheaply. Scores are not squashed here: ranking metrics need no probabilities for binary and multilabel tasks, and
the others convert only what they use (see [`is_probability`][danling.metrics.preprocess.is_probability]).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Preprocess",
    "as_float",
    "identity",
    "is_probability",
    "preprocess_binary",
    "preprocess_multiclass",
    "preprocess_multilabel",
    "preprocess_regression",
]

Preprocess = Callable[[Any, Any], tuple[Any, Any]]
"""A function `(input, target) -> (input, target)` run before metrics, such as the `preprocess_*` functions here."""


def identity(input: Any, target: Any) -> tuple[Any, Any]:
    """`(input, target)` unchanged: the preprocess of a [`Metrics`][danling.metrics.Metrics] built without one.

    Examples:
        >>> identity(torch.tensor([2.0, -1.0]), torch.tensor([1, 0]))
        (tensor([ 2., -1.]), tensor([1, 0]))
    """
    return input, target


def is_probability(input: Tensor) -> bool:
    """Whether every value of `input` lies in `[0, 1]`.

    Inputs that do are taken as probabilities; any value outside makes the whole input logits, which the metrics
    turn into probabilities with a sigmoid (binary, multilabel) or a softmax over classes (multiclass).

    Examples:
        >>> is_probability(torch.tensor([0.0, 0.3, 1.0]))
        True
        >>> is_probability(torch.tensor([-2.0, 0.3]))
        False
    """
    if input.numel() == 0:
        return True
    low, high = torch.aminmax(input)
    return bool((low >= 0) & (high <= 1))


def as_float(tensor: Tensor) -> Tensor:
    """`tensor` as float32 or float64: half precision and integer inputs become float32, others are unchanged."""
    if tensor.dtype in (torch.float32, torch.float64):
        return tensor
    return tensor.to(torch.float32)


def preprocess_binary(input: Any, target: Any, ignore_index: int | None = None) -> tuple[Tensor, Tensor]:
    """Flatten binary scores and targets, and drop the targets equal to `ignore_index`.

    Args:
        input: Scores of any shape, probabilities or logits.
        target: 0/1 (or boolean) targets with as many elements as `input`.
        ignore_index: Target value whose elements are left out.

    Returns:
        Scores `(M,)` as float and targets `(M,)` as int64 0/1. A copy is made only when something is ignored.

    Raises:
        ValueError: If the sizes differ or a target is not 0, 1 or `ignore_index`.

    Examples:
        >>> preprocess_binary(torch.tensor([[0.2], [0.9], [0.4]]), torch.tensor([0, 1, -100]), ignore_index=-100)
        (tensor([0.2000, 0.9000]), tensor([0, 1]))
    """
    input, target = _as_tensors(input, target)
    if input.numel() != target.numel():
        raise ValueError(f"binary input and target must have as many elements, got {input.shape} and {target.shape}")
    input, target = as_float(input).reshape(-1), target.reshape(-1)
    if ignore_index is not None and target.dtype != torch.bool:
        keep = target != ignore_index
        if not bool(keep.all()):
            input, target = input[keep], target[keep]
    if target.dtype != torch.bool and target.numel() and not bool(((target == 0) | (target == 1)).all()):
        raise ValueError("binary target must hold only 0, 1 and ignore_index")
    return input, target.long()


def preprocess_multiclass(
    input: Any, target: Any, num_classes: int | None = None, ignore_index: int | None = None
) -> tuple[Tensor, Tensor]:
    """Bring multiclass scores to `(M, C)` and class indices to `(M,)`, dropping targets equal to `ignore_index`.

    Args:
        input: Scores `(N, C)` or `(N, C, ...)`, probabilities or logits.
        target: Class indices `(N,)` or `(N, ...)`.
        num_classes: Number of classes `C`; checked against `input` when given.
        ignore_index: Target value whose samples are left out.

    Returns:
        Scores `(M, C)` as float and targets `(M,)` as int64.

    Raises:
        ValueError: If the shapes do not agree or a target is not a class index.

    Examples:
        >>> scores, target = preprocess_multiclass(torch.rand(4, 3), torch.tensor([0, 2, -1, 1]), 3, ignore_index=-1)
        >>> scores.shape, target
        (torch.Size([3, 3]), tensor([0, 2, 1]))
    """
    input, target = _as_tensors(input, target)
    if input.dim() < 2:
        raise ValueError(f"multiclass input must have shape (N, C, ...), got {tuple(input.shape)}")
    classes = input.shape[1]
    if num_classes is not None and classes != num_classes:
        raise ValueError(f"multiclass input has {classes} classes, expected num_classes={num_classes}")
    if input.dim() > 2:
        input = input.movedim(1, -1).reshape(-1, classes)
    target = target.reshape(-1)
    if target.numel() != input.shape[0]:
        raise ValueError(f"multiclass target must hold one class index per sample, got {target.numel()} targets")
    if target.is_floating_point():
        raise ValueError("multiclass target must hold class indices, got floating point values")
    input, target = as_float(input), target.long()
    if ignore_index is not None:
        keep = target != ignore_index
        if not bool(keep.all()):
            input, target = input[keep], target[keep]
    if target.numel():
        low, high = torch.aminmax(target)
        if bool((low < 0) | (high >= classes)):
            raise ValueError(f"multiclass target must lie in [0, {classes}) or equal ignore_index")
    return input, target


def preprocess_multilabel(
    input: Any, target: Any, num_labels: int | None = None, ignore_index: int | None = None
) -> tuple[Tensor, Tensor]:
    """Bring multilabel scores and 0/1 targets to `(M, L)`.

    Entries whose target equals `ignore_index` stay in place (a label matrix cannot drop single entries); the
    metrics skip them.

    Args:
        input: Scores `(N, L)` or `(N, L, ...)`, probabilities or logits.
        target: 0/1 targets of the same shape.
        num_labels: Number of labels `L`; checked against `input` when given.
        ignore_index: Target value of entries to skip.

    Returns:
        Scores `(M, L)` as float and targets `(M, L)` as int64 (0, 1 or `ignore_index`).

    Raises:
        ValueError: If the shapes do not agree or a target is not 0, 1 or `ignore_index`.

    Examples:
        >>> scores, target = preprocess_multilabel(torch.rand(2, 3), torch.tensor([[0, 1, 1], [1, -1, 0]]), 3, -1)
        >>> scores.shape, target.shape
        (torch.Size([2, 3]), torch.Size([2, 3]))
    """
    input, target = _as_tensors(input, target)
    if input.dim() < 2 or input.shape != target.shape:
        raise ValueError(
            f"multilabel input and target must share a shape (N, L, ...), got {input.shape} and {target.shape}"
        )
    labels = input.shape[1]
    if num_labels is not None and labels != num_labels:
        raise ValueError(f"multilabel input has {labels} labels, expected num_labels={num_labels}")
    if input.dim() > 2:
        input, target = input.movedim(1, -1).reshape(-1, labels), target.movedim(1, -1).reshape(-1, labels)
    target = target.long()
    if target.numel():
        valid = (target == 0) | (target == 1)
        if ignore_index is not None:
            valid |= target == ignore_index
        if not bool(valid.all()):
            raise ValueError("multilabel target must hold only 0, 1 and ignore_index")
    return as_float(input), target


def preprocess_regression(input: Any, target: Any, num_outputs: int | None = None) -> tuple[Tensor, Tensor]:
    """Bring regression predictions and targets to `(N, D)` floats of a common dtype.

    Args:
        input: Predictions `(N,)` or `(N, D)`.
        target: Targets of the same shape.
        num_outputs: Number of outputs `D`; checked when given.

    Returns:
        Predictions and targets `(N, D)`, both float64 if either is, else float32.

    Raises:
        ValueError: If the shapes differ or do not have `num_outputs` outputs.

    Examples:
        >>> input, target = preprocess_regression(torch.tensor([1.0, 2.0]), torch.tensor([1, 3]), num_outputs=1)
        >>> input.shape, target.dtype
        (torch.Size([2, 1]), torch.float32)
    """
    input, target = _as_tensors(input, target)
    if input.dim() == 1:
        input = input.unsqueeze(1)
    if target.dim() == 1:
        target = target.unsqueeze(1)
    if input.dim() != 2 or input.shape != target.shape:
        raise ValueError(
            f"regression input and target must share a shape (N,) or (N, D), got {input.shape} and {target.shape}"
        )
    if num_outputs is not None and input.shape[1] != num_outputs:
        raise ValueError(f"regression input has {input.shape[1]} outputs, expected num_outputs={num_outputs}")
    dtype = torch.float64 if torch.float64 in (input.dtype, target.dtype) else torch.float32
    return input.to(dtype), target.to(dtype)


def _as_tensors(input: Any, target: Any) -> tuple[Tensor, Tensor]:
    input = torch.as_tensor(input)
    target = torch.as_tensor(target, device=input.device)
    return input, target
