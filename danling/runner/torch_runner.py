"""`TorchRunner`: training, evaluation and inference with PyTorch, on one process or many."""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import distributed as dist
from torch import nn

from ..utils import distributed as du
from ..utils.seed import seed_everything
from .base_runner import BaseRunner
from .compiling import compile_forward, compile_options, compile_seconds
from .config import default_log_interval
from .data import DataMixin, to_device
from .ema import broadcast_ema, ema_module
from .evaluation import EvaluationLoop
from .meta import RunnerMode
from .state import ProcessStateMixin
from .training import TrainingLoop

__all__ = ["TorchRunner", "to_device"]

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
"""Autocast dtype for each reduced `Config.precision`."""

# What a plain step stands for: a subclass that overrides any of them (a backend, a user's runner) steps in full.
_PLAIN_STEP_METHODS = (
    "train_step",
    "advance",
    "scale_loss",
    "step",
    "backward",
    "clip_gradients",
    "optimizer_step",
    "update_ema",
    "accumulate",
    "autocast",
    "unpack_batch",
    "forward",
    "_update_measures",
)

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
    writes_checkpoints_in_background: bool = True
    """Whether the backend supports `config.async_checkpoint`; one that does not refuses it at construction."""

    def __init__(self, config: Mapping) -> None:
        # Before anything is set up: a runner of one platform must not quietly run a config asking for another.
        _check_platform_runner(type(self), config.get("platform") or "auto")
        if config.get("async_checkpoint") and not self.writes_checkpoints_in_background:
            raise ValueError(
                f"config.async_checkpoint is not supported by {type(self).__name__}: its engine writes its own "
                "checkpoints, synchronously; set async_checkpoint to False, or use platform 'torch' or 'fsdp'"
            )
        super().__init__(config)

    def __post_init__(self) -> None:
        self.init_environment()
        self.build_dataloaders()
        self.move_to_device()
        self.init_precision()
        self.restore_and_wrap()
        if self.config.get("log_interval") is None and self.dataloaders:
            # Bounded per pass and, for a run of many epochs, in all; an explicit value of 0 or below turns lines off.
            longest = max(len(loader) for loader in self.dataloaders.values())
            self.config.log_interval = default_log_interval(longest, self._planned_iters())

    def _planned_iters(self) -> int | None:
        """Micro-batches the whole run trains, or `None` when nothing bounds it (no `*_end` set)."""
        if self.config.get("iter_end") or self.config.get("epoch_end"):
            return self.total_iters
        step_end = self.config.get("step_end")
        return step_end * self.accum_steps if step_end else None

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
        self.compile_model()

    def compile_model(self) -> None:
        """Compile the model as `config.compile` asks (off by default), in place, once it is wrapped.

        The `forward` of each of [`compile_targets`][danling.TorchRunner.compile_targets] is compiled (see
        [`compile_forward`][danling.runner.compiling.compile_forward]): the model keeps its class and its state dict
        keys, and its wrappers' hooks run as they do uncompiled. The EMA and its update are never compiled.

        Raises:
            ValueError: If `config.compile` is not a bool or a mapping of `torch.compile` options.
        """
        options = compile_options(self.config.get("compile"))
        if options is None or not isinstance(self.model, nn.Module):
            return
        for module in self.compile_targets():
            compile_forward(module, options)
        self.__dict__["_compile_seconds_before"] = compile_seconds()

    def append_result(self, result: Mapping, index: int | None = None) -> None:
        super().append_result(result, index)
        before = self.__dict__.pop("_compile_seconds_before", None)
        if before is not None:
            # Once, with the first result: the graphs of training and evaluation are compiled by then.
            print(f"torch.compile: {compile_seconds() - before:.1f} s spent compiling the model up to its first result")

    def compile_targets(self) -> list[nn.Module]:
        """The modules whose `forward` `compile_model` compiles: the model inside its wrappers (DDP's forward runs
        as usual, and dynamo splits the graph at its buckets, since it sees DDP's forward calling the model)."""
        module = self.unwrap(self.model)
        return [module] if isinstance(module, nn.Module) else []

    # Environment

    def init_distributed(self) -> None:
        """Join (or start) the process group `torchrun` describes, and agree on the timestamp.

        The backend is `config.backend`, else `gloo` when `config.device` is the CPU, else `nccl` when CUDA is
        available and `gloo` otherwise; `init_method`, `world_size` and `rank` come from the config, else from the
        environment `torchrun` sets. On `nccl`, this process's GPU ([`device`][danling.TorchRunner.device]) becomes
        the current CUDA device before the first collective, whoever created the group, so no two processes talk
        through the same GPU. A collective that waits longer than `config.timeout` seconds for another process
        raises instead of waiting forever; a group whose processes fail to connect is tried again (see
        [`init_process_group`][danling.utils.distributed.init_process_group]).
        """
        world_size = int(self.config.get("world_size") or os.environ.get("WORLD_SIZE", "1"))
        if not dist.is_available():
            return
        if world_size <= 1 and not dist.is_initialized():
            if self.needs_process_group:
                backend = self.process_group_backend()
                dist.init_process_group(
                    backend, store=dist.HashStore(), rank=0, world_size=1, **self._process_group_device(backend)
                )
                self.config.backend = backend
                du.destroy_process_group_at_exit(release=_release_process_group_users)
                self.select_cuda_device()
            return
        if not dist.is_initialized():
            backend = self.process_group_backend()
            rank = self.config.get("rank")
            # Retried when its processes fail to connect (a restarted worker meeting what a killed one left behind).
            du.init_process_group(
                backend,
                init_method=self.config.get("init_method"),
                world_size=world_size,
                rank=int(rank if rank is not None else os.environ.get("RANK", "0")),
                timeout=self.config.get("timeout"),
                **self._process_group_device(backend),
            )
            # Created here, so torn down here when the interpreter exits, whatever the user's script does.
            du.destroy_process_group_at_exit(release=_release_process_group_users)
        _DISTRIBUTED_RUNNERS.add(self)
        self.config.backend = dist.get_backend()
        self.select_cuda_device()
        self.timestamp = du.broadcast_object(self.timestamp)

    def _process_group_device(self, backend: str) -> dict[str, Any]:
        # NCCL binds its communicator to the GPU named here (and connects eagerly): this process's own.
        if backend != "nccl":
            return {}
        device = self._choose_device(nccl=True)
        torch.cuda.set_device(device)
        return {"device_id": device}

    def select_cuda_device(self) -> None:
        """Make [`device`][danling.TorchRunner.device] the current CUDA device when it is a GPU.

        Collectives on `nccl`, `torch.cuda` calls without a device, and engines that read the current device (FSDP,
        the grad scaler) then all use this process's GPU, not `cuda:0`.
        """
        device = self.device
        if device.type == "cuda":
            torch.cuda.set_device(device)

    def release_process_group(self) -> None:
        """Drop the DDP wrapper, which keeps the process group alive past its destruction; called at exit."""
        model = self.__dict__.get("model")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            self.__dict__["model"] = model.module

    def process_group_backend(self) -> str:
        """The backend of a process group this runner creates: `config.backend`; else `gloo` when `config.device` is
        the CPU; else `nccl` on CUDA, `gloo` otherwise."""
        backend = self.config.get("backend")
        if backend:
            return backend
        configured = self.config.get("device")
        if configured is not None and torch.device(configured).type == "cpu":
            return "gloo"
        return "nccl" if torch.cuda.is_available() else "gloo"

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
        for module in (self.model, ema_module(self.ema)):
            # A wrapper's own flag may not follow its module's (DeepSpeed's engine never sets it): ask both.
            if isinstance(module, nn.Module) and (
                module.training != training or self.unwrap(module).training != training
            ):
                module.train(training)

    # Model

    @property
    def device(self) -> torch.device:
        """`config.device` if set; else this process's CUDA device when CUDA serves the backend; else the CPU.

        A CUDA device without an index (`config.device="cuda"`) is this process's GPU: `cuda:{local_rank}` under
        `torchrun`. Decided once (every batch asks), after the process group is set up.
        """
        device = self.__dict__.get("_device")
        if device is None:
            nccl = self.distributed and dist.get_backend() == "nccl"
            device = self.__dict__["_device"] = self._choose_device(nccl=nccl)
        return device

    def _choose_device(self, nccl: bool) -> torch.device:
        configured = self.config.get("device")
        if configured is not None:
            device = torch.device(configured)
        elif torch.cuda.is_available() and (nccl or not self.distributed):
            device = torch.device("cuda")
        else:
            return torch.device("cpu")
        if device.type == "cuda" and device.index is None:
            on_many = nccl or self.distributed or "LOCAL_RANK" in os.environ
            device = torch.device("cuda", du.get_local_rank() if on_many else torch.cuda.current_device())
        return device

    def move_to_device(self) -> None:
        """Move the model, the EMA's module and the criterion (if it has state) to `device`."""
        device = self.device
        for module in (self.model, ema_module(self.ema), self.criterion):
            if isinstance(module, nn.Module):
                module.to(device)

    def wrap_model(self) -> None:
        """Wrap the model in `DistributedDataParallel` when distributed and it has trainable parameters.

        DDP starts every process from rank 0's weights; the EMA is given rank 0's too (see `broadcast_ema`).
        """
        model = self.model
        if not self.distributed or not isinstance(model, nn.Module):
            return
        if isinstance(model, nn.parallel.DistributedDataParallel):
            return
        self.broadcast_ema()
        if not any(parameter.requires_grad for parameter in model.parameters()):
            return
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def broadcast_ema(self) -> None:
        """Give every process rank 0's EMA (parameters and buffers), as the model gets rank 0's when it is wrapped.

        Processes seed differently, so each builds its EMA from other weights; every backend calls this when it
        wraps the model. A no-op on one process or without an EMA.
        """
        broadcast_ema(self.ema)

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

    def plain_steps(self) -> bool:
        """Whether the coming pass's steps are plain (no grad scaler, clipping, EMA, autocast; `accum_steps` 1) and
        run by this class's own step methods, none overridden: then the loop skips asking about each of them."""
        config = self.config
        if (
            self.scaler is not None
            or self.ema is not None
            or config.accum_steps != 1
            or config.max_grad_norm is not None
            or config.max_grad_value is not None
            or config.precision not in (None, "fp32")
        ):
            return False
        cls = type(self)
        return all(getattr(cls, name) is getattr(TorchRunner, name) for name in _PLAIN_STEP_METHODS)

    # State

    def stateful_parts(self) -> dict[str, Any]:
        """Model (unwrapped), EMA, optimizer, scheduler and the fp16 grad scaler."""
        return {**super().stateful_parts(), "scaler": self.scaler}


def _check_platform_runner(cls: type, platform: str) -> None:
    """Raise unless `cls` runs `platform`: `auto`/`torch` run on any runner, another platform on its own runner.

    Raises:
        ValueError: `platform` is unknown, or `cls` is not the platform's runner (nor a subclass of it).
    """
    from .runner import PLATFORM_RUNNERS  # runner.py imports this module

    if platform not in PLATFORM_RUNNERS:
        raise ValueError(f"unknown platform {platform!r}; expected one of: {', '.join(PLATFORM_RUNNERS)}")
    if platform in ("auto", "torch"):
        return
    # By name, so asking does not import the platform's package (accelerate, deepspeed).
    bases = [f"{base.__module__}:{base.__qualname__}" for base in cls.__mro__]
    if PLATFORM_RUNNERS[platform] in bases:
        return
    platforms = {path: name for name, path in PLATFORM_RUNNERS.items() if name != "auto"}
    runs = next(path for path in bases if path in platforms)  # the most derived platform runner
    raise ValueError(
        f"config.platform is {platform!r}, but {cls.__name__} subclasses {runs.rsplit(':', 1)[1]}, which runs "
        f"platform {platforms[runs]!r}: subclass danling.Runner, which runs the platform config.platform names "
        f"(or {PLATFORM_RUNNERS[platform].replace(':', '.')})"
    )


def _release_process_group_users() -> None:
    """Let every live runner drop what keeps the process group alive past its destruction (a DDP wrapper)."""
    for runner in list(_DISTRIBUTED_RUNNERS):
        runner.release_process_group()
