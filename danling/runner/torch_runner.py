"""`TorchRunner`: training, evaluation and inference with PyTorch, on one process or many."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import weakref
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any
from warnings import warn

import torch
from chanfig import NestedDict
from torch import distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..metrics import Metrics, MultiTaskMetrics
from ..utils import distributed as du
from ..utils.seed import get_rng_state, seed_everything, set_rng_state
from .base_runner import BaseRunner
from .config import interval
from .meta import RunnerMode
from .preemption import Preempted, PreemptionWatcher
from .samplers import EvaluationSampler, TrainingSampler

__all__ = ["TorchRunner"]

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
"""Autocast dtype for each reduced `Config.precision`."""

# Runners on several processes, whose DDP wrappers are dropped before the process group is torn down at exit.
_DISTRIBUTED_RUNNERS: weakref.WeakSet = weakref.WeakSet()

# Keys of `config.dataloader` that are DataLoader arguments, not per-split sections.
_LOADER_DEFAULTS = {"batch_size": 1, "num_workers": 0, "drop_last": False}


class TorchRunner(BaseRunner):
    """Runner for PyTorch: subclass it, assign model, criterion, optimizer (scheduler) and datasets in `__init__`.

    `__post_init__` then seeds, sets up logging, builds dataloaders for datasets that have none, moves the model
    (and EMA) to [`device`][danling.TorchRunner.device], restores a checkpoint given in the config, and wraps the
    model in `DistributedDataParallel` when several processes run.

    Splits named `train*` are trained on and the others evaluated, unless `config.train_splits` /
    `config.evaluate_splits` (or the arguments of [`train`][danling.TorchRunner.train]) say otherwise. A batch is
    an `(input, target)` pair, a mapping with `input` and `target` (a mapping input is passed as keyword
    arguments), or, for inference, the input alone.

    Examples:
        >>> import torch, danling as dl
        >>> from torch.utils.data import TensorDataset
        >>> class Regression(dl.TorchRunner):
        ...     def __init__(self, config):
        ...         super().__init__(config)
        ...         self.model = torch.nn.Linear(2, 1)
        ...         self.criterion = torch.nn.MSELoss()
        ...         self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        ...         x = torch.randn(64, 2)
        ...         self.datasets.train = TensorDataset(x, x.sum(1, keepdim=True))
        >>> config = dl.Config(seed=0, epoch_end=5, log=False, project_root=getfixture("tmp_path"))
        >>> config.dataloader.batch_size = 8
        >>> runner = Regression(config)
        >>> results = runner.train()  # doctest: +ELLIPSIS
        training on train [0/7]	loss: ...
        epoch [4/4]	train: loss: ...
        >>> results[4]["train"]["loss"] < results[0]["train"]["loss"]
        True
    """

    model: nn.Module | None = None
    scaler: torch.amp.GradScaler | None = None
    # Position of the current micro-batch within its epoch, set by `train_epoch`, so accumulation windows close
    # at the epoch's end: a checkpoint taken between epochs then never holds half-accumulated gradients.
    _epoch_iteration: int | None = None
    _epoch_length: int | None = None
    _preemption: PreemptionWatcher | None = None
    _agreed_signal: int | None = None
    # The epoch's result so far, and where inside the epoch a checkpoint being written was taken.
    _epoch_result: NestedDict | None = None
    _position: dict[str, Any] | None = None
    # Meters and metrics of this process from a checkpoint taken inside an epoch, restored by `train_epoch`.
    _resume_state: Mapping | None = None
    _epoch_generator_state: torch.Tensor | None = None
    # Every process's own state (random generators, loader generators, mid-epoch measures), by rank, as gathered
    # at the last point where the loop had every process together: a save never has to wait for the others.
    _process_states: list[Any] | None = None

    def __post_init__(self) -> None:
        self.init_environment()
        self.build_dataloaders()
        self.move_to_device()
        self.init_precision()
        self.restore_checkpoint()
        self.wrap_model()
        if self.config.get("log_interval") is None and self.dataloaders:
            # About ten lines per epoch; an explicit value of 0 or below turns the lines off.
            self.config.log_interval = max(1, max(len(loader) for loader in self.dataloaders.values()) // 10)

    # Environment

    def init_distributed(self) -> None:
        """Join (or start) the process group `torchrun` describes, and agree on the timestamp.

        The backend is `config.backend`, else `nccl` when CUDA is available and `gloo` otherwise; `init_method`,
        `world_size` and `rank` come from the config, else from the environment `torchrun` sets.
        """
        world_size = int(self.config.get("world_size") or os.environ.get("WORLD_SIZE", "1"))
        if not dist.is_available() or (world_size <= 1 and not dist.is_initialized()):
            return
        if not dist.is_initialized():
            backend = self.config.get("backend") or ("nccl" if torch.cuda.is_available() else "gloo")
            if backend == "nccl":
                torch.cuda.set_device(du.get_local_rank())
            rank = self.config.get("rank")
            dist.init_process_group(
                backend,
                init_method=self.config.get("init_method"),
                world_size=world_size,
                rank=int(rank if rank is not None else os.environ.get("RANK", "0")),
            )
            # Created here, so torn down here when the interpreter exits, whatever the user's script does.
            du.destroy_process_group_at_exit(release=_release_process_group_users)
        _DISTRIBUTED_RUNNERS.add(self)
        self.config.backend = dist.get_backend()
        self.timestamp = du.broadcast_object(self.timestamp)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """`obj` as held by process `src`, on every process."""
        return du.broadcast_object(obj, src)

    def seed_generators(self, seed: int) -> None:
        """Seed Python, NumPy and torch (every device)."""
        seed_everything(seed, torch=True)

    def set_deterministic(self) -> None:
        """Make cuDNN and torch use deterministic algorithms (and tell cuBLAS to, where it needs to be told)."""
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)

    def init_tensorboard(self, *args: Any, **kwargs: Any) -> None:
        """Write TensorBoard scalars to `dir/tensorboard`, on the main process."""
        if not self.is_main_process:
            return
        from torch.utils.tensorboard import SummaryWriter

        kwargs.setdefault("log_dir", os.path.join(self.dir, "tensorboard"))
        self.writer = SummaryWriter(*args, **kwargs)

    def init_precision(self) -> None:
        """Create a `GradScaler` for fp16 on CUDA, where small gradients would otherwise underflow."""
        if self.config.precision == "fp16" and self.device.type == "cuda" and self.scaler is None:
            self.scaler = torch.amp.GradScaler("cuda")

    # Data

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
        """
        train_splits = set(self.train_splits)
        for split, dataset in self.datasets.items():
            if split in self.dataloaders:
                continue
            options = self.dataloader_options(split)
            training = split in train_splits
            shuffle = options.pop("shuffle", training)
            drop_last = bool(options.pop("drop_last", False)) and training
            if training:
                sampler: Any = TrainingSampler(
                    len(dataset),
                    shuffle=shuffle,
                    seed=self.config.seed or 0,
                    rank=self.rank,
                    world_size=self.world_size,
                    drop_last=drop_last,
                )
            else:
                sampler = EvaluationSampler(len(dataset), self.rank, self.world_size)
            options.setdefault("pin_memory", self.device.type == "cuda")
            if options.get("num_workers", 0) > 0:
                options.setdefault("worker_init_fn", seed_worker)
            # A loader of its own: iterating a DataLoader draws a seed for its workers, and drawing it from the
            # global generator would shift every later random number (dropout, augmentation) after a resume.
            generator = torch.Generator()
            generator.manual_seed((self.config.seed or 0) + self.rank)
            options.setdefault("generator", generator)
            self.datasamplers[split] = sampler
            self.dataloaders[split] = DataLoader(dataset, sampler=sampler, drop_last=drop_last, **options)

    @property
    def mode(self) -> RunnerMode:
        """Running mode: `train`, `eval` or `inf`; setting it puts the model and the EMA in that mode.

        `train` calls `model.train()`, the others `model.eval()`, as custom loops expect.
        """
        return self._mode

    @mode.setter
    def mode(self, mode: str | RunnerMode) -> None:
        self._mode = RunnerMode(mode)
        training = self._mode is RunnerMode.train
        for module in (self.model, self.ema):
            if isinstance(module, nn.Module) and module.training != training:
                module.train(training)

    # Model

    @property
    def device(self) -> torch.device:
        """`config.device` if set; else this process's CUDA device when CUDA serves the backend; else the CPU.

        Decided once (every batch asks), after the process group is set up.
        """
        device = self.__dict__.get("_device")
        if device is None:
            configured = self.config.get("device")
            if configured is not None:
                device = torch.device(configured)
            elif torch.cuda.is_available() and (not self.distributed or dist.get_backend() == "nccl"):
                device = torch.device("cuda", du.get_local_rank() if self.distributed else torch.cuda.current_device())
            else:
                device = torch.device("cpu")
            self.__dict__["_device"] = device
        return device

    def move_to_device(self) -> None:
        """Move the model, the EMA model and the criterion (if it has state) to `device`."""
        device = self.device
        for name in ("model", "ema", "criterion"):
            module = getattr(self, name)
            if isinstance(module, nn.Module):
                module.to(device)

    def wrap_model(self) -> None:
        """Wrap the model in `DistributedDataParallel` when distributed and it has trainable parameters."""
        model = self.model
        if not self.distributed or not isinstance(model, nn.Module):
            return
        if isinstance(model, nn.parallel.DistributedDataParallel):
            return
        if not any(parameter.requires_grad for parameter in model.parameters()):
            return
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def unwrap(self, model: Any) -> Any:
        """`model` without `DistributedDataParallel`/`DataParallel` and `torch.compile` wrappers."""
        while True:
            if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
                model = model.module
            elif hasattr(model, "_orig_mod") and isinstance(model, nn.Module):
                model = model._orig_mod
            else:
                return model

    # Parallel

    @property
    def world_size(self) -> int:
        """Number of processes."""
        return du.get_world_size()

    @property
    def rank(self) -> int:
        """Process index of all processes."""
        return du.get_rank()

    @property
    def local_rank(self) -> int:
        """Process index on this node."""
        return du.get_local_rank() if self.distributed else 0

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean of `tensor` over every process."""
        return du.all_reduce_mean(tensor)

    # Training

    def train(
        self, train_splits: Sequence[str] | None = None, evaluate_splits: Sequence[str] | None = None
    ) -> NestedDict:
        """Train from `epoch_begin` to `epoch_end`, evaluating after every epoch.

        Each epoch's result `{split: {metric: value}}` is appended to `results`, printed, saved to the run
        directory and written to TensorBoard; a checkpoint is saved (`latest`, and `best` when best, unless
        `config.save_checkpoints` is off). Training stops early after `config.patience` epochs without a new
        best score, or when `iter_end`/`step_end` is reached.

        Returns:
            `results`.
        """
        train_splits = list(train_splits) if train_splits is not None else self.train_splits
        evaluate_splits = list(evaluate_splits) if evaluate_splits is not None else self.evaluate_splits
        if not train_splits:
            raise ValueError(
                f"nothing to train on: no split named train*, and train_splits is empty; splits: {self._splits()}"
            )
        missing = [split for split in [*train_splits, *evaluate_splits] if split not in self.dataloaders]
        if missing:
            raise ValueError(f"no dataloader for split(s) {missing}; there are: {list(self.dataloaders.keys())}")
        if self.config.epoch_end is None:
            raise ValueError("train needs config.epoch_end, which is not set")
        unset = [name for name in ("model", "criterion", "optimizer") if getattr(self, name) is None]
        if unset:
            raise ValueError(f"train needs {', '.join(unset)}: assign self.{unset[0]} in your runner's __init__")
        patience = self.config.get("patience")
        self.write_config_file()
        self.write_run_state("running")
        end_state = "finished"
        with PreemptionWatcher() as watcher:
            self._preemption, self._agreed_signal = watcher, None
            try:
                for epoch in range(self.config.epoch_begin, self.config.epoch_end):
                    self.config.epochs = epoch
                    result = self._epoch_result = self._resumed_partial_result(epoch)
                    for split in train_splits:
                        if split not in result:
                            result[split] = self.train_epoch(split)
                    for split in evaluate_splits:
                        result[split] = self.evaluate_epoch(split)
                    self._epoch_result = None
                    self.append_result(result, index=epoch)
                    print(self.format_epoch_result(result))
                    self.save_result()
                    for split, split_result in result.items():
                        self.write_result(split_result, f"{split}/epoch", steps=epoch)
                    self.collect_process_state()
                    if self.config.save_checkpoints:
                        self.save_checkpoint()
                    self.write_run_state("running")
                    if self._reached_end():
                        break
                    if patience and epoch - self.best_index >= patience:
                        print(f"early stop: no better {self.config.score_name} for {patience} epochs")
                        end_state = "stopped_early"
                        break
            except Preempted as preempted:
                self._record_failure("interrupted", signal=signal.Signals(preempted.signum).name)
                raise
            except KeyboardInterrupt:
                self._record_failure("interrupted", signal="SIGINT")
                raise
            except Exception as error:
                self._record_failure("crashed", error=f"{type(error).__name__}: {error}")
                raise
            else:
                self.write_run_state(end_state)
            finally:
                self._preemption = self._epoch_result = None
                if self.writer is not None:
                    self.writer.flush()
        return self.results

    def _record_failure(self, state: str, **info: Any) -> None:
        # The error that ended the run is what the user must see: a run.json that cannot be written (the disk that
        # just filled up, say) must not replace it.
        try:
            self.write_run_state(state, **info)
        except OSError as error:
            warn(f"could not record the run's state {state!r}: {error}", RuntimeWarning, stacklevel=3)

    def _resumed_partial_result(self, epoch: int) -> NestedDict:
        # Splits an interrupted epoch had already finished keep their results; the rest run as usual.
        position = self._resume_position
        if position is None or epoch != self.config.epochs:
            return NestedDict()
        return NestedDict(position.get("finished", {}))

    def _reached_end(self) -> bool:
        # Attribute reads: chanfig mirrors top-level keys as attributes, far cheaper than get() on every step.
        step_end, iter_end = self.config.step_end, self.config.iter_end
        return bool((step_end and self.config.steps >= step_end) or (iter_end and self.config.iters >= iter_end))

    def train_epoch(self, split: str = "train") -> NestedDict:
        """One pass over `split` with the model in training mode; returns the epoch result.

        When the run resumes from a checkpoint taken inside this epoch, the pass continues with the next batch
        of the same order: the sampler skips what was done (those samples are never loaded), and meters and
        metrics continue from their saved state.
        """
        loader = self.dataloaders[split]
        self.mode = RunnerMode.train
        self.split = split
        sampler = self.datasamplers.get(split) if split in self.datasamplers else getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.config.epochs)  # type: ignore[union-attr]
        done = self._resume_measures(split)
        generator = getattr(loader, "generator", None)
        self._epoch_generator_state = generator.get_state() if generator is not None else None
        batches: Iterable = loader
        if done and isinstance(sampler, TrainingSampler):
            sampler.skip(done * loader.batch_size)  # type: ignore[operator]
        elif done:
            warn(f"resuming {split!r} by loading and discarding {done} batches: its sampler cannot skip", stacklevel=2)
            batches = itertools.islice(loader, done, None)
        try:
            length = done + len(loader)
            self._epoch_length = length
            log_interval = interval(self.config.log_interval)
            for iteration, batch in enumerate(self._progress_bar(batches, split), start=done):
                self._epoch_iteration = iteration
                steps = self.config.steps
                self.train_step(batch)
                if iteration == length - 1 or (log_interval and iteration % log_interval == 0):
                    if log_interval:
                        self.step_log(split, iteration, length - 1)
                    if self.distributed:
                        self._agree_on_preemption()
                if self.config.steps != steps:
                    self._after_optimizer_step(split, iteration + 1)
                if self._reached_end():
                    break
        finally:
            self._epoch_iteration = self._epoch_length = None
            if isinstance(sampler, TrainingSampler):
                sampler.skip(0)
        return self.get_epoch_result()

    def _resume_measures(self, split: str) -> int:
        """Restore meters and metrics of an interrupted pass over `split`; return the batches it had done."""
        position, measures = self._resume_position, self._resume_state
        self._resume_position = self._resume_state = None
        if position is None or position.get("split") != split:
            self._reset_measures()
            return 0
        self._reset_measures()
        if measures:
            self.meters.load_state_dict(measures["meters"])
            metrics = self.current_metrics
            if metrics is not None and measures.get("metrics") is not None:
                metrics.load_state_dict(measures["metrics"])
        return int(position["batches"])

    def _after_optimizer_step(self, split: str, batches_done: int) -> None:
        """Save `latest` every `checkpoint_interval` steps, and stop cleanly if a preemption signal arrived."""
        period = interval(self.config.checkpoint_interval)
        periodic = bool(period and self.config.steps % period == 0 and self.config.save_checkpoints)
        signum = self._agreed_preemption_signal()
        if not periodic and signum is None:
            return
        self._position = {"split": split, "batches": batches_done, "finished": _plain_results(self._epoch_result)}
        try:
            # Every process reaches this step: the one place a mid-epoch snapshot can be gathered without a hang.
            self.collect_process_state()
            self.save_checkpoint(save_best=False)
        finally:
            self._position = None
        if signum is not None:
            path = os.path.join(self.checkpoint_dir, "latest.pth") if self.is_main_process else None
            preempted = Preempted(signum, path)
            print(str(preempted))
            raise preempted

    def _agreed_preemption_signal(self) -> int | None:
        """The preemption signal to act on at this optimizer step, if any.

        One process acts on its own flag at the next optimizer step. Several act on the signal they last agreed
        on (see `_agree_on_preemption`), which every process reaches at the same step.
        """
        watcher = self._preemption
        if watcher is None:
            return None
        return self._agreed_signal if self.distributed else watcher.received

    def _agree_on_preemption(self) -> None:
        """Let every process learn whether any of them received a preemption signal.

        A collective, so it is held only where the training loop already synchronises: on logging iterations and
        at the epoch's last one, the same iterations on every process.
        """
        watcher = self._preemption
        if watcher is None or self._agreed_signal is not None:
            return
        agreed = int(du.all_reduce_max(torch.tensor([watcher.received or 0])).item())
        self._agreed_signal = agreed or None

    def train_step(self, batch: Any) -> torch.Tensor:
        """Forward, loss and [`advance`][danling.TorchRunner.advance] on one micro-batch; returns the loss."""
        input, target = self.unpack_batch(batch)
        with self.accumulate():
            with self.autocast():
                pred = self.forward(self.model, input)
                loss = self.criterion(pred, target)  # type: ignore[misc]
            self.advance(loss)
        self._update_measures(pred, target, loss)
        return loss

    def advance(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward `loss` divided by its window's length; on the window's last micro-batch, step the optimizer.

        Windows hold `accum_steps` micro-batches, counted from the start of each epoch; the epoch's last window
        may be shorter, and its losses are divided by its own length, so every optimizer step follows the mean
        gradient over the samples of its window. Outside `train_epoch`, windows are counted on `iters`.
        """
        size, closes = self._accumulation_window()
        scaled = loss / size if size > 1 else loss
        if self.scaler is not None:
            self.scaler.scale(scaled).backward()
        else:
            scaled.backward()
        self.config.increment("iters")
        if closes:
            self.step()

    def _accumulation_window(self) -> tuple[int, bool]:
        """Length of the current micro-batch's window, and whether the micro-batch closes it."""
        accum_steps = self.config.accum_steps
        iteration, length = self._epoch_iteration, self._epoch_length
        if iteration is None or length is None:
            return accum_steps, (self.config.iters + 1) % accum_steps == 0
        start = iteration - iteration % accum_steps
        size = min(accum_steps, length - start)
        return size, iteration + 1 == start + size

    def step(self) -> None:
        """Clip, step the optimizer, zero gradients, update EMA, step the scheduler; `steps += 1`."""
        optimizer: Any = self.optimizer
        max_grad_value, max_grad_norm = self.config.max_grad_value, self.config.max_grad_norm
        if max_grad_value is not None or max_grad_norm is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            parameters = [p for group in optimizer.param_groups for p in group["params"]]  # type: ignore[union-attr]
            if max_grad_value is not None:
                nn.utils.clip_grad_value_(parameters, max_grad_value)
            if max_grad_norm is not None:
                nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()  # type: ignore[union-attr]
        optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
        ema: Any = self.ema
        if ema is not None:
            update = getattr(ema, "update_parameters", None) or ema.update
            update(self.unwrap(self.model))
        if self.scheduler is not None:
            self.scheduler.step()
        self.config.increment("steps")

    def accumulate(self) -> Any:
        """`model.no_sync()` on micro-batches that do not close an accumulation window, else a null context.

        Skipping the gradient all-reduce there is what makes accumulation cheap under DDP.
        """
        model: Any = self.model
        if self.config.accum_steps > 1 and hasattr(model, "no_sync") and not self._accumulation_window()[1]:
            return model.no_sync()
        return nullcontext()

    def autocast(self) -> Any:
        """`torch.autocast` on `device` for `config.precision` of `fp16`/`bf16`; a null context otherwise."""
        precision = self.config.precision
        if precision is None or precision == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AUTOCAST_DTYPES[precision])

    # Evaluation and inference

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
        for iteration, batch in enumerate(self._progress_bar(loader, split)):
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

        Unwrapped because DDP's forward may broadcast buffers, a collective that would hang when processes
        evaluate different numbers of batches.
        """
        if self.model is None:
            raise ValueError("there is no model to evaluate: assign self.model in your runner's __init__")
        return self.unwrap(self.ema if self.ema is not None else self.model)

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
        for batch in self._progress_bar(self.dataloaders[split], split):
            input, _ = self.unpack_batch(batch)
            with self.autocast():
                outputs.append(self.forward(model, input))
        if outputs and all(isinstance(output, torch.Tensor) for output in outputs):
            return du.gather_tensor(torch.cat(outputs))
        gathered = du.all_gather_object(outputs)
        return [output for chunk in gathered for output in chunk]

    # Batches

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

    # Measures

    def _reset_measures(self) -> None:
        self.meters.reset()
        metrics = self.current_metrics
        if metrics is not None:
            metrics.reset()

    def _update_measures(self, pred: Any, target: Any, loss: torch.Tensor | None) -> None:
        if loss is not None:
            self.meters.update(loss=(loss.detach(), _batch_length(target, pred)))
        metrics = self.current_metrics
        if metrics is not None and target is not None:
            metrics.update(_detach(pred), target)

    def get_step_result(self) -> NestedDict:
        """Meters' last values (the mean over processes when training) merged with the metrics on the last batch.

        Evaluation logs local values only: processes may evaluate different numbers of batches, so a collective
        there could hang.
        """
        from .results import merge_metric_result

        training = self._mode is RunnerMode.train
        result = NestedDict(self.meters.batch() if training else self.meters.value())
        metrics = self.current_metrics
        if metrics is None:
            return result
        local = not training and isinstance(metrics, (Metrics, MultiTaskMetrics))
        return merge_metric_result(result, metrics.value(sync=False) if local else metrics.value())

    def _progress_bar(self, loader: Iterable, split: str) -> Iterable:
        if not (self.config.progress and self.is_main_process and sys.stdout.isatty()):
            return loader
        from tqdm.auto import tqdm

        return tqdm(loader, desc=f"{self.mode} {split}", leave=False, dynamic_ncols=True)

    # State

    def stateful_parts(self) -> dict[str, Any]:
        """Model (unwrapped), EMA, optimizer, scheduler and the fp16 grad scaler."""
        return {**super().stateful_parts(), "scaler": self.scaler}

    def collect_process_state(self) -> None:
        """Snapshot what every process holds on its own, for the checkpoints saved until the next snapshot.

        Collective when distributed: the training loop calls it where every process already is (each epoch's end,
        and the optimizer step a mid-epoch checkpoint is taken at), so that `save_checkpoint` never needs one.
        """
        local = self._local_process_state()
        self._process_states = du.all_gather_object(local) if self.distributed else [local]

    def _local_process_state(self) -> dict[str, Any]:
        """This process's random generators and loader generators, and inside an epoch its meters and metrics."""
        rng = get_rng_state()
        rng["dataloaders"] = {}
        for split, loader in self.dataloaders.items():
            generator = getattr(loader, "generator", None)
            if generator is not None:
                # Inside an epoch, the state from before the epoch began: resuming re-creates the epoch's iterator.
                inside = self._position is not None and self._position["split"] == split
                rng["dataloaders"][split] = self._epoch_generator_state if inside else generator.get_state()
        state: dict[str, Any] = {"iters": self.config.iters, "rng": rng}
        if self._position is not None:
            metrics = self.current_metrics
            state["measures"] = {
                "meters": self.meters.state_dict(),
                "metrics": metrics.state_dict() if metrics is not None else None,
            }
        return state

    def state_dict(self, cls: Any = dict) -> Any:
        """Config, results and every part's state, plus what each process holds on its own.

        `rng` lists every process's random generator states, by rank. A checkpoint taken inside an epoch also
        holds its `position` (split, batches done, results of splits already finished) and, by rank, the meters
        and metrics accumulated so far, so the resumed epoch ends with the same numbers.

        Never collective. This process's entries are its current state; the other processes' come from the last
        snapshot (`collect_process_state`) if it was taken at the current iteration, and are `None` otherwise.
        """
        state = dict(super().state_dict())
        world_size, iters = self.world_size, self.config.iters
        snapshot = self._process_states
        if snapshot is None or len(snapshot) != world_size:
            snapshot = [None] * world_size
        entries = [entry if entry is not None and entry["iters"] == iters else None for entry in snapshot]
        entries[self.rank] = self._local_process_state()
        state["rng"] = [entry["rng"] if entry is not None else None for entry in entries]
        if self._position is not None:
            state["position"] = self._position
            state["measures"] = [entry.get("measures") if entry is not None else None for entry in entries]
        return cls(state)

    def load_state_dict(self, checkpoint: Mapping) -> None:
        """Restore every part, results, progress, and this process's random generators and measures.

        Per-process state is taken from the entry of this rank; a checkpoint written by a different number of
        processes restores the shared state and warns that the per-process state does not carry over.
        """
        super().load_state_dict(checkpoint)
        rank, world_size = self.rank, self.world_size
        for key in ("rng", "measures"):
            entries = checkpoint.get(key)
            if entries is None:
                continue
            if isinstance(entries, Mapping):  # a single process's state, as older checkpoints hold it
                entries = [entries]
            if len(entries) != world_size:
                warn(
                    f"checkpoint {key} comes from {len(entries)} process(es), this run has {world_size}: not restored",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            if entries[rank] is None:
                # Saved away from the loop's snapshots (a manual save on one process): nothing of this rank's.
                warn(f"checkpoint holds no {key} of process {rank}: not restored", RuntimeWarning, stacklevel=2)
                continue
            if key == "rng":
                set_rng_state(entries[rank])
                for split, generator_state in entries[rank].get("dataloaders", {}).items():
                    generator = getattr(self.dataloaders.get(split), "generator", None)
                    if generator is not None and generator_state is not None:
                        generator.set_state(generator_state)
            else:
                self._resume_state = entries[rank]


def _release_process_group_users() -> None:
    """Unwrap the DDP models of live runners: a DDP wrapper keeps the process group alive past its destruction."""
    for runner in list(_DISTRIBUTED_RUNNERS):
        model = runner.__dict__.get("model")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            runner.__dict__["model"] = model.module


def to_device(data: Any, device: torch.device) -> Any:
    """Move tensors in `data` (nested in mappings, lists and tuples) to `device`."""
    if isinstance(data, torch.Tensor):
        # Comparing devices is cheaper than a no-op `.to()`, and this runs on every batch.
        return data if data.device == device else data.to(device, non_blocking=True)
    if isinstance(data, Mapping):
        return {key: to_device(value, device) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(to_device(value, device) for value in data)
    return data


def seed_worker(worker_id: int) -> None:
    """Seed Python and NumPy in a DataLoader worker from the seed torch gave it."""
    seed_everything(torch.initial_seed() % 2**32, torch=False)


def _batch_length(target: Any, pred: Any) -> int:
    for value in (target, pred):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
        if isinstance(value, (list, tuple)) and value:
            return len(value)
    return 1


def _plain_results(result: Mapping | None) -> dict[str, Any]:
    if not result:
        return {}
    return {split: value.dict() if hasattr(value, "dict") else dict(value) for split, value in result.items()}


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, Mapping):
        return {key: _detach(item) for key, item in value.items()}
    return value
