"""`AccelerateRunner`: the loops of `TorchRunner` on Hugging Face Accelerate (data parallel).

Imported only when `config.platform` is `"accelerate"` (or this module is imported): `import danling` never imports
`accelerate`. Install it with `pip install 'danling[accelerate]'`.

The `Accelerator` is built from the config (`precision` is its `mixed_precision`, `accum_steps` its
`gradient_accumulation_steps`) and prepares the model, the optimizer and the scheduler. The loops call
`accelerator.backward`, `accelerator.accumulate`, `accelerator.clip_grad_norm_` / `clip_grad_value_` and, in
`infer`, `accelerator.gather_for_metrics`.

The dataloaders are not prepared: the runner's samplers already split the data across processes, in an order fixed
by seed, epoch and samples consumed, which is what makes resume exact (see the guide for why Accelerate's sharding,
padding and `set_epoch` are left out).

A checkpoint is a directory under `checkpoint_dir/accelerate/`, written by the main process only: what
`accelerator.save_state` writes (`model.pth`, the unwrapped weights as a plain file; optimizer, scheduler, grad
scaler, the main process's random state), then `runner.pth` (config, results, EMA, every process's random and loader
state, and the size of each file above), last. Only then is `latest.accelerate` (a small JSON file, replaced
atomically) pointed at it; `best` and `epoch-N` are pointers too. Directories no pointer names are deleted after the
switch: a save killed part-way leaves `latest` on the previous checkpoint, and the next save removes its remains.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.scheduler import AcceleratedScheduler
from torch import distributed as dist
from torch import nn

from ..runs import CHECKPOINT_EXTENSIONS
from ..utils import distributed as du
from ..utils.io import CorruptFileError, fsync_dir, load, remove_stale_temporaries, save
from .checkpoint import CheckpointLike
from .pointers import PointedCheckpoints, durable_size, resolve_checkpoint
from .torch_runner import _DISTRIBUTED_RUNNERS, TorchRunner, _release_process_group_users

__all__ = ["MIXED_PRECISION", "AccelerateRunner"]

MIXED_PRECISION = {None: "no", "fp32": "no", "fp16": "fp16", "bf16": "bf16"}
"""Accelerate's `mixed_precision` for each `Config.precision`."""

POINTER_EXTENSION = CHECKPOINT_EXTENSIONS["accelerate"]
STATES_DIR_NAME = "accelerate"
RUN_STATE_FILE = "runner.pth"
WEIGHTS_FILE = "model.pth"

# Accelerate modes that are not data parallel, and the platform that runs each, where there is one.
UNSUPPORTED_MODES = {"DEEPSPEED": "deepspeed", "FSDP": "fsdp", "MEGATRON_LM": None, "XLA": None}

# Runners on several processes, whose DDP wrappers are dropped before the process group is torn down at exit.


class AccelerateRunner(PointedCheckpoints, TorchRunner):
    """`TorchRunner` on an `Accelerator`: the same runner code, launched with `torchrun` or `accelerate launch`.

    Assign the model, criterion, optimizer, scheduler, EMA and datasets in `__init__` as for `TorchRunner`.
    `__post_init__` builds the [`accelerator`][danling.runner.accelerate_runner.AccelerateRunner.accelerator] from
    the final config and prepares the model (DDP when several processes run), optimizer and scheduler with it. The
    scheduler steps once per optimizer step, as under `TorchRunner`, whatever the accumulation and the number of
    processes. Override `accelerator_options` to pass more arguments to `Accelerator` (kwargs handlers, say).

    Data parallel only: an Accelerate configuration for DeepSpeed, FSDP, Megatron-LM or TPUs raises `ValueError`
    (use the `deepspeed` or `fsdp` platform). The device is the one Accelerate chooses; `config.device` may only
    name it (or be `"cpu"`, which asks Accelerate for the CPU).
    """

    checkpoint_extension = POINTER_EXTENSION
    writes_checkpoints_in_background = False  # Accelerate's own checkpoint writer has no background mode here
    checkpoint_states_dir = STATES_DIR_NAME
    _prepared: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.__dict__["_accelerator"] = self.build_accelerator()
        super().__post_init__()

    # Environment

    def init_distributed(self) -> None:
        """Set up Accelerate's process state (joining the process group `torchrun` describes) and agree on the time.

        With no GPU (or another accelerator), Accelerate is asked for the CPU, so that several processes train
        with `gloo` instead of each running alone. `config.backend` and `config.init_method` go to the process
        group Accelerate makes for a launch (`torchrun`, `accelerate launch`); a plain process has none.
        """
        options: dict[str, Any] = {"cpu": self._on_cpu()}
        expected = int(os.environ.get("WORLD_SIZE", "1"))
        # Accelerate makes a process group only when a launcher set the environment (LOCAL_RANK, WORLD_SIZE), but
        # takes a backend given without one for a group it then looks for: `backend: gloo` on one plain process
        # failed with "Default process group has not been initialized". Without a group, as under TorchRunner, the
        # backend and init method have nothing to set up.
        if expected > 1 or "LOCAL_RANK" in os.environ:
            for key in ("backend", "init_method"):
                if self.config.get(key) is not None:
                    options[key] = self.config[key]
        state = PartialState(**options)
        if state.num_processes != expected:
            raise RuntimeError(
                f"WORLD_SIZE is {expected}, but Accelerate set up {state.num_processes} process(es) on "
                f"{state.device}: it found no distributed backend for this device"
            )
        configured = self.config.get("device")
        if configured is not None and configured != "cpu":
            wanted = torch.device(configured)
            if wanted.type != state.device.type or wanted.index not in (None, state.device.index):
                raise ValueError(
                    f"config.device is {configured!r}, but Accelerate runs this process on {state.device}; leave "
                    "config.device unset (set CUDA_VISIBLE_DEVICES or ACCELERATE_TORCH_DEVICE instead), or 'cpu'"
                )
        if not (dist.is_available() and dist.is_initialized()):
            return
        _DISTRIBUTED_RUNNERS.add(self)
        du.destroy_process_group_at_exit(release=_release_process_group_users)
        self.config.backend = dist.get_backend()
        self.timestamp = du.broadcast_object(self.timestamp)

    def release_process_group(self) -> None:
        """Drop the DDP wrapper and the accelerator's references: both keep the process group alive."""
        super().release_process_group()
        accelerator = self.__dict__.get("_accelerator")
        if accelerator is not None:
            accelerator.free_memory()

    def _on_cpu(self) -> bool:
        return self.config.get("device") == "cpu" or not _has_accelerator()

    def accelerator_options(self) -> dict[str, Any]:
        """Arguments of `Accelerator`: precision, accumulation, CPU, and a scheduler stepped by the loop alone.

        Accelerate's prepared scheduler steps once per process at each optimizer step by default, as if every
        process had its own schedule; `step_scheduler_with_optimizer=False` leaves stepping to the loop.
        """
        return {
            "mixed_precision": MIXED_PRECISION[self.config.precision],
            "gradient_accumulation_steps": self.config.accum_steps,
            "cpu": self._on_cpu(),
            "step_scheduler_with_optimizer": False,
        }

    def build_accelerator(self) -> Accelerator:
        """The `Accelerator` for this run, checked against the config.

        Raises:
            ValueError: Accelerate cannot run this config, or is configured for a mode other than data parallel, or
                `ACCELERATE_GRADIENT_ACCUMULATION_STEPS` disagrees with `config.accum_steps`.
        """
        options = self.accelerator_options()
        try:
            accelerator = Accelerator(**options)
        except ValueError as error:  # Accelerate's own message, with the config values it came from
            raise ValueError(
                f"cannot build an Accelerator for precision={self.config.precision!r}, "
                f"accum_steps={self.config.accum_steps}: {error}"
            ) from error
        mode = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
        if mode in UNSUPPORTED_MODES or getattr(accelerator, "parallelism_config", None) is not None:
            platform = UNSUPPORTED_MODES.get(mode)
            instead = f"; use platform {platform!r} for it" if platform else ""
            raise ValueError(
                f"Accelerate is configured for {mode} (by `accelerate config`/`accelerate launch` or ACCELERATE_* "
                f"environment variables), but the accelerate platform runs data parallel training only{instead}"
            )
        if accelerator.gradient_accumulation_steps != self.config.accum_steps:
            raise ValueError(
                f"Accelerate accumulates {accelerator.gradient_accumulation_steps} micro-batches (from "
                f"ACCELERATE_GRADIENT_ACCUMULATION_STEPS), config.accum_steps is {self.config.accum_steps}: set "
                "config.accum_steps instead"
            )
        accelerator.register_save_state_pre_hook(self._save_unwrapped_weights)
        accelerator.register_load_state_pre_hook(self._load_unwrapped_weights)
        return accelerator

    @property
    def accelerator(self) -> Accelerator:
        """The `Accelerator`, built by `__post_init__` from the final config.

        Raises:
            RuntimeError: When read before `__post_init__` (in `__init__`, say).
        """
        accelerator = self.__dict__.get("_accelerator")
        if accelerator is None:
            raise RuntimeError("the Accelerator is built in __post_init__, after __init__: use it from there on")
        return accelerator

    def init_precision(self) -> None:
        """Nothing to do: Accelerate keeps its own grad scaler for fp16 on GPUs."""

    @property
    def device(self) -> torch.device:
        """The device Accelerate runs this process on (plain `cpu` for Accelerate's `cpu:0`)."""
        device = self.__dict__.get("_device")
        if device is None:
            accelerator = self.__dict__.get("_accelerator")
            device = accelerator.device if accelerator is not None else PartialState().device
            if device.type == "cpu":
                device = torch.device("cpu")  # `map_location="cpu:0"` fails, and batches on `cpu` would be copied
            if accelerator is not None:  # decided once (every batch asks)
                self.__dict__["_device"] = device
        return device

    # Model

    def restore_and_wrap(self) -> None:
        """Prepare first, then restore the checkpoint: `accelerator.load_state` loads into what it prepared."""
        self.wrap_model()
        self.restore_checkpoint()

    def wrap_model(self) -> None:
        """Prepare the model (if it has trainable parameters), the optimizer and the scheduler; give every process
        rank 0's EMA, as DDP gives it rank 0's model."""
        if self._prepared:
            return
        self.broadcast_ema()
        candidates = {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}
        model = self.model
        if not isinstance(model, nn.Module) or not any(p.requires_grad for p in model.parameters()):
            del candidates["model"]  # nothing to train: DDP refuses such a model, and evaluation needs no wrapper
        names = [name for name, part in candidates.items() if part is not None]
        prepared = self.accelerator.prepare(*(candidates[name] for name in names))
        prepared = prepared if len(names) > 1 else (prepared,)
        for name, part in zip(names, prepared):
            setattr(self, name, part)
        # Accelerate saves what it prepared; anything else (a scheduler that is not a torch LRScheduler) is ours.
        self._prepared = frozenset(
            name
            for name in names
            if name == "model" or isinstance(getattr(self, name), (AcceleratedOptimizer, AcceleratedScheduler))
        )

    # Backend

    def scale_loss(self, loss: torch.Tensor, window: int) -> torch.Tensor:
        """`loss` for `accelerator.backward`, which divides by `accum_steps`: a shorter window (an epoch's last) is
        scaled up so its losses end up divided by its own length."""
        accum_steps = self.accelerator.gradient_accumulation_steps
        return loss if window == accum_steps else loss * (accum_steps / window)

    def backward(self, loss: torch.Tensor) -> None:
        """`accelerator.backward`: divides `loss` by `accum_steps` (and scales it for fp16), then backpropagates."""
        self.accelerator.backward(loss)

    @contextmanager
    def accumulate(self) -> Iterator[None]:
        """`accelerator.accumulate(model)`, synchronising gradients on the micro-batch that closes a window.

        Accelerate counts micro-batches itself; its counter is set so that it closes a window exactly where the
        loop does (windows counted from each epoch's start, the last one possibly shorter).

        Raises:
            RuntimeError: Accelerate decided otherwise (a dataloader it prepared ended elsewhere).
        """
        accelerator = self.accelerator
        closes = self._accumulation_window()[1]
        accelerator.step = accelerator.gradient_accumulation_steps - 1 if closes else 0
        models = [self.model] if "model" in self._prepared else []
        with accelerator.accumulate(*models):
            if accelerator.sync_gradients != closes:
                raise RuntimeError(
                    f"Accelerate {'synchronises' if accelerator.sync_gradients else 'skips'} gradients at iteration "
                    f"{self.config.iters}, the runner's window says otherwise: do not prepare the dataloaders"
                )
            yield

    def clip_gradients(self) -> None:
        """Clip by value and by global norm through the accelerator (which unscales fp16 gradients first)."""
        max_grad_value, max_grad_norm = self.config.max_grad_value, self.config.max_grad_norm
        if max_grad_value is None and max_grad_norm is None:
            return
        optimizer: Any = self.optimizer
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        if max_grad_value is not None:
            self.accelerator.clip_grad_value_(parameters, max_grad_value)
        if max_grad_norm is not None and max_grad_value is not None:
            nn.utils.clip_grad_norm_(parameters, max_grad_norm)  # unscaled already: a second unscale would raise
        elif max_grad_norm is not None:
            self.accelerator.clip_grad_norm_(parameters, max_grad_norm)

    def autocast(self) -> Any:
        """`accelerator.autocast()`: `config.precision` for the forward and the loss, as under `TorchRunner`."""
        return self.accelerator.autocast()

    @torch.no_grad()
    def gather_outputs(self, outputs: list) -> Any:
        """Every process's outputs in rank order (dataset order, as the samplers split it), by `gather_for_metrics`.

        Processes may hold different numbers of samples (nothing is padded), so outputs are gathered as objects.
        """
        outputs = [output.cpu() if isinstance(output, torch.Tensor) else output for output in outputs]
        gathered = self.accelerator.gather_for_metrics(outputs, use_gather_object=True)
        if gathered and all(isinstance(output, torch.Tensor) for output in gathered):
            return torch.cat(gathered).to(self.device)
        return gathered

    # State

    def stateful_parts(self) -> dict[str, Any]:
        """What goes into `runner.pth`: the parts Accelerate did not prepare (and so does not save), and the EMA."""
        return {key: part for key, part in super().stateful_parts().items() if key not in self._prepared}

    def _is_own_model(self, model: Any) -> bool:
        # Accelerate lists the module it was given, not its DDP wrapper.
        return self.model is not None and self.unwrap(model) is self.unwrap(self.model)

    def _save_unwrapped_weights(self, models: list, weights: list, output_dir: str) -> None:
        # The model's weights, without DDP's `module.` prefix, as a plain (checksummed) file: it loads on any number
        # of processes, and into a `TorchRunner`. Taken off `weights`, so Accelerate does not write them again.
        for index, model in enumerate(models):
            if self._is_own_model(model):
                save(self.unwrap(model).state_dict(), os.path.join(output_dir, WEIGHTS_FILE))
                weights.pop(index)
                return

    def _load_unwrapped_weights(self, models: list, input_dir: str) -> None:
        for model in models:
            if self._is_own_model(model):
                weights = load(os.path.join(input_dir, WEIGHTS_FILE), map_location=self.device)
                self.unwrap(model).load_state_dict(weights)
                models.remove(model)  # loaded here; Accelerate loads the others
                return

    def save_checkpoint(self, name: str = "latest", epochs: int | None = None, save_best: bool = True) -> None:
        """Write a checkpoint directory and point `{name}.accelerate` at it, on the main process.

        Never collective: the other processes return at once (their random and loader state comes from the
        loop's snapshot). See the module's documentation for the layout.

        Args:
            name: Name of the pointer. Defaults to `"latest"`.
            epochs: Epoch index to name a snapshot after. Defaults to `config.epochs`.
            save_best: Also point `best.accelerate` at it when `is_best`.
        """
        if not self.is_main_process:
            return
        epochs = self.config.epochs if epochs is None else epochs
        checkpoint_dir = self.checkpoint_dir
        if not self.__dict__.get("_checkpoint_dir_tidied"):
            remove_stale_temporaries(checkpoint_dir)  # pointer writes a killed process left behind
            self.__dict__["_checkpoint_dir_tidied"] = True
        tag = f"{name}-s{self.config.steps}-{uuid.uuid4().hex[:8]}"
        directory = os.path.join(checkpoint_dir, self.checkpoint_states_dir, tag)
        self.accelerator.save_state(directory, safe_serialization=False)  # the model: `_save_unwrapped_weights`
        state = dict(self.state_dict())
        state["files"] = {file: durable_size(os.path.join(directory, file)) for file in sorted(os.listdir(directory))}
        save(state, os.path.join(directory, RUN_STATE_FILE))  # last: the checkpoint is complete once this exists
        fsync_dir(directory)
        self.publish_checkpoint(name, tag, epochs, save_best)

    @staticmethod
    def is_checkpoint(path: str) -> bool:
        """Whether `path` names a checkpoint of this runner: a `.accelerate` pointer, or a directory."""
        return path.endswith(POINTER_EXTENSION) or os.path.isdir(path)

    @classmethod
    def read_checkpoint_file(cls, checkpoint: CheckpointLike, **kwargs: Any) -> Mapping:
        """The run state of a checkpoint (a pointer or a directory), with its directory under `"accelerate"`.

        Any other path is read as a plain checkpoint file.

        Raises:
            FileNotFoundError: If the checkpoint does not exist.
            CorruptFileError: If it is incomplete or damaged; the message names what is missing or wrong.
        """
        if isinstance(checkpoint, Mapping) or not cls.is_checkpoint(os.fsdecode(checkpoint)):
            return super().read_checkpoint_file(checkpoint, **kwargs)
        directory = resolve_checkpoint(os.fsdecode(checkpoint))
        run_state = os.path.join(directory, RUN_STATE_FILE)
        if not os.path.isfile(run_state):
            raise CorruptFileError(f"checkpoint {directory} is incomplete: {RUN_STATE_FILE} is missing")
        state = dict(load(run_state, **kwargs))
        problems = []
        for file, size in state.pop("files", {}).items():
            path = os.path.join(directory, file)
            if not os.path.isfile(path):
                problems.append(f"{file} is missing")
            elif os.path.getsize(path) != size:
                problems.append(f"{file} has {os.path.getsize(path)} bytes, {size} were written")
        if problems:
            raise CorruptFileError(f"checkpoint {directory} is damaged: " + "; ".join(problems))
        state["accelerate"] = directory
        return state

    def load_checkpoint(self, checkpoint: CheckpointLike, *args: Any, **kwargs: Any) -> None:
        """Restore what Accelerate saved (`accelerator.load_state`), then the run state: config, results, EMA, RNG."""
        if self.model is None:
            raise ValueError("model is not defined: assign self.model before loading a checkpoint")
        state = self.read_checkpoint_file(checkpoint, **kwargs)
        if "accelerate" not in state:
            raise ValueError(
                "the accelerate platform resumes from its own checkpoints (a .accelerate pointer or its directory); "
                "use load_pretrained for the model weights of another checkpoint"
            )
        self.accelerator.load_state(state["accelerate"])
        self.load_state_dict(state)
        if not isinstance(checkpoint, Mapping):
            self.config.checkpoint = os.fsdecode(checkpoint)

    def load_pretrained(self, checkpoint: CheckpointLike, *args: Any, **kwargs: Any) -> None:
        """Load model weights from a checkpoint of this runner (pointer or directory) or from a plain file."""
        if not isinstance(checkpoint, Mapping) and self.is_checkpoint(os.fsdecode(checkpoint)):
            checkpoint = os.path.join(resolve_checkpoint(os.fsdecode(checkpoint)), WEIGHTS_FILE)
        super().load_pretrained(checkpoint, *args, **kwargs)


def _has_accelerator() -> bool:
    probe = getattr(torch, "accelerator", None)  # torch >= 2.6
    return bool(probe.is_available()) if probe is not None else torch.cuda.is_available()
