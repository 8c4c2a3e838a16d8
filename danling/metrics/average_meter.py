"""Running averages of values such as the loss or the time per step, per process and across processes.

A meter keeps the last value, a sample-weighted running sum and the sample count. Updating is cheap and never
waits for an accelerator: a tensor is kept as a detached tensor and converted to a Python float only when a value
is read. The reads `val`, `avg`, `sum` and `value()` are local to this process; `batch()` and `average()` combine
every process through [`danling.utils.distributed`][danling.utils.distributed] and are collective (call them on
every process, in the same order); `bat` is `batch()`.

A multi-task collection built with `return_average=True` adds an `"average"` entry to its value reads: for each metric
name, the mean over the tasks that report it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from math import nan
from numbers import Real
from typing import Any

import torch
from chanfig import DefaultDict, FlatDict, NestedDict
from torch import Tensor

from ..utils.distributed import all_gather_object, all_reduce_sum, is_distributed
from .multitask import AVERAGE, average_over_tasks

__all__ = [
    "AverageMeter",
    "AverageMeters",
    "BaseMeter",
    "BaseMeters",
    "BaseMultiTaskMeters",
    "MultiTaskAverageMeters",
    "synchronise_meters",
]


class BaseMeter:
    """State and reads shared by every meter: the last value, the running sum and the sample count.

    Subclasses decide how values arrive and feed them to `accumulate`.

    Attributes:
        count: Number of samples seen since the last reset.
    """

    __slots__ = ("_sum", "_val", "count")

    def __init__(self) -> None:
        self._val: float | Tensor | None = None
        self._sum: float | Tensor = 0.0
        self.count: int = 0

    def reset(self) -> None:
        """Forget every value seen."""
        self._val = None
        self._sum = 0.0
        self.count = 0

    def accumulate(self, value: float | Tensor, n: int = 1) -> None:
        """Record `value`, the mean of `n` samples, without synchronising with the device.

        Args:
            value: A number or a one-element tensor.
            n: Number of samples `value` is the mean of.

        Raises:
            TypeError: If `value` is neither a number nor a tensor, or `n` is not a number.
            ValueError: If `value` is a tensor with more than one element, or `n` is negative.
        """
        _check_update(value, n)
        self._add(value, n)

    def _add(self, value: float | Tensor, n: int) -> None:
        # `accumulate` without the checks, for callers that made them already (`AverageMeters.update`).
        if isinstance(value, Tensor):
            value = value.detach()
            total = self._sum
            if isinstance(total, Tensor):
                total.add_(value, alpha=n)
            else:
                # float64 so long runs of float32 or half precision values do not lose the sum; the copy keeps the
                # in-place updates from ever writing into the caller's tensor.
                self._sum = value.to(torch.float64, copy=True).mul_(n).add_(total)
        else:
            self._sum += value * n
        self._val = value
        self.count += n

    @property
    def val(self) -> float:
        """The last value, `nan` before the first update."""
        return nan if self._val is None else float(self._val)

    @property
    def sum(self) -> float:
        """Sum of the values weighted by their sample counts."""
        return float(self._sum)

    @property
    def avg(self) -> float:
        """Sample-weighted mean of the values, `nan` before the first sample."""
        return self.sum / self.count if self.count else nan

    def value(self) -> float:
        """The last value on this process (same as `val`)."""
        return self.val

    def batch(self) -> float:
        """The last value, averaged over every process; collective."""
        return synchronise_meters([self])[0][0]

    @property
    def bat(self) -> float:
        """The last value, averaged over every process (same as `batch()`); collective."""
        return self.batch()

    def average(self) -> float:
        """Sample-weighted mean over every process: the sum of sums over the sum of counts; collective."""
        return synchronise_meters([self])[1][0]

    def state_dict(self) -> dict[str, Any]:
        """This process's state, as Python numbers (reads tensors, so it may synchronise with the device)."""
        return {"val": None if self._val is None else self.val, "sum": self.sum, "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from `state_dict`."""
        self._val, self._sum, self.count = state["val"], state["sum"], state["count"]

    def __format__(self, format_spec: str) -> str:
        return f"{self.val:{format_spec}} ({self.avg:{format_spec}})"

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(val={self.val}, avg={self.avg}, count={self.count})"


class AverageMeter(BaseMeter):
    """Running average of a value, such as the loss, weighted by the number of samples behind each value.

    Examples:
        >>> meter = AverageMeter()
        >>> meter.update(0.8, n=2)
        >>> meter.update(torch.tensor(0.5), n=6)
        >>> meter.val, meter.avg, meter.count
        (0.5, 0.575, 8)
        >>> f"{meter:.4f}"
        '0.5000 (0.5750)'
        >>> meter.value(), meter.bat, meter.average()
        (0.5, 0.5, 0.575)
        >>> meter.update("0.3")
        Traceback (most recent call last):
        TypeError: a meter takes a number or a one-element tensor, got str '0.3'
        >>> meter.reset()
        >>> meter.avg
        nan
    """

    __slots__ = ()

    def update(self, value: float | Tensor, n: int = 1) -> None:
        """Record `value`, the mean of `n` samples; a tensor stays on its device until a value is read.

        Args:
            value: A number or a one-element tensor.
            n: Number of samples `value` is the mean of.

        Raises:
            TypeError: If `value` is neither a number nor a tensor, or `n` is not a number.
            ValueError: If `value` is a tensor with more than one element, or `n` is negative.
        """
        self.accumulate(value, n)


def _check_update(value: Any, n: Any) -> None:
    """Raise if `value` and `n` are not a meter's input: a number or a one-element tensor, and a count `>= 0`.

    Reads nothing from a tensor but its shape, so it never waits for the device.

    Raises:
        TypeError: If `value` is neither a number nor a tensor, or `n` is not a number.
        ValueError: If `value` is a tensor with more than one element, or `n` is negative.
    """
    # Exact type tests first: this runs on every training step, and an ABC check (`Real`) costs more.
    if type(n) is int and n >= 0 and (type(value) is float or (type(value) is Tensor and value.numel() == 1)):
        return
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"a meter takes one value per update, got a tensor of shape {tuple(value.shape)}")
    elif not isinstance(value, Real):
        raise TypeError(f"a meter takes a number or a one-element tensor, got {type(value).__name__} {value!r}")
    if not isinstance(n, Real):
        raise TypeError(f"n must be a number of samples, got {type(n).__name__} {n!r}")
    if n < 0:
        raise ValueError(f"n must be a number of samples >= 0, got {n!r}")


def _entries(mapping: Iterable[tuple[str, Any]]) -> list[tuple[str, Any, Any]]:
    """`(name, value, n)` for each entry of an `update`, all checked before any meter changes.

    An entry is a value (one sample) or a pair `(value, n)`; errors name the entry's key.
    """
    entries = []
    for name, entry in mapping:
        if isinstance(entry, tuple):
            if len(entry) != 2:
                raise TypeError(f"meter {name!r} takes a value or a pair (value, n), got a tuple of {len(entry)}")
            value, n = entry
        else:
            value, n = entry, 1
        try:
            _check_update(value, n)
        except (TypeError, ValueError) as error:
            # Re-raised with the key, which the meter does not know.
            raise type(error)(f"meter {name!r}: {error}") from None
        entries.append((name, value, n))
    return entries


def synchronise_meters(meters: Sequence[BaseMeter | None]) -> tuple[list[float], list[float]]:
    """The last value (mean over processes) and the sample-weighted average over processes of each meter.

    On a single process these are each meter's `val` and `avg`. Across processes the call is collective; `None`
    stands for a meter that this process does not hold and contributes nothing.

    Args:
        meters: Meters in the same order on every process.

    Returns:
        A list of last values and a list of averages, in the order of `meters`.
    """
    if not is_distributed():
        return [nan if m is None else m.val for m in meters], [nan if m is None else m.avg for m in meters]
    rows = [[0.0, 0.0, 0.0, 0.0] if m is None else _stats(m) for m in meters]
    totals = all_reduce_sum(torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)).tolist()
    batch = [value / seen if seen else nan for value, seen, _, _ in totals]
    average = [total / count if count else nan for _, _, total, count in totals]
    return batch, average


def _stats(meter: BaseMeter) -> list[float]:
    has_value = meter._val is not None
    return [meter.val if has_value else 0.0, float(has_value), meter.sum, float(meter.count)]


def _union(keys: list[str]) -> list[str]:
    """Every process's keys, in one order shared by all processes (rank by rank, first appearance)."""
    if not is_distributed():
        return keys
    merged: dict[str, None] = {}
    for other in all_gather_object(keys):
        merged.update(dict.fromkeys(other))
    return list(merged)


def _iter_meters(mapping: Mapping, prefix: str = "") -> Iterator[tuple[str, BaseMeter]]:
    """Every meter in a (possibly nested) mapping, with its dotted key."""
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, BaseMeter):
            yield name, value
        elif isinstance(value, Mapping):
            yield from _iter_meters(value, f"{name}.")


class _MeterReads:
    """Reads shared by flat and nested collections of meters; `_result` builds the mapping they return.

    The value reads (`val`, `bat`, `avg`, `value()`, `batch()`, `average()`) go through `_read`, where a multi-task
    collection adds its mean over tasks.
    """

    def _meters(self) -> list[tuple[str, BaseMeter]]:
        return list(_iter_meters(self))  # type: ignore[arg-type]

    def _result(self, items: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def _read(self, items: Mapping[str, float]) -> Any:
        return self._result(items)

    @property
    def sum(self) -> Any:
        """Each meter's `sum`."""
        return self._result({key: meter.sum for key, meter in self._meters()})

    @property
    def count(self) -> Any:
        """Each meter's `count`."""
        return self._result({key: meter.count for key, meter in self._meters()})

    @property
    def val(self) -> Any:
        """Each meter's last value."""
        return self._read({key: meter.val for key, meter in self._meters()})

    @property
    def bat(self) -> Any:
        """Each meter's last value, averaged over every process (same as `batch()`); collective."""
        return self.batch()

    @property
    def avg(self) -> Any:
        """Each meter's local average."""
        return self._read({key: meter.avg for key, meter in self._meters()})

    def value(self) -> Any:
        """Each meter's last value on this process."""
        return self.val

    def batch(self) -> Any:
        """Each meter's last value, averaged over every process; collective."""
        return self._read(self._synchronise(0))

    def average(self) -> Any:
        """Each meter's sample-weighted mean over every process; collective."""
        return self._read(self._synchronise(1))

    def _synchronise(self, which: int) -> dict[str, float]:
        local = dict(self._meters())
        keys = _union(list(local))
        # A process that never saw a meter still joins the reduction, so every process reduces the same keys.
        values = synchronise_meters([local.get(key) for key in keys])[which]
        return dict(zip(keys, values))

    def reset(self) -> None:
        """Reset every meter, keeping them."""
        for _, meter in self._meters():
            meter.reset()

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Each meter's state on this process, by dotted key."""
        return {key: meter.state_dict() for key, meter in self._meters()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        """Restore the meters from `state_dict`, creating those this collection creates on use."""
        for key, meter_state in state.items():
            self._meter(key).load_state_dict(meter_state)

    def _meter(self, key: str) -> BaseMeter:
        meter = dict(self._meters()).get(key)
        if meter is None:
            raise KeyError(f"no meter {key!r}")
        return meter

    def __format__(self, format_spec: str) -> str:
        return "\t".join(f"{key}: {meter:{format_spec}}" for key, meter in self._meters())


class BaseMeters(_MeterReads, DefaultDict):
    """A flat dict of meters whose reads (`val`, `avg`, `value()`, `average()`, ...) return `FlatDict`s.

    Every member must be a `meter_type` (a class attribute, `BaseMeter` here): anything else is rejected when set.
    """

    # Not annotated: chanfig would copy an annotated class attribute into the dict as an entry.
    meter_type = BaseMeter

    def set(self, name: Any, value: Any) -> None:
        """Set the meter `name` to `value`.

        Raises:
            TypeError: If `value` is not a `meter_type`.
        """
        meter_type = type(self).meter_type
        if not isinstance(value, meter_type):
            raise TypeError(
                f"{type(self).__name__} holds {meter_type.__name__}s, got {type(value).__name__} {value!r} "
                f"for {name!r}; use update() to record a value"
            )
        super().set(name, value)

    def _result(self, items: Mapping[str, Any]) -> FlatDict:
        return FlatDict(items)


class AverageMeters(BaseMeters):
    """A dict of [`AverageMeter`][danling.metrics.AverageMeter]s, each created on first use.

    Args:
        *args: Mappings from names to `AverageMeter`s.
        **kwargs: Names to `AverageMeter`s.

    Raises:
        TypeError: If a member is not an `AverageMeter`.

    Examples:
        >>> meters = AverageMeters()
        >>> meters.update(loss=0.5, acc=(0.9, 4))
        >>> meters.update({"loss": torch.tensor(0.25)})
        >>> meters.avg.dict()
        {'loss': 0.375, 'acc': 0.9}
        >>> f"{meters:.4f}"
        'loss: 0.2500 (0.3750)\\tacc: 0.9000 (0.9000)'
        >>> meters.average().dict(), meters.count.dict()
        ({'loss': 0.375, 'acc': 0.9}, {'loss': 2, 'acc': 4})
        >>> meters.update(loss="high")
        Traceback (most recent call last):
        TypeError: meter 'loss': a meter takes a number or a one-element tensor, got str 'high'
        >>> AverageMeters(loss=0.5)
        Traceback (most recent call last):
        TypeError: AverageMeters holds AverageMeters, got float 0.5 for 'loss'; use update() to record a value
    """

    meter_type = AverageMeter

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(AverageMeter, *args, **kwargs)

    def _meter(self, key: str) -> BaseMeter:
        return self[key]

    def update(self, *args: Mapping[str, Any], **values: Any) -> None:  # type: ignore[override]
        """Update the meters named by the keys, creating those that do not exist.

        Every value is checked first: when one is rejected, no meter has changed.

        Args:
            *args: Mappings from names to values.
            **values: Names to values. A value is a number or a one-element tensor (one sample), or a pair
                `(value, n)` where `value` is the mean of `n` samples.

        Raises:
            TypeError: If a value is not a number, a one-element tensor or such a pair; the message names its key.
            ValueError: If a tensor has more than one element or `n` is negative; the message names its key.
        """
        for mapping in (*args, values):
            for name, value, n in _entries(mapping.items()):
                meter = dict.get(self, name)
                if meter is None:
                    meter = self[name]
                meter._add(value, n)  # checked by `_entries` above


class BaseMultiTaskMeters(_MeterReads, NestedDict):
    """A nested dict of meters, keyed by task, whose reads return `NestedDict`s.

    Keys are dotted paths: `meters["task1.loss"]` is `meters["task1"]["loss"]`.

    Args:
        *args: Passed to `NestedDict`.
        return_average: Add an `"average"` entry to the value reads (`val`, `bat`, `avg`, `value()`, `batch()`,
            `average()`): for each metric name (the last part of a dotted key), the mean over the tasks that report
            it; a meter outside any task, and a `nan` value, are left out of the mean.
        **kwargs: Passed to `NestedDict`.
    """

    def __init__(self, *args: Any, return_average: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # An attribute, not an entry; chanfig gives it to the sub-collections it creates too, where it adds a mean
        # over their own tasks, if they have any.
        self.setattr("return_average", return_average)

    def _result(self, items: Mapping[str, Any]) -> NestedDict:
        return NestedDict(items)

    def _read(self, items: Mapping[str, float]) -> NestedDict:
        if not self.getattr("return_average", False):
            return self._result(items)
        average = average_over_tasks(items)
        if not average:
            return self._result(items)
        if any(key == AVERAGE or key.startswith(f"{AVERAGE}.") for key in items):
            raise ValueError(
                f"a task is named {AVERAGE!r}, the name return_average=True gives the mean over tasks; rename the "
                "task or build the collection with return_average=False"
            )
        return self._result({**items, **{f"{AVERAGE}.{name}": value for name, value in average.items()}})


class MultiTaskAverageMeters(BaseMultiTaskMeters):
    """[`AverageMeter`][danling.metrics.AverageMeter]s nested by task, each created on first use.

    Args:
        *args: Mappings from (dotted) names, or task names to nested mappings, to `AverageMeter`s.
        return_average: Add an `"average"` entry to the value reads: for each metric name, the mean over the tasks
            that report it.
        **kwargs: Names to `AverageMeter`s.

    Raises:
        TypeError: If a member is neither an `AverageMeter` nor a mapping of them.

    Examples:
        >>> meters = MultiTaskAverageMeters()
        >>> meters.update({"task1.loss": 0.25, "task2": {"loss": 0.75}})
        >>> meters.update({"task1": {"loss": (0.5, 3)}})
        >>> meters.average().dict()
        {'task1': {'loss': 0.4375}, 'task2': {'loss': 0.75}}
        >>> f"{meters:.2f}"
        'task1.loss: 0.50 (0.44)\\ttask2.loss: 0.75 (0.75)'
        >>> meters["task1"].avg.dict()
        {'loss': 0.4375}

        With `return_average=True`, the reads add the mean over tasks:

        >>> meters = MultiTaskAverageMeters(return_average=True)
        >>> meters.update({"task1": {"loss": 0.25, "acc": 0.5}, "task2": {"loss": 0.75}})
        >>> meters.value().dict()
        {'task1': {'loss': 0.25, 'acc': 0.5}, 'task2': {'loss': 0.75}, 'average': {'loss': 0.5, 'acc': 0.5}}
    """

    def __init__(self, *args: Any, return_average: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, return_average=return_average, **kwargs)
        for name, member in _flatten(self):
            if not isinstance(member, AverageMeter):
                raise TypeError(
                    f"{type(self).__name__} holds AverageMeters, got {type(member).__name__} {member!r} for {name!r}; "
                    "use update() to record a value"
                )

    def update(self, *args: Mapping[str, Any], **values: Any) -> None:  # type: ignore[override]
        """Update the meters named by dotted keys or nested mappings, creating those that do not exist.

        Every value is checked first: when one is rejected, no meter has changed.

        Args:
            *args: Mappings from (dotted) names, or task names to nested mappings, to values.
            **values: Names to values. A value is a number or a one-element tensor (one sample), or a pair
                `(value, n)` where `value` is the mean of `n` samples.

        Raises:
            TypeError: If a key names a task rather than a meter, or a value is not a number, a one-element tensor
                or such a pair; the message names the key.
            ValueError: If a tensor has more than one element or `n` is negative; the message names its key.
        """
        for mapping in (*args, values):
            for name, value, n in _entries(_flatten(mapping)):
                self._meter(name).update(value, n)

    def _meter(self, key: str) -> AverageMeter:
        meter = NestedDict.get(self, key, None)
        if meter is None:
            meter = AverageMeter()
            NestedDict.set(self, key, meter)
        elif not isinstance(meter, AverageMeter):
            raise TypeError(f"{key!r} holds {type(meter).__name__}, not an AverageMeter")
        return meter


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
