"""Helpers for multi-task containers: finding each task in a nested container and in the user's nested inputs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from chanfig import NestedDict

__all__ = ["MISSING", "add_tasks", "iter_tasks", "lookup"]

T = TypeVar("T")

MISSING: Any = object()
"""Returned by [`lookup`][danling.metrics.multitask.lookup] for a key the mapping does not hold."""


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
