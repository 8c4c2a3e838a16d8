"""How long a run is: batch sizes, micro-batches and optimizer steps per epoch and in all, and the fraction done."""

from __future__ import annotations

from collections.abc import Mapping
from math import ceil
from typing import TYPE_CHECKING, Any

from ..runs import trains_by_steps as counts_in_steps

__all__ = ["RunLength"]


class RunLength:
    """The size of a step and the length of the run, from the config and the data; part of
    [`BaseRunner`][danling.BaseRunner], where its members are documented."""

    dataloaders: Any
    datasets: Any
    split: str | None

    if TYPE_CHECKING:

        @property
        def config(self) -> Any: ...
        @property
        def world_size(self) -> int: ...

    @property
    def batch_size(self) -> int:
        """Batch size of the current split's dataloader, else of `train`, else of the first one, else the config's.

        Raises:
            AttributeError: If there is no dataloader and no `config.dataloader.batch_size`.
        """
        if self.dataloaders:
            for split in (self.split, "train"):
                if split is not None and split in self.dataloaders:
                    return self.dataloaders[split].batch_size
            return next(iter(self.dataloaders.values())).batch_size
        dataloader_config = self.config.get("dataloader") if "dataloader" in self.config else None
        if isinstance(dataloader_config, Mapping) and dataloader_config.get("batch_size"):
            return dataloader_config["batch_size"]
        raise AttributeError(
            "batch_size could not be inferred: there is no dataloader and no config.dataloader.batch_size"
        )

    @property
    def batch_size_equivalent(self) -> int:
        """Samples per optimizer step over all processes: `batch_size * world_size * accum_steps`."""
        return self.batch_size * self.world_size * self.accum_steps

    @property
    def iters_per_epoch(self) -> int:
        """Micro-batches per training epoch on each process (0 without a `train` split)."""
        if "train" in self.dataloaders:
            return len(self.dataloaders["train"])
        if "train" in self.datasets:
            from .batching import dataset_length  # torch: only once there is a dataset

            return ceil(dataset_length(self.datasets["train"]) / self.batch_size / self.world_size)
        return 0

    @property
    def total_iters(self) -> int:
        """Micro-batches (forward and backward passes) in the whole run: `iter_end`, else epochs × per epoch.

        `0` when there is nothing to train on (no `train` split) and no `iter_end`, whether or not `epoch_end` is set.
        """
        iter_end = self.config.iter_end
        if iter_end:
            return iter_end
        iters_per_epoch = self.iters_per_epoch
        return self.total_epochs * iters_per_epoch if iters_per_epoch else 0

    @property
    def total_steps(self) -> int:
        """Optimizer steps in the whole run: `step_end`, else epochs × `ceil(iters_per_epoch / accum_steps)`.

        Accumulation windows close at each epoch's end, so every epoch has `ceil(iters_per_epoch / accum_steps)`
        steps; with `iter_end` set, `ceil(total_iters / accum_steps)`.
        """
        step_end = self.config.step_end
        if step_end:
            return step_end
        if self.config.get("iter_end"):
            return ceil(self.total_iters / self.accum_steps)
        iters_per_epoch = self.iters_per_epoch
        return self.total_epochs * ceil(iters_per_epoch / self.accum_steps) if iters_per_epoch else 0

    @property
    def total_epochs(self) -> int:
        """Epochs in the whole run: `epoch_end`.

        Raises:
            ValueError: If `config.epoch_end` is not set.
        """
        epoch_end = self.config.epoch_end
        if epoch_end:
            return epoch_end
        raise ValueError("total_epochs needs config.epoch_end, which is not set")

    @property
    def trains_by_steps(self) -> bool:
        """Whether the run is counted in optimizer steps: `step_end` or `iter_end` is set and `epoch_end` is not.

        `train` then passes over the data as often as needed, evaluates every `eval_interval` steps and at the
        end, and indexes `results` by step.
        """
        return counts_in_steps(self.config)

    @property
    def accum_steps(self) -> int:
        """Micro-batches accumulated into one optimizer step."""
        return self.config.accum_steps

    @property
    def progress(self) -> float:
        """Fraction of the run's optimizer steps done, in `[0, 1]`.

        Raises:
            RuntimeError: If the length of the run is unknown (no `epoch_end`, `step_end` or `iter_end`).
        """
        try:
            total = self.total_steps
        except ValueError as error:
            raise RuntimeError(f"progress is unknown: {error}") from None
        return min(self.config.steps / total, 1.0) if total else 0.0
