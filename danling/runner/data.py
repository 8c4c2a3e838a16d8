"""Dataloaders built from datasets, and batches taken apart: the data part of `TorchRunner`."""

from __future__ import annotations

import copy
import signal
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import torch

from .batching import RunnerLoader, as_dataset, batch_fetch, dataset_length, keep_batch
from .parts import RunnerParts
from .samplers import EvaluationSampler, TrainingSampler

__all__ = ["DataMixin", "to_device"]

# Keys of `config.dataloader` that are DataLoader arguments, not per-split sections.
_LOADER_DEFAULTS = {"batch_size": 1, "num_workers": 0, "drop_last": False}


class DataMixin(RunnerParts):
    """Splits, dataloaders and batches; part of [`TorchRunner`][danling.TorchRunner]."""

    @property
    def train_splits(self) -> list[str]:
        """Splits trained on: `config.train_splits`, else the datasets/dataloaders named `train*`."""
        configured = self.config.get("train_splits")
        if configured is not None:
            return list(configured)
        return [split for split in self._splits() if split.startswith("train")]

    @property
    def evaluate_splits(self) -> list[str]:
        """Splits evaluated each epoch: `config.evaluate_splits`, else every split that is not trained on."""
        configured = self.config.get("evaluate_splits")
        if configured is not None:
            return list(configured)
        train_splits = set(self.train_splits)
        return [split for split in self._splits() if split not in train_splits]

    def _splits(self) -> list[str]:
        return list(dict.fromkeys([*self.datasets.keys(), *self.dataloaders.keys()]))

    def dataloader_options(self, split: str) -> dict[str, Any]:
        """DataLoader arguments for `split`: `config.dataloader`, overridden by `config.dataloader.<split>`."""
        # Not config.get("dataloader", {}): reading a missing section through chanfig may create it.
        section = self.config["dataloader"] if "dataloader" in self.config else {}  # noqa: SIM401
        options = dict(_LOADER_DEFAULTS)
        options.update({key: value for key, value in section.items() if not isinstance(value, Mapping)})
        if isinstance(section.get(split) if hasattr(section, "get") else None, Mapping):
            options.update(section[split])
        return options

    def build_dataloaders(self) -> None:
        """Build a DataLoader for every dataset that has none.

        Training splits are shuffled (an order fixed by seed and epoch), padded to equal length across processes;
        other splits keep dataset order, are split across processes without duplicates, and never drop samples.

        A mapping of equal-length tensors or arrays is a dataset whose sample `i` is `{key: value[i]}`. With
        `config.fetch_batches`, a dataset whose samples are rows of tensors or arrays (a `TensorDataset`, a
        `StackDataset`, such a mapping) is fetched a batch at a time, one indexing per tensor: the batches are
        those of the per-sample path, value for value (see [`danling.runner.batching`][danling.runner.batching]).
        """
        train_splits = set(self.train_splits)
        for split, dataset in self.datasets.items():
            if split in self.dataloaders:
                continue
            dataset = as_dataset(dataset)
            options = self.dataloader_options(split)
            training = split in train_splits
            shuffle = options.pop("shuffle", training)
            drop_last = bool(options.pop("drop_last", False)) and training
            if training:
                sampler: Any = TrainingSampler(
                    dataset_length(dataset),
                    shuffle=shuffle,
                    seed=self.config.seed or 0,
                    rank=self.rank,
                    world_size=self.world_size,
                    drop_last=drop_last,
                )
            else:
                sampler = EvaluationSampler(dataset_length(dataset), self.rank, self.world_size)
            options.setdefault("pin_memory", self.device.type == "cuda")
            # A loader of its own: iterating a DataLoader draws the base seed of its workers (torch seeds `random`,
            # NumPy and torch in each worker from it), and drawing it from the global generator would shift every
            # later random number (dropout, augmentation) after a resume.
            generator = torch.Generator()
            generator.manual_seed((self.config.seed or 0) + self.rank)
            options.setdefault("generator", generator)
            if options.get("num_workers"):
                options["worker_init_fn"] = IgnoreInterrupt(options.get("worker_init_fn"))
            # Without a batch size the loader yields samples, not batches: nothing to fetch together.
            if self.config.fetch_batches and options.get("batch_size") is not None:
                collate_fn = options.get("collate_fn")
                batched = batch_fetch(dataset, samples=collate_fn is not None)
                if batched is not None:
                    # The user's collate_fn gets the samples it would get; without one, the batch comes collated.
                    dataset, options["collate_fn"] = batched, collate_fn or keep_batch
            self.datasamplers[split] = sampler
            self.dataloaders[split] = RunnerLoader(dataset, sampler=sampler, drop_last=drop_last, **options)

    def unpack_batch(self, batch: Any) -> tuple[Any, Any]:
        """Split a batch into `(input, target)` on `device`; `target` is `None` when the batch has none.

        A mapping gives its `input` and `target`; a pair gives both; a 1-tuple or 1-list (what a
        `DataLoader(TensorDataset(x))` yields) is the input alone; anything else is the input.
        """
        device = self.device
        if isinstance(batch, Mapping):
            if "input" not in batch:
                raise ValueError(f"a mapping batch needs an 'input' key; it has {list(batch.keys())}")
            return to_device(batch["input"], device), to_device(batch.get("target"), device)
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            return to_device(batch[0], device), to_device(batch[1], device)
        if isinstance(batch, (tuple, list)) and len(batch) == 1:
            return to_device(batch[0], device), None
        return to_device(batch, device), None

    @staticmethod
    def forward(model: Any, input: Any) -> Any:
        """Call `model` on `input`, as keyword arguments when `input` is a mapping."""
        if isinstance(input, Mapping):
            return model(**input)
        return model(input)


def to_device(data: Any, device: torch.device) -> Any:
    """Move tensors in `data` (nested in mappings, lists and tuples) to `device`; anything else is kept as it is.

    Containers keep their type (a named tuple, an `OrderedDict`, a `BatchEncoding`), as `DataLoader`'s pinning keeps
    it; a mapping that cannot be copied becomes a `dict`.
    """
    if isinstance(data, torch.Tensor):
        # Comparing devices is cheaper than a no-op `.to()`, and this runs on every batch.
        return data if data.device == device else data.to(device, non_blocking=True)
    if isinstance(data, Mapping):
        moved = {key: to_device(value, device) for key, value in data.items()}
        return moved if type(data) is dict else _like(data, moved)
    if isinstance(data, (list, tuple)):
        values = [to_device(value, device) for value in data]
        kind = type(data)
        if kind is list:
            return values
        # A named tuple takes its fields as arguments, not as one iterable.
        return kind(*values) if hasattr(data, "_fields") else kind(values)
    return data


def _like(mapping: Mapping, values: dict) -> Mapping:
    """`values` in a shallow copy of `mapping` (its type and attributes kept), or as they are if it cannot take them."""
    if isinstance(mapping, MutableMapping):
        try:
            copied = copy.copy(mapping)
            copied.update(values)
            return copied
        except TypeError:
            pass
    return values


class IgnoreInterrupt:
    """A DataLoader's `worker_init_fn` that makes the worker ignore SIGINT, then calls the user's own, if any.

    Ctrl-C reaches every process in the terminal's foreground group, loader workers included: a worker that dies of
    it makes the next batch fail with "DataLoader worker exited unexpectedly", where the main process would have
    saved and stopped cleanly (see [`PreemptionWatcher`][danling.runner.preemption.PreemptionWatcher]). Workers
    still stop when their loader is shut down, or when the main process ends.
    """

    def __init__(self, worker_init_fn: Callable[[int], Any] | None = None) -> None:
        self.worker_init_fn = worker_init_fn

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.worker_init_fn is not None:
            self.worker_init_fn(worker_id)
