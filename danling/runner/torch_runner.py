"""`TorchRunner`: training, evaluation and inference with PyTorch, on one process or many."""

from __future__ import annotations

import os
import weakref
from contextlib import nullcontext
from typing import Any

import torch
from torch import distributed as dist
from torch import nn

from ..utils import distributed as du
from ..utils.seed import seed_everything
from .base_runner import BaseRunner
from .data import DataMixin, to_device
from .evaluation import EvaluationLoop
from .meta import RunnerMode
from .state import ProcessStateMixin
from .training import TrainingLoop

__all__ = ["TorchRunner", "to_device"]

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
"""Autocast dtype for each reduced `Config.precision`."""

# Runners on several processes, whose DDP wrappers are dropped before the process group is torn down at exit.
_DISTRIBUTED_RUNNERS: weakref.WeakSet = weakref.WeakSet()


class TorchRunner(TrainingLoop, EvaluationLoop, ProcessStateMixin, DataMixin, BaseRunner):
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
        training on train [1/8]	loss: ...
        epoch [4/4]	train: loss: ...
        >>> results[4]["train"]["loss"] < results[0]["train"]["loss"]
        True
    """

    model: nn.Module | None = None
    scaler: torch.amp.GradScaler | None = None
    needs_process_group: bool = False
    """Whether the backend needs a process group on one process too (FSDP, DeepSpeed): one of one is made."""
    wraps_before_restore: bool = False
    """Whether a checkpoint loads into the wrapped model, so wrapping comes first (see `restore_and_wrap`)."""

    def __post_init__(self) -> None:
        self.init_environment()
        self.build_dataloaders()
        self.move_to_device()
        self.init_precision()
        self.restore_and_wrap()
        if self.config.get("log_interval") is None and self.dataloaders:
            # About ten lines per epoch; an explicit value of 0 or below turns the lines off.
            self.config.log_interval = max(1, max(len(loader) for loader in self.dataloaders.values()) // 10)

    def restore_and_wrap(self) -> None:
        """Restore the checkpoint given at construction, then wrap the model (DDP takes the restored weights).

        A backend with `wraps_before_restore` wraps first: its checkpoint loads into the wrapped model (FSDP's
        shards, DeepSpeed's engine).
        """
        if self.wraps_before_restore:
            self.wrap_model()
            self.restore_checkpoint()
        else:
            self.restore_checkpoint()
            self.wrap_model()

    # Environment

    def init_distributed(self) -> None:
        """Join (or start) the process group `torchrun` describes, and agree on the timestamp.

        The backend is `config.backend`, else `nccl` when CUDA is available and `gloo` otherwise; `init_method`,
        `world_size` and `rank` come from the config, else from the environment `torchrun` sets.
        """
        world_size = int(self.config.get("world_size") or os.environ.get("WORLD_SIZE", "1"))
        if not dist.is_available():
            return
        if world_size <= 1 and not dist.is_initialized():
            if self.needs_process_group:
                backend = self.process_group_backend()
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
                self.config.backend = backend
                du.destroy_process_group_at_exit(release=_release_process_group_users)
            return
        if not dist.is_initialized():
            backend = self.process_group_backend()
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

    def release_process_group(self) -> None:
        """Drop the DDP wrapper, which keeps the process group alive past its destruction; called at exit."""
        model = self.__dict__.get("model")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            self.__dict__["model"] = model.module

    def process_group_backend(self) -> str:
        """The backend of a process group this runner creates: `config.backend`, else `nccl` on CUDA, else `gloo`.

        A `config.device` other than CUDA (`"cpu"` on a GPU machine) gets `gloo`, which serves CPU tensors. For
        `nccl`, this process's GPU (by local rank) becomes the current device first.
        """
        configured = self.config.get("device")
        on_cuda = torch.cuda.is_available() and (configured is None or torch.device(configured).type == "cuda")
        backend = self.config.get("backend") or ("nccl" if on_cuda else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(du.get_local_rank())
        return backend

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
            # A wrapper's own flag may not follow its module's (DeepSpeed's engine never sets it): ask both.
            if isinstance(module, nn.Module) and (
                module.training != training or self.unwrap(module).training != training
            ):
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

    # Backend: what the loops call, which another backend (FSDP, DeepSpeed, ...) overrides

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate `loss` (scaled by the fp16 `GradScaler`, when there is one)."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def clip_gradients(self) -> None:
        """Clip gradients by value (`config.max_grad_value`) and by global norm (`config.max_grad_norm`), if set."""
        max_grad_value, max_grad_norm = self.config.max_grad_value, self.config.max_grad_norm
        if max_grad_value is None and max_grad_norm is None:
            return
        optimizer: Any = self.optimizer
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        if max_grad_value is not None:
            nn.utils.clip_grad_value_(parameters, max_grad_value)
        if max_grad_norm is not None:
            self.clip_grad_norm(parameters, max_grad_norm)

    def clip_grad_norm(self, parameters: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        """Scale the gradients of `parameters` so their global norm is at most `max_norm`; return the norm."""
        return nn.utils.clip_grad_norm_(parameters, max_norm)

    def optimizer_step(self) -> None:
        """Step the optimizer (through the `GradScaler`, when there is one) and zero the gradients."""
        optimizer: Any = self.optimizer
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def update_ema(self) -> None:
        """Update the EMA from the model's current weights."""
        ema: Any = self.ema
        update = getattr(ema, "update_parameters", None) or ema.update
        update(self.unwrap(self.model))

    def accumulate(self) -> Any:
        """`model.no_sync()` on micro-batches that do not close an accumulation window, else a null context.

        Skipping the gradient all-reduce there is what makes accumulation cheap under DDP.
        """
        model: Any = self.model
        if self.config.accum_steps > 1 and hasattr(model, "no_sync") and not self._accumulation_window()[1]:
            return model.no_sync()
        return nullcontext()

    def evaluation_context(self, model: nn.Module) -> Any:
        """Entered around an evaluation or inference pass with `model`: nothing to do for DDP.

        Processes may run different numbers of evaluation batches, so a backend whose forward is collective (FSDP)
        must make it local here.
        """
        return nullcontext()

    def autocast(self) -> Any:
        """`torch.autocast` on `device` for `config.precision` of `fp16`/`bf16`; a null context otherwise."""
        precision = self.config.precision
        if precision is None or precision == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AUTOCAST_DTYPES[precision])

    # State

    def stateful_parts(self) -> dict[str, Any]:
        """Model (unwrapped), EMA, optimizer, scheduler and the fp16 grad scaler."""
        return {**super().stateful_parts(), "scaler": self.scaler}


def _release_process_group_users() -> None:
    """Let every live runner drop what keeps the process group alive past its destruction (a DDP wrapper)."""
    for runner in list(_DISTRIBUTED_RUNNERS):
        runner.release_process_group()
