"""Metrics over every prediction seen: predictions and targets are stored, and metrics computed on demand.

`update` only keeps references to detached tensors, so it is cheap and never waits for the device. `value()` (or
`val`) computes the metrics on the last batch and `average()` (or `avg`) on everything since `reset()`; across
processes both gather the predictions of every process first, so the numbers equal those of one process holding all
the data. `input` and `target` are the last batch and `inputs` and `targets` everything stored, gathered the same
way: exactly what `value()` and `average()` compute on, before `preprocess`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from math import nan
from typing import Any

import torch
from chanfig import FlatDict, NestedDict
from torch import Tensor

from ..utils.distributed import all_gather_object, gather_tensor, is_distributed
from .multitask import AVERAGE, MISSING, add_tasks, average_over_tasks, iter_tasks, lookup
from .preprocess import Preprocess, identity

__all__ = ["Metrics", "MultiTaskMetrics"]


class Metrics:
    """Named metric functions over stored predictions and targets.

    Batches are stored by reference (detached, not copied): do not modify them in place after `update`. They must
    agree in every dimension but the first. Predictions with one trailing dimension of size 1 more than their
    targets, as a single-output head gives them (`(N, 1)` against `(N,)`), are stored without it, so that
    single-output predictions come out flat like their targets. The factories in
    [`danling.metrics.factory`][danling.metrics.factory] build the usual sets.

    `input`, `target`, `inputs` and `targets` are what the metrics are computed on before `preprocess`:
    `metrics.preprocess(metrics.input, metrics.target)` is what the metric functions see in `value()`. Across
    processes they hold every process's batches in rank order, so reading them is collective, like `value()`; use
    `state_dict()` for this process's own. With no batch stored anywhere they are empty tensors (`torch.empty(0)`).

    Args:
        *args: Mappings from names to metric functions `(input, target) -> value`.
        preprocess: A function `(input, target) -> (input, target)` applied to the (gathered) predictions once
            before the metrics, for instance to reshape them or drop ignored targets. `None` is
            [`identity`][danling.metrics.preprocess.identity].
        **metrics: Names to metric functions.

    Attributes:
        metrics: The metric functions by name.
        preprocess: The preprocess function; always callable.

    Examples:
        >>> from functools import partial
        >>> from danling.metrics.functional import accuracy, auroc
        >>> metrics = Metrics(auroc=partial(auroc, task="binary"), acc=partial(accuracy, task="binary"))
        >>> metrics.update(torch.tensor([0.2, 0.9, 0.6]), torch.tensor([0, 1, 0]))
        >>> metrics.update(torch.tensor([0.7, 0.1]), torch.tensor([1, 1]))
        >>> metrics.value().dict()
        {'auroc': nan, 'acc': 0.5}
        >>> {name: round(value, 4) for name, value in metrics.average().items()}
        {'auroc': 0.6667, 'acc': 0.6}
        >>> metrics.val["acc"], round(metrics.avg["auroc"], 4)
        (0.5, 0.6667)
        >>> f"{metrics:.4f}"
        'auroc: nan (0.6667)\\tacc: 0.5000 (0.6000)'
        >>> metrics.input, metrics.target
        (tensor([0.7000, 0.1000]), tensor([1, 1]))
        >>> metrics.inputs, metrics.targets
        (tensor([0.2000, 0.9000, 0.6000, 0.7000, 0.1000]), tensor([0, 1, 0, 1, 1]))
        >>> metrics.reset()
        >>> metrics.inputs
        tensor([])
    """

    def __init__(
        self, *args: Mapping[str, Callable], preprocess: Preprocess | None = None, **metrics: Callable
    ) -> None:
        self.metrics: dict[str, Callable] = dict(*args, **metrics)
        self.preprocess: Preprocess = identity if preprocess is None else preprocess
        self._inputs: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._last: tuple[Tensor, Tensor] | None = None

    def update(self, input: Any, target: Any) -> None:
        """Store one batch of predictions and targets; nothing is computed and the device is not waited for.

        Args:
            input: Predictions of the batch.
            target: Targets of the batch.
        """
        input, target = _align(_detach(input), _detach(target))
        self._inputs.append(input)
        self._targets.append(target)
        self._last = (input, target)

    def reset(self) -> None:
        """Forget every stored batch."""
        self._inputs, self._targets, self._last = [], [], None

    @property
    def input(self) -> Tensor:
        """The predictions of the last batch, detached, as given to `update`; collective across processes.

        Across processes, every process's last batch concatenated in rank order (what `value()` computes on). An
        empty tensor before the first update. Single-output predictions `(N, 1)` given with targets `(N,)` are flat.
        """
        return _or_empty(_gather(*self._last_batch())[0])

    @property
    def target(self) -> Tensor:
        """The targets of the last batch, detached, as given to `update`; collective across processes.

        Across processes, every process's last batch concatenated in rank order. An empty tensor before the first
        update.
        """
        return _or_empty(_gather(*self._last_batch())[1])

    @property
    def inputs(self) -> Tensor:
        """Every prediction stored since the last reset, concatenated; collective across processes.

        Across processes, every process's predictions in rank order (what `average()` computes on). An empty tensor
        before the first update. The batches are concatenated on the device of the newest one, once: later reads
        reuse the result.
        """
        return _or_empty(_gather(*self._stored())[0])

    @property
    def targets(self) -> Tensor:
        """Every target stored since the last reset, concatenated; collective across processes.

        Across processes, every process's targets in rank order. An empty tensor before the first update.
        """
        return _or_empty(_gather(*self._stored())[1])

    def compute(self, input: Tensor | None, target: Tensor | None) -> FlatDict:
        """Every metric on `input` and `target`, after `preprocess`; local to this process.

        Args:
            input: Predictions, or `None` when there are none.
            target: Targets, or `None` when there are none.

        Returns:
            Each metric as a float (a list of floats for a metric giving one value per class), `nan` for every
            metric when there is no data (`None`, or empty input and target).
        """
        if input is None or target is None or input.numel() == 0 == target.numel():
            return FlatDict(dict.fromkeys(self.metrics, nan))
        input, target = self.preprocess(input, target)
        return FlatDict({name: _to_python(metric(input, target)) for name, metric in self.metrics.items()})

    def value(self, sync: bool = True) -> FlatDict:
        """The metrics on the last batch of every process; collective.

        Args:
            sync: Gather from every process. `False` computes on this process's last batch alone, with no
                collective: for logging where processes may have done different numbers of batches.
        """
        last = self._last_batch()
        return self.compute(*(_gather(*last) if sync else last))

    def average(self) -> FlatDict:
        """The metrics on every batch of every process since the last reset; collective."""
        return self.compute(*_gather(*self._stored()))

    @property
    def val(self) -> FlatDict:
        """The metrics on the last batch of every process (same as `value()`); collective."""
        return self.value()

    @property
    def avg(self) -> FlatDict:
        """The metrics on every batch of every process since the last reset (same as `average()`); collective."""
        return self.average()

    def state_dict(self) -> dict[str, Tensor | None]:
        """The stored predictions and targets of this process, and its last batch, on the CPU."""
        input, target = self._stored()
        last_input, last_target = self._last_batch()
        state = {"input": input, "target": target, "last_input": last_input, "last_target": last_target}
        return {key: None if value is None else value.cpu() for key, value in state.items()}

    def load_state_dict(self, state: Mapping[str, Tensor | None]) -> None:
        """Restore the stored batches from `state_dict`; they join later batches on those batches' device."""
        self.reset()
        input, target = state["input"], state["target"]
        if input is not None and target is not None:
            self._inputs, self._targets = [input], [target]
        if state["last_input"] is not None and state["last_target"] is not None:
            self._last = (state["last_input"], state["last_target"])

    def _last_batch(self) -> tuple[Tensor | None, Tensor | None]:
        return self._last or (None, None)

    def _stored(self) -> tuple[Tensor | None, Tensor | None]:
        if not self._inputs:
            return None, None
        if len(self._inputs) > 1:
            # Replacing the batches by their concatenation keeps one copy alive instead of two, and makes later
            # reads cheaper; the last batch stays referenced through `_last`. Batches restored from a checkpoint
            # live on the CPU and move to the device of the newest batch.
            self._inputs = [_concatenate(self._inputs)]
            self._targets = [_concatenate(self._targets)]
        return self._inputs[0], self._targets[0]

    def __format__(self, format_spec: str) -> str:
        # Formatting is for logs, which may be written by one process only, so it must not be collective: the
        # values are this process's own (use `value()` and `average()` for every process's).
        last = self.compute(*self._last_batch())
        overall = self.compute(*self._stored())
        return "\t".join(
            f"{name}: {_format(last[name], format_spec)} ({_format(overall[name], format_spec)})"
            for name in self.metrics
        )

    def __repr__(self) -> str:
        samples = sum(len(batch) for batch in self._targets)
        return f"{self.__class__.__name__}({', '.join(self.metrics)}; {samples} samples)"


class MultiTaskMetrics(NestedDict):
    """[`Metrics`][danling.metrics.Metrics] by task, fed dicts of predictions and targets keyed by task.

    `update(input, target)` takes the same two arguments as `Metrics.update`, each a mapping from task name to
    tensor, as a multi-task model and data loader produce them. Task names may be dotted (`"cls.a"`) and the
    mappings flat or nested.

    Args:
        *args: Mappings from task names to `Metrics`.
        return_average: Add an `"average"` entry to `value()` and `average()`: for each metric name, the mean over
            the tasks that report it (a `nan`, from a task with no data, is left out of the mean).
        **tasks: Task names to `Metrics`.

    Raises:
        ValueError: If `return_average` is set and a task is named `"average"`.

    Examples:
        >>> from danling.metrics import binary_metrics, regression_metrics
        >>> metrics = MultiTaskMetrics(spam=binary_metrics(), price=regression_metrics())
        >>> metrics.update(
        ...     {"spam": torch.tensor([0.2, 0.9, 0.6]), "price": torch.tensor([1.0, 2.0, 3.0])},
        ...     {"spam": torch.tensor([0, 1, 1]), "price": torch.tensor([1.5, 2.0, 3.5])},
        ... )
        >>> result = metrics.average()
        >>> round(result["spam.auroc"], 4), round(result["price.pearson"], 4)
        (1.0, 0.9608)

        With `return_average=True`, the mean over tasks of each metric comes too:

        >>> from danling.metrics.functional import accuracy
        >>> metrics = MultiTaskMetrics(a=Metrics(acc=accuracy), b=Metrics(acc=accuracy), return_average=True)
        >>> metrics.update({"a": torch.tensor([0.9, 0.2]), "b": torch.tensor([0.7])}, {"a": [1, 1], "b": [1]})
        >>> metrics.avg.dict()
        {'a': {'acc': 0.5}, 'b': {'acc': 1.0}, 'average': {'acc': 0.75}}
    """

    def __init__(self, *args: Mapping[str, Metrics], return_average: bool = False, **tasks: Metrics) -> None:
        super().__init__()
        tasks = dict(*args, **tasks)
        if return_average and any(name == AVERAGE or name.startswith(f"{AVERAGE}.") for name in tasks):
            raise ValueError(
                f"a task is named {AVERAGE!r}, the name return_average=True gives the mean over tasks; rename the task "
                "or set return_average=False"
            )
        add_tasks(self, tasks)
        # Set after the tasks, so that the containers chanfig creates for dotted task names do not inherit it.
        self.setattr("return_average", return_average)

    def update(self, input: Mapping[str, Any], target: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Store one batch for every task whose name is in both `input` and `target`; other tasks are left alone.

        Args:
            input: Predictions by task name.
            target: Targets by task name.
        """
        for name, metrics in iter_tasks(self, Metrics):
            task_input, task_target = lookup(input, name), lookup(target, name)
            if task_input is not MISSING and task_target is not MISSING:
                metrics.update(task_input, task_target)

    def reset(self) -> None:
        """Forget every stored batch of every task."""
        for _, metrics in iter_tasks(self, Metrics):
            metrics.reset()

    def state_dict(self) -> dict[str, dict[str, Tensor | None]]:
        """Each task's `Metrics.state_dict()`, by task name."""
        return {task: metrics.state_dict() for task, metrics in iter_tasks(self, Metrics)}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Tensor | None]]) -> None:
        """Restore every task named in `state` from `state_dict`."""
        tasks = dict(iter_tasks(self, Metrics))
        for task, task_state in state.items():
            tasks[task].load_state_dict(task_state)

    def value(self, sync: bool = True) -> NestedDict:
        """`{task: {metric: value}}` on the last batch of every process; collective unless `sync=False`."""
        return self._collect(lambda metrics: metrics.value(sync=sync))

    def average(self) -> NestedDict:
        """`{task: {metric: value}}` on every batch of every process since the last reset; collective."""
        return self._collect(Metrics.average)

    @property
    def val(self) -> NestedDict:
        """`{task: {metric: value}}` on the last batch of every process (same as `value()`); collective."""
        return self.value()

    @property
    def avg(self) -> NestedDict:
        """`{task: {metric: value}}` on every batch since the last reset (same as `average()`); collective."""
        return self.average()

    def _collect(self, read: Callable[[Metrics], FlatDict]) -> NestedDict:
        items = {
            f"{task}.{name}": value
            for task, metrics in iter_tasks(self, Metrics)
            for name, value in read(metrics).items()
        }
        if self.getattr("return_average", False):
            if any(key.startswith(f"{AVERAGE}.") for key in items):
                raise ValueError(
                    f"a task is named {AVERAGE!r}, the name return_average=True gives the mean over tasks; rename "
                    "the task or set return_average=False"
                )
            items.update({f"{AVERAGE}.{name}": value for name, value in average_over_tasks(items).items()})
        return NestedDict(items)

    def __format__(self, format_spec: str) -> str:
        parts: list[str] = []
        for task, metrics in iter_tasks(self, Metrics):
            formatted = format(metrics, format_spec)
            parts.extend(f"{task}.{part}" for part in formatted.split("\t") if part)
        return "\t".join(parts)


def _gather(input: Tensor | None, target: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """Every process's `input` and `target`, concatenated in rank order; processes holding none contribute none."""
    if not is_distributed():
        return input, target
    local = None if input is None or target is None else (input.shape[1:], input.dtype, target.shape[1:], target.dtype)
    known = next((meta for meta in all_gather_object(local) if meta is not None), None)
    if known is None:
        return None, None
    if input is None or target is None:
        # Empty stand-ins with the others' trailing shapes let this process take part in the gather.
        input = torch.empty((0, *known[0]), dtype=known[1])
        target = torch.empty((0, *known[2]), dtype=known[3])
    return gather_tensor(input), gather_tensor(target)


def _concatenate(tensors: list[Tensor]) -> Tensor:
    device = tensors[-1].device
    return torch.cat([tensor.to(device) for tensor in tensors])


def _or_empty(tensor: Tensor | None) -> Tensor:
    return torch.empty(0) if tensor is None else tensor


def _align(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """`input` without a trailing dimension of size 1 that `target` lacks: `(N, 1)` against `(N,)` becomes `(N,)`."""
    if target.dim() >= 1 and input.shape == (*target.shape, 1):
        input = input.squeeze(-1)
    return input, target


def _detach(value: Any) -> Tensor:
    return value.detach() if isinstance(value, Tensor) else torch.as_tensor(value)


def _to_python(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def _format(value: Any, format_spec: str) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(format(item, format_spec) for item in value) + "]"
    return format(value, format_spec)
