"""Helpers for multi-task containers: finding each task in a nested container and in the user's nested inputs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from math import isnan, nan
from numbers import Real
from typing import Any, TypeVar

from chanfig import NestedDict

__all__ = ["AVERAGE", "MISSING", "add_tasks", "average_over_tasks", "iter_tasks", "lookup"]

T = TypeVar("T")

MISSING: Any = object()
"""Returned by [`lookup`][danling.metrics.multitask.lookup] for a key the mapping does not hold."""

AVERAGE = "average"
"""The entry that multi-task containers built with `return_average=True` add: the mean over tasks."""


def iter_tasks(tasks: Mapping, kind: type[T], prefix: str = "") -> Iterator[tuple[str, T]]:
    """Every value of type `kind` in a nested mapping, with its dotted key; mappings of another type are descended."""
    for key, value in tasks.items():
        name = f"{prefix}{key}"
        if isinstance(value, kind):
            yield name, value
        elif isinstance(value, Mapping):
            yield from iter_tasks(value, kind, f"{name}.")


def add_tasks(container: NestedDict, tasks: Mapping[str, Any]) -> None:
    """Put each task of `tasks` into `container` at its (dotted) name, keeping the task's own type.

    `NestedDict`'s constructor would turn a task that is itself a mapping into a `NestedDict`, so tasks are set
    one by one without conversion.
    """
    for name, task in tasks.items():
        NestedDict.set(container, name, task, convert_mapping=False)


def lookup(mapping: Mapping, key: str) -> Any:
    """The value of a dotted `key` in a mapping that is flat (`{"a.b": x}`), nested (`{"a": {"b": x}}`) or mixed.

    Returns:
        The value, or [`MISSING`][danling.metrics.multitask.MISSING] when there is none.

    Examples:
        >>> lookup({"a": {"b": 1}}, "a.b"), lookup({"a.b": 2}, "a.b"), lookup({"a": {}}, "a.b") is MISSING
        (1, 2, True)
    """
    if key in mapping:
        return mapping[key]
    head, _, rest = key.partition(".")
    if rest and head in mapping and isinstance(mapping[head], Mapping):
        return lookup(mapping[head], rest)
    return MISSING


def average_over_tasks(values: Mapping[str, Any]) -> dict[str, float]:
    """For each metric name, the mean of its values over the tasks that report it.

    The metric name is the last part of a dotted key and the task the rest (`"cls.a.acc"` is metric `acc` of task
    `cls.a`). A key without a task is left out, and so is a value that is not a number (a per-class list); a `nan`
    (a task with no data yet) does not count, and a metric that every task reports as `nan` averages to `nan`.

    Args:
        values: Metric values by dotted key.

    Returns:
        The mean of each metric name, in the order the names first appear.

    Examples:
        >>> average_over_tasks({"a.acc": 0.5, "a.loss": 1.0, "b.acc": 1.0, "c.acc": float("nan"), "loss": 9.0})
        {'acc': 0.75, 'loss': 1.0}
    """
    reported: dict[str, list[float]] = {}
    for key, value in values.items():
        _, separator, name = key.rpartition(".")
        if not separator or isinstance(value, bool) or not isinstance(value, Real):
            continue
        numbers = reported.setdefault(name, [])
        if not isnan(value):
            numbers.append(float(value))
    return {name: sum(numbers) / len(numbers) if numbers else nan for name, numbers in reported.items()}
