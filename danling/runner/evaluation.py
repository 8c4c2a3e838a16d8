"""Evaluation and inference, and the meters and metrics every loop updates: part of `TorchRunner`."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from chanfig import NestedDict
from torch import nn

from ..metrics.average_meter import AverageMeter, AverageMeters
from ..utils import distributed as du
from .batching import BatchFetch, keep_batch
from .config import interval
from .ema import ema_module
from .meta import RunnerMode
from .parts import RunnerParts
from .prefetch import prefetch
from .results import epoch_label

__all__ = ["EvaluationLoop"]


class EvaluationLoop(RunnerParts):
    """`evaluate`, `evaluate_epoch`, `evaluate_step`, `infer` and the measures; part of `TorchRunner`."""

    def evaluate(self, splits: Iterable[str] | None = None) -> NestedDict:
        """Evaluate every split in `splits` (default: `evaluate_splits`); returns `{split: result}`."""
        splits = list(splits) if splits is not None else self.evaluate_splits
        result = NestedDict()
        for split in splits:
            result[split] = self.evaluate_epoch(split)
        print(self.format_result(result))
        return result

    @torch.no_grad()
    def evaluate_epoch(self, split: str = "val") -> NestedDict:
        """One pass over `split` without autograd, the model (or EMA) in eval mode; returns the epoch result.

        Every sample counts once, whatever the number of processes.
        """
        if split not in self.dataloaders:
            raise ValueError(f"no dataloader for split {split!r}; there are: {list(self.dataloaders.keys())}")
        loader = self.dataloaders[split]
        self.mode = RunnerMode.eval
        self.split = split
        model = self.evaluation_model()
        model.eval()
        self._reset_measures()
        length = len(loader)
        log_interval = interval(self.config.log_interval)
        with self.evaluation_context(model):
            for iteration, batch in enumerate(self._progress_bar(self._prefetched(loader), split)):
                self.evaluate_step(batch, model)
                if log_interval and (iteration % log_interval == 0 or iteration == length - 1):
                    self.step_log(split, iteration, length - 1)
        return self.get_epoch_result()

    def evaluate_step(self, batch: Any, model: nn.Module | None = None) -> torch.Tensor | None:
        """Forward (and loss, if there is a criterion) on one batch; updates meters and metrics."""
        model = model if model is not None else self.evaluation_model()
        input, target = self.unpack_batch(batch)
        with self.autocast():
            pred = self.forward(model, input)
            loss = self.criterion(pred, target) if self.criterion is not None and target is not None else None
        self._update_measures(pred, target, loss)
        return loss

    def evaluation_model(self) -> nn.Module:
        """The EMA model if there is one, else the model, unwrapped.

        An EMA that is a module (`AveragedModel`) is called as it is; one that is not (of the `update(model)` kind)
        through its `.module`. Unwrapped because DDP's forward may broadcast buffers, a collective that would hang
        when processes evaluate different numbers of batches.
        """
        if self.model is None:
            raise ValueError("there is no model to evaluate: assign self.model in your runner's __init__")
        if self.ema is None:
            return self.unwrap(self.model)
        module = ema_module(self.ema)
        return self.unwrap(module if module is not None else self.ema)

    @torch.no_grad()
    def infer(self, split: str = "inf") -> Any:
        """Predictions of the model (or EMA) on every sample of `split`, in dataset order, on every process.

        Tensor outputs are concatenated along the batch dimension (and gathered across processes); other outputs
        are returned as a list.
        """
        if split not in self.dataloaders:
            raise ValueError(f"no dataloader for split {split!r}; there are: {list(self.dataloaders.keys())}")
        self.mode = RunnerMode.inf
        self.split = split
        model = self.evaluation_model()
        model.eval()
        outputs = []
        with self.evaluation_context(model):
            for batch in self._progress_bar(self._prefetched(self.dataloaders[split]), split):
                input, _ = self.unpack_batch(batch)
                with self.autocast():
                    outputs.append(self.forward(model, input))
        return self.gather_outputs(outputs)

    def gather_outputs(self, outputs: list) -> Any:
        """This process's outputs (a list of batches) joined with every other process's, in rank order.

        Tensors are concatenated along the batch dimension; other outputs become one list. Collective.
        """
        tensors = bool(outputs) and all(isinstance(output, torch.Tensor) for output in outputs)
        # Every process must take the same path: one with no batch (or a non-tensor output) sends all to objects.
        if self.distributed:
            tensors = not du.all_reduce_max(torch.tensor([0 if tensors else 1])).item()
        if tensors:
            return du.gather_tensor(torch.cat(outputs))
        gathered = du.all_gather_object(outputs)
        flat = [output for chunk in gathered for output in chunk]
        if flat and all(isinstance(output, torch.Tensor) for output in flat):
            return torch.cat([output.to(self.device) for output in flat])
        return flat

    def _reset_measures(self) -> None:
        self.meters.reset()
        metrics = self.current_metrics
        if metrics is not None:
            metrics.reset()

    def _update_measures(self, pred: Any, target: Any, loss: torch.Tensor | None) -> None:
        if loss is not None:
            samples = _batch_length(target, pred)
            meters = self.meters
            meter = dict.get(meters, "loss") if type(meters) is AverageMeters else None
            if type(meter) is AverageMeter and type(loss) is torch.Tensor and loss.numel() == 1:
                # What `meters.update` does for this one meter, without building and checking a mapping of
                # updates: it runs at every step, and costs as much as the hand-written loop's own sum. A CPU loss
                # is read at once (nothing to wait for): a float joins the float64 sum without a tensor op.
                meter._add(loss.item() if loss.is_cpu else loss, samples)
            else:
                meters.update(loss=(loss.detach(), samples))
        metrics = self.current_metrics
        if metrics is not None and target is not None:
            metrics.update(_detach(pred), target)

    def get_step_result(self) -> NestedDict:
        """Meters' last values (the mean over processes when training) merged with the metrics on the last batch;
        when training, the throughput since the last line too (see `danling.runner.throughput`).

        Evaluation logs local values only: processes may evaluate different numbers of batches, so a collective
        there could hang.
        """
        from ..metrics.metrics import Metrics, MultiTaskMetrics
        from .results import merge_metric_result

        training = self._mode is RunnerMode.train
        result = NestedDict(self.meters.batch() if training else self.meters.value())
        metrics = self.current_metrics
        if metrics is not None:
            local = not training and isinstance(metrics, (Metrics, MultiTaskMetrics))
            result = merge_metric_result(result, metrics.value(sync=False) if local else metrics.value())
        throughput = getattr(self, "_throughput", None)
        if training and throughput is not None:
            # Collective, like the meters above: every process logs the same steps.
            result.update(throughput.read(self.device))  # type: ignore[attr-defined]
        return result

    def _prefetched(self, batches: Iterable, loader: Any = None) -> Iterable:
        """`batches` copied to the device a batch ahead, on a side stream, when it is a CUDA device and
        `config.prefetch` is on (see [`danling.runner.prefetch`][danling.runner.prefetch]); else `batches` itself.

        Only where taking a batch from `loader` (by default `batches`) cannot draw random numbers in this process:
        its workers fetch and collate (`num_workers > 0`), or it indexes in-memory tensors (batch fetching). A batch
        taken ahead from anything else could draw before the step it precedes, and a checkpoint taken between the
        two would hold the generators past the next batch's draws: its resume would not be exact.
        """
        if not self.config.get("prefetch", True):
            return batches
        loader = batches if loader is None else loader
        indexing = isinstance(getattr(loader, "dataset", None), BatchFetch) and loader.collate_fn is keep_batch
        if not (indexing or getattr(loader, "num_workers", 0) > 0):
            return batches
        return prefetch(batches, self.device)

    def _progress_bar(self, loader: Iterable, split: str, total: int | None = None, initial: int = 0) -> Iterable:
        """`loader` in a progress bar on the main process when stdout is a terminal (and `config.progress`).

        The bar reads `epoch [3/19] train` during `train`, as the epoch lines name the epoch (`pass [3] train` when
        training by steps), and the split alone otherwise. It counts batches done of `total` (by default
        `len(loader)`), as the step lines do; `initial` is the batches a resumed pass had done. Elsewhere `loader`
        itself is returned.
        """
        if not (self.config.progress and self.is_main_process and sys.stdout.isatty()):
            return loader
        from .progress import progress_bar

        epoch_end = self.config.epoch_end
        # `_epoch_result` is set by `train` for the length of an epoch: evaluations inside it belong to the epoch.
        in_epoch = self._mode is RunnerMode.train or getattr(self, "_epoch_result", None) is not None
        if in_epoch and epoch_end:
            description = f"{epoch_label(self.config.epochs, epoch_end)} {split}"
        elif self._mode is RunnerMode.train and self.trains_by_steps:
            description = f"pass [{self.config.epochs}] {split}"  # passes are counted from 0, as epochs are
        else:
            description = split
        return progress_bar(loader, description, total=total, initial=initial)


def _batch_length(target: Any, pred: Any) -> int:
    for value in (target, pred):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
        if isinstance(value, (list, tuple)) and value:
            return len(value)
    return 1


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, Mapping):
        return {key: _detach(item) for key, item in value.items()}
    return value
