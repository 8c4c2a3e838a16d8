"""In-memory data fetched a batch at a time, and the loader the runner builds its dataloaders with.

A `DataLoader` over a `TensorDataset` calls `__getitem__` once per sample and stacks the samples again in
`default_collate`: for small models, most of a step. A dataset whose samples are rows of tensors (or NumPy arrays)
can instead give a whole batch with one indexing per tensor. [`batch_fetch`][danling.runner.batching.batch_fetch]
recognises such datasets; [`BatchFetch`][danling.runner.batching.BatchFetch] fetches them so, producing exactly
the batch `default_collate` would have made of the same samples (or, for a `collate_fn` of the user's, exactly the
samples it would have received).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, StackDataset, TensorDataset

__all__ = ["BatchFetch", "RunnerLoader", "TensorMapping", "as_dataset", "batch_fetch", "dataset_length"]

# What a batchable dataset indexes, nested as its samples are: a tensor or array (sample `i` is its row `i`), a
# tuple (the sample is a tuple of its parts' samples) or a dict (a dict of them).
Layout = torch.Tensor | np.ndarray | tuple | dict


class TensorMapping(Dataset):
    """A mapping of equal-length tensors or arrays as a dataset: sample `i` is `{key: value[i]}`.

    The runner makes one of a mapping assigned as a dataset (`self.datasets.train = {"input": x, "target": y}`).

    Examples:
        >>> data = TensorMapping({"input": torch.arange(6).view(3, 2), "target": torch.tensor([0, 1, 0])})
        >>> len(data), data[1]
        (3, {'input': tensor([2, 3]), 'target': tensor(1)})
    """

    def __init__(self, data: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        lengths = {key: len(value) for key, value in data.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"the tensors of a mapping dataset must have one length; they have {lengths}")
        self.data = dict(data)
        self.length = next(iter(lengths.values()), 0)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {key: value[index] for key, value in self.data.items()}


def is_tensor_mapping(dataset: Any) -> bool:
    """Whether `dataset` is a non-empty mapping whose values are all tensors or arrays of at least one dimension."""
    return (
        isinstance(dataset, Mapping)
        and bool(dataset)
        and all(isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim > 0 for value in dataset.values())
    )


def as_dataset(dataset: Any) -> Any:
    """`dataset` as a `DataLoader` takes it: a mapping of tensors or arrays becomes a `TensorMapping`."""
    return TensorMapping(dataset) if is_tensor_mapping(dataset) else dataset


def dataset_length(dataset: Any) -> int:
    """Number of samples in `dataset` (a mapping of tensors counts rows, not keys)."""
    return len(as_dataset(dataset))


def _layout(dataset: Any) -> Layout | None:
    """What `dataset` indexes, nested as its samples are; `None` when its samples are not plain rows."""
    if isinstance(dataset, torch.Tensor):
        return dataset if dataset.dim() > 0 else None
    if isinstance(dataset, np.ndarray):
        # Only numbers: default_collate turns those (and nothing else) into tensors the way `torch.as_tensor` does.
        return dataset if dataset.ndim > 0 and dataset.dtype.kind in "biufc" else None
    # Exact `__getitem__`s: a subclass that transforms its samples must be asked for each one.
    getitem = getattr(type(dataset), "__getitem__", None)
    if getitem is TensorDataset.__getitem__:
        parts: tuple | dict = tuple(dataset.tensors)
    elif getitem is StackDataset.__getitem__:
        parts = dataset.datasets
    elif getitem is TensorMapping.__getitem__:
        parts = dataset.data
    else:
        return None
    if isinstance(parts, dict):
        layout = {key: _layout(part) for key, part in parts.items()}
        return None if any(part is None for part in layout.values()) else layout
    layouts = tuple(_layout(part) for part in parts)
    return None if any(part is None for part in layouts) else layouts


def _rows(tensor: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    # `index_select` on the CPU: the same rows as `tensor[index]`, through less of advanced indexing's machinery.
    if tensor.device.type == "cpu":
        return partial(torch.index_select, tensor, 0)
    return tensor.__getitem__


def _gatherer(layout: Layout) -> Callable[[torch.Tensor], Any]:
    """A function giving the batch `default_collate` makes of the samples at an index: stacked rows, and tuples
    turned into lists, as `default_collate` turns them. Built once, so a batch costs no dispatch on the layout."""
    if isinstance(layout, torch.Tensor):
        return _rows(layout)
    if isinstance(layout, np.ndarray):
        array = layout
        return lambda index: torch.as_tensor(array[index.numpy()])
    if isinstance(layout, tuple):
        parts = [_gatherer(part) for part in layout]
        if all(isinstance(part, torch.Tensor) and part.device.type == "cpu" for part in layout):
            tensors = list(layout)  # the common case, a TensorDataset: one comprehension, no nested calls
            return lambda index: [torch.index_select(tensor, 0, index) for tensor in tensors]
        return lambda index: [part(index) for part in parts]
    named = [(key, _gatherer(part)) for key, part in layout.items()]
    return lambda index: {key: part(index) for key, part in named}


def _splitter(layout: Layout) -> Callable[[torch.Tensor], Sequence]:
    """A function giving the samples at an index, as `dataset[i]` gives them, from one indexing per tensor."""
    if isinstance(layout, torch.Tensor):
        rows = _rows(layout)
        return lambda index: rows(index).unbind(0)
    if isinstance(layout, np.ndarray):
        array = layout
        return lambda index: list(array[index.numpy()])
    if isinstance(layout, tuple):
        parts = [_splitter(part) for part in layout]
        return lambda index: list(zip(*(part(index) for part in parts)))
    keys, values = list(layout), [_splitter(part) for part in layout.values()]
    return lambda index: [dict(zip(keys, row)) for row in zip(*(part(index) for part in values))]


class BatchFetch(Dataset):
    """`dataset`, fetched a batch at a time with one indexing per tensor.

    `__getitems__` (which `DataLoader` calls with a batch's indices, in its workers too) gives the batch collated
    as `default_collate` would collate the samples, for a loader whose `collate_fn` passes it on as it is
    ([`keep_batch`][danling.runner.batching.keep_batch]); with `samples=True`, it gives the samples instead, for a
    `collate_fn` of the user's. `dataset[i]` is the dataset's own sample.

    Args:
        dataset: The dataset.
        layout: What it indexes, from `batch_fetch`.
        samples: Give the list of samples rather than the collated batch.
    """

    def __init__(self, dataset: Any, layout: Layout, samples: bool = False) -> None:
        self.dataset = dataset
        self.layout = layout
        self.samples = samples
        self.fetch = _splitter(layout) if samples else _gatherer(layout)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: list[int] | torch.Tensor) -> Any:
        return self.fetch(torch.as_tensor(indices, dtype=torch.long))

    def __getstate__(self) -> dict[str, Any]:
        # Workers started by spawn receive a pickled copy: the fetch function (closures) is rebuilt there.
        return {key: value for key, value in self.__dict__.items() if key != "fetch"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.fetch = _splitter(self.layout) if self.samples else _gatherer(self.layout)


def batch_fetch(dataset: Any, samples: bool = False) -> BatchFetch | None:
    """`dataset` fetched a batch at a time, or `None` when its samples are not rows of tensors or arrays.

    Batchable: a `TensorDataset`, a `StackDataset` of batchable datasets (or tensors, or arrays), a `TensorMapping`.
    A dataset with a `__getitems__` of its own is not wrapped: `DataLoader` already calls it once per batch.

    Examples:
        >>> data = TensorDataset(torch.arange(10).view(5, 2), torch.arange(5))
        >>> batch_fetch(data).__getitems__([4, 0])
        [tensor([[8, 9],
                [0, 1]]), tensor([4, 0])]
        >>> batch_fetch(data, samples=True).__getitems__([4])
        [(tensor([8, 9]), tensor(4))]
    """
    if isinstance(dataset, BatchFetch):
        return dataset
    layout = _layout(dataset)
    return None if layout is None else BatchFetch(dataset, layout, samples)


def keep_batch(batch: Any) -> Any:
    """The `collate_fn` of a loader over a `BatchFetch`: the batch comes collated already."""
    return batch


class RunnerLoader(DataLoader):
    """A `DataLoader` that, in the main process, iterates without `DataLoader`'s per-batch machinery.

    With `num_workers=0` and no pinned memory, a pass takes the sampler's whole order at once and fetches each
    slice of `batch_size` indices as `DataLoader` would (through `__getitems__` where the dataset has one, else one
    `__getitem__` per sample), then collates it with `collate_fn`: the same batches, without a profiler scope, an
    iterator object and a batch sampler stepping per index around every batch. It draws the workers' base seed from
    `generator` as `DataLoader` does, so the generator's state follows the same course. Otherwise it is a
    `DataLoader`.
    """

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        batch_sampler = self.batch_sampler
        if self.num_workers > 0 or self.pin_memory or type(batch_sampler) is not BatchSampler:
            return super().__iter__()
        # Drawn when the pass starts, as DataLoader's iterator draws it, whether or not a worker uses it.
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        sampler, size, dataset = batch_sampler.sampler, batch_sampler.batch_size, self.dataset
        if isinstance(dataset, BatchFetch):
            # The order as a tensor (the runner's samplers make one directly), cut into views: a batch's indices
            # cost nothing more.
            index_tensor = getattr(sampler, "index_tensor", None)
            order = index_tensor() if index_tensor is not None else torch.as_tensor(list(sampler), dtype=torch.long)
            # `split` makes one empty chunk of an empty order (a pass resumed at its end): no batch at all.
            chunks: Any = order.split(size) if len(order) else ()
            if batch_sampler.drop_last and len(order) % size:
                chunks = chunks[:-1]
            return map(dataset.fetch, chunks) if self.collate_fn is keep_batch else self._collated(chunks)
        indices = list(sampler)
        stop = len(indices) - len(indices) % size if batch_sampler.drop_last else len(indices)
        return self._collated(indices[start : start + size] for start in range(0, stop, size))

    def _collated(self, chunks: Iterable) -> Iterator[Any]:
        dataset, collate_fn = self.dataset, self.collate_fn
        getitems = getattr(dataset, "__getitems__", None)
        for indices in chunks:
            if getitems:
                yield collate_fn(getitems(indices))
            else:
                yield collate_fn([dataset[index] for index in indices])
