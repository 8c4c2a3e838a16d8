"""`DeepSpeedRunner`: the loops of `TorchRunner` on a DeepSpeed engine (ZeRO stages 0 to 2), with its checkpoints.

`deepspeed.initialize` builds the engine from the model, the optimizer and a DeepSpeed config made from ours
([`deepspeed_config`][danling.runner.deepspeed_runner.deepspeed_config]). Backward, clipping, loss scaling and the
optimizer step are the engine's; the loop still decides where accumulation windows close and tells the engine, so
counters, scheduler and EMA follow the same optimizer steps as under DDP.

A checkpoint is a directory under `checkpoint_dir/deepspeed/` that every process writes into with
`engine.save_checkpoint`; the main process then writes `runner.pth` (the run state, with the size of every file),
which marks it complete, and only then points `latest.ds` (a small JSON file, replaced atomically) at it. `best.ds`
and `epoch-N.ds` are pointers too; directories no pointer names are deleted after the switch.

Importing this module imports `deepspeed`; `danling` never does: `Runner` loads it for `platform: deepspeed`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from typing import Any

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator
from torch import distributed as dist
from torch import nn

from ..runs import CHECKPOINT_EXTENSIONS
from ..utils import distributed as du
from ..utils.io import CorruptFileError, fsync_dir, load, save, to_builtin
from .checkpoint import CheckpointLike, extract_model_state
from .ema import average_in_place
from .pointers import PointedCheckpoints, durable_size, fresh_tag, resolve_checkpoint
from .torch_runner import TorchRunner

__all__ = ["DeepSpeedRunner", "deepspeed_config", "full_weights", "pending_op_build"]

POINTER_EXTENSION = CHECKPOINT_EXTENSIONS["deepspeed"]
RUN_STATE_FILE = "runner.pth"
ENGINE_DIR_NAME = "deepspeed"
MODEL_STATES_PATTERN = "*model_states.pt"
# ZeRO's optimizer partitions, one file per data-parallel process (`bf16_` before the name under bf16).
ZERO_PARTITIONS_PATTERN = "*zero_pp_rank_*_optim_states.pt"

ELEMENTWISE_OPTIMIZERS = tuple(
    getattr(torch.optim, name)
    for name in ("SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "RMSprop", "ASGD", "Rprop")
)
"""torch optimizers whose update is element-wise, so ZeRO's flat partitions change nothing: they are allowed with
ZeRO (`zero_allow_untested_optimizer`) unless the DeepSpeed config says otherwise."""


def deepspeed_config(
    config: Mapping, micro_batch_size: int | None, world_size: int = 1, optimizer: Any = None, scheduler: Any = None
) -> dict[str, Any]:
    """The DeepSpeed config for a run: `config.deepspeed`, completed from our knobs, which it must agree with.

    `micro_batch_size` becomes `train_micro_batch_size_per_gpu`, `accum_steps` `gradient_accumulation_steps`,
    `max_grad_norm` `gradient_clipping` (0, off, when unset) and `precision` the `bf16`/`fp16` section. A value
    `config.deepspeed` gives too must be the same (or `"auto"`); other sections (`zero_optimization`, offload, an
    `optimizer` or `scheduler` to build) pass through.

    Args:
        config: The run's config.
        micro_batch_size: Samples per process per micro-batch (`None` when there is no training data).
        world_size: Number of processes.
        optimizer: The runner's optimizer (`None` when DeepSpeed builds one from its `optimizer` section).
        scheduler: The runner's scheduler (`None` when DeepSpeed builds one from its `scheduler` section).

    Raises:
        ValueError: A setting of ours and one of `config.deepspeed` disagree (both are named), a knob DeepSpeed
            cannot honour is set (`max_grad_value`), ZeRO stage 3 is asked for, or no micro-batch size is known.

    Examples:
        >>> deepspeed_config({"accum_steps": 2, "precision": "bf16", "max_grad_norm": 1.0}, 8)
        {'train_micro_batch_size_per_gpu': 8, 'gradient_accumulation_steps': 2, 'gradient_clipping': 1.0, 'bf16': {'enabled': True}}
        >>> deepspeed_config({"accum_steps": 2, "deepspeed": {"gradient_accumulation_steps": 4}}, 8)
        Traceback (most recent call last):
        ValueError: config.accum_steps=2 and config.deepspeed.gradient_accumulation_steps=4 disagree; set one of them
    """  # noqa: E501
    given: dict[str, Any] = to_builtin(config.get("deepspeed") or {})
    if config.get("max_grad_value") is not None:
        raise ValueError(
            f"config.max_grad_value={config['max_grad_value']!r} is not supported on DeepSpeed, which clips by the "
            "global norm only: use config.max_grad_norm"
        )
    if micro_batch_size is None:
        micro_batch_size = given.get("train_micro_batch_size_per_gpu")
        if micro_batch_size in (None, "auto"):
            raise ValueError("DeepSpeed needs a micro-batch size: set config.dataloader.batch_size")
    accum_steps = config.get("accum_steps") or 1
    max_grad_norm = config.get("max_grad_norm")
    ours = {
        "train_micro_batch_size_per_gpu": ("config.dataloader.batch_size", micro_batch_size),
        "gradient_accumulation_steps": ("config.accum_steps", accum_steps),
        "gradient_clipping": ("config.max_grad_norm", max_grad_norm),
    }
    for key, (name, value) in ours.items():
        _agree(given, key, name, value, 0.0 if value is None else value)
    batch = micro_batch_size * accum_steps * world_size
    if given.get("train_batch_size", "auto") not in ("auto", batch):
        raise ValueError(
            f"config.deepspeed.train_batch_size={given['train_batch_size']!r} is not micro-batch {micro_batch_size} "
            f"x accum_steps {accum_steps} x {world_size} process(es) = {batch}; leave it out"
        )
    given.pop("train_batch_size", None)
    precision = config.get("precision")
    for section in ("fp16", "bf16"):
        wanted, block = precision == section, dict(given.get(section) or {})
        if block.get("enabled", "auto") not in ("auto", wanted):
            raise ValueError(
                f"config.precision={precision!r} and config.deepspeed.{section}.enabled={block['enabled']!r} "
                "disagree; set config.precision"
            )
        if wanted or section in given:
            given[section] = {**block, "enabled": wanted}
    stage = (given.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise ValueError(
            f"config.deepspeed.zero_optimization.stage={stage!r} is not supported: use 0, 1 or 2 "
            "(evaluation, the EMA and checkpoints here need every parameter on every process; for sharded "
            "parameters, use platform 'fsdp')"
        )
    for name, section, part in (("optimizer", "optimizer", optimizer), ("scheduler", "scheduler", scheduler)):
        if part is not None and given.get(section) is not None:
            raise ValueError(
                f"self.{name} is a {type(part).__name__} and config.deepspeed.{section} asks DeepSpeed to build "
                f"a {given[section].get('type')!r}; keep one of them"
            )
    if stage > 0 and isinstance(optimizer, ELEMENTWISE_OPTIMIZERS):
        given.setdefault("zero_allow_untested_optimizer", True)
    return given


def _agree(given: dict[str, Any], key: str, name: str, value: Any, filled: Any) -> None:
    if given.get(key, "auto") not in ("auto", filled):
        raise ValueError(f"{name}={value!r} and config.deepspeed.{key}={given[key]!r} disagree; set one of them")
    given[key] = filled


class DeepSpeedRunner(PointedCheckpoints, TorchRunner):
    """`TorchRunner` on a DeepSpeed engine: ZeRO stage 0, 1 or 2, DeepSpeed's mixed precision and loss scaling.

    Assign the model, criterion, optimizer (or leave it to `config.deepspeed.optimizer`), scheduler, EMA and
    datasets in `__init__` as for `TorchRunner`; `__post_init__` hands the model and optimizer to
    `deepspeed.initialize`. Afterwards `self.model` is the engine (`unwrap` gives your module) and
    `self.optimizer` the engine's optimizer (ZeRO's wrapper of yours). It runs on one process too (a single-process
    group is created). The device and the process-group backend are DeepSpeed's accelerator's (`DS_ACCELERATOR`):
    `gloo` on the CPU, `nccl` on CUDA.

    Unlike `TorchRunner`, `save_checkpoint` is collective: every process writes its part.
    """

    checkpoint_extension = POINTER_EXTENSION
    writes_checkpoints_in_background = False  # DeepSpeed's own checkpoint writer has no background mode here
    checkpoint_states_dir = ENGINE_DIR_NAME
    needs_process_group = True
    wraps_before_restore = True  # the checkpoint loads into the engine

    def init_distributed(self) -> None:
        """As `TorchRunner` (one process gets a process group too); DeepSpeed's communication then uses it."""
        super().init_distributed()
        if dist.get_world_size() == 1:
            # What torchrun would set; DeepSpeed's engine reads it (also for a group another runner made).
            os.environ.setdefault("LOCAL_RANK", "0")
        op = pending_op_build()
        if op is not None and dist.get_rank() == 0:
            # Its first start here compiles the op, silently, for half a minute or more: say why nothing happens.
            print(f"DeepSpeed: compiling its {op} op, once on this machine (a minute or more)...", flush=True)
        # DeepSpeed joins the group made here rather than making its own (which would need MPI on one process).
        deepspeed.comm.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False, verbose=False)

    def process_group_backend(self) -> str:
        """`config.backend`, else the accelerator's (`gloo` on the CPU, `nccl` on CUDA); selects this process's
        device first."""
        accelerator = get_accelerator()
        accelerator.set_device(du.get_local_rank())
        return self.config.get("backend") or accelerator.communication_backend_name()

    @property
    def device(self) -> torch.device:
        """This process's device on DeepSpeed's accelerator (`cpu`, `cuda:{local_rank}`, ...)."""
        device = self.__dict__.get("_device")
        if device is None:
            device = torch.device(get_accelerator().device_name(du.get_local_rank()))
            configured = self.config.get("device")
            if configured is not None and torch.device(configured).type != device.type:
                raise ValueError(f"config.device={configured!r}, but DeepSpeed's accelerator runs on {device}")
            self.__dict__["_device"] = device
        return device

    def init_precision(self) -> None:
        """Nothing: DeepSpeed scales fp16 losses itself."""

    # Model

    def micro_batch_size(self) -> int | None:
        """Samples per process in a micro-batch: the first training loader's, else `config.dataloader.batch_size`."""
        for split in self.train_splits:
            if split in self.dataloaders:
                return self.dataloaders[split].batch_size
        return (self.config.get("dataloader") or {}).get("batch_size")

    def deepspeed_config(self) -> dict[str, Any]:
        """The DeepSpeed config the engine is (or will be) built with; see the function `deepspeed_config`."""
        engine = self.model
        if isinstance(engine, deepspeed.DeepSpeedEngine):
            return dict(engine.config)
        return deepspeed_config(self.config, self.micro_batch_size(), self.world_size, self.optimizer, self.scheduler)

    def wrap_model(self) -> None:
        """Make the DeepSpeed engine of the model and optimizer; it starts every process from rank 0's weights."""
        model = self.model
        if not isinstance(model, nn.Module) or isinstance(model, deepspeed.DeepSpeedEngine):
            return
        ds_config = self.deepspeed_config()
        self.broadcast_ema()
        parameters = [p for p in model.parameters() if p.requires_grad] if self.optimizer is None else None
        engine, optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=self.optimizer, model_parameters=parameters, config=ds_config
        )
        self.model = engine
        if optimizer is not None:
            self.optimizer = optimizer

    def unwrap(self, model: Any) -> Any:
        """`model` without the DeepSpeed engine (and DDP or `torch.compile` wrappers)."""
        if isinstance(model, deepspeed.DeepSpeedEngine):
            model = model.module
        return super().unwrap(model)

    # Backend

    @staticmethod
    def forward(model: Any, input: Any) -> Any:
        """Call `model` on `input`; the engine in its own precision, with its float inputs cast to it.

        The `bf16`/`fp16` section (`config.precision`) makes DeepSpeed cast the module's parameters to that dtype
        and run it so: it is not autocast. DeepSpeed's `engine.forward` turns an outer CUDA autocast off inside
        (`autocast_if_enabled`, unless `config.deepspeed.torch_autocast` is set; newer versions refuse it), so the
        runner's autocast would reach the module as fp32 inputs against bf16 weights, a dtype error at the first
        step on GPUs (on the CPU it passed through, and the module ran autocast instead). So the engine runs with
        autocast off and float inputs in the module's dtype, on every device alike, as DeepSpeed's
        `fp16.auto_cast` does for fp16; the loss is still computed under the runner's autocast. A
        `torch_autocast` section in `config.deepspeed` still applies: DeepSpeed enters its own autocast.
        Evaluation and inference call the plain module (or the EMA) under the runner's autocast.
        """
        if not isinstance(model, deepspeed.DeepSpeedEngine):
            return TorchRunner.forward(model, input)
        dtype = model.get_data_types()[0]
        if dtype != torch.float32:
            input = _cast_floats(input, dtype)
        with torch.autocast(get_accelerator().device_name(), enabled=False):
            return TorchRunner.forward(model, input)

    def accumulate(self) -> Any:
        """Tell the engine whether this micro-batch closes its accumulation window, so it reduces and steps there."""
        engine: Any = self.model
        engine.set_gradient_accumulation_boundary(self._accumulation_window()[1])
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """`engine.backward`: DeepSpeed's loss scaling; the loop already divided `loss` by its window's length."""
        engine: Any = self.model
        engine.backward(loss, scale_wrt_gas=False)

    def clip_gradients(self) -> None:
        """Nothing: the engine clips to `gradient_clipping` (`config.max_grad_norm`) in its step."""

    def optimizer_step(self) -> None:
        """`engine.step`: clip, step the optimizer (skipped on an fp16 overflow) and zero the gradients."""
        engine: Any = self.model
        engine.step()

    def update_ema(self) -> None:
        """Update the EMA after an optimizer step: an `AveragedModel` in place, one tensor at a time.

        On one process, ZeRO's fp32 master weights are averaged, read where the optimizer keeps them (each
        parameter's fragment of its flat fp32 partition, which on one process is the whole parameter): under
        bf16/fp16 the module holds only their rounding. On several processes each holds a part of the master
        weights, and every process must average the same values, so the module's weights are averaged (what
        gathering the fp32 weights would cost is a second all-reduce of the model at every step). Either way
        `danling.runner.ema.average_in_place` casts at most one tensor at a time: no fp32 copy
        of the whole model. An EMA of the `update(model)` kind is given the module.
        """
        ema: Any = self.ema
        module = self.unwrap(self.model)
        if not isinstance(ema, torch.optim.swa_utils.AveragedModel):
            update = getattr(ema, "update_parameters", None) or ema.update
            update(module)
            return
        parameters: Iterable[torch.Tensor] = module.parameters()
        if self.world_size == 1:
            parameters = map(_fp32_master, parameters)
        average_in_place(ema, parameters, module.buffers())

    # State

    def stateful_parts(self) -> dict[str, Any]:
        """EMA and scheduler: the model and optimizer are the engine's, in its checkpoint."""
        return {"ema": self.ema, "scheduler": self.scheduler}

    def save_checkpoint(self, name: str = "latest", epochs: int | None = None, save_best: bool = True) -> None:
        """Write a checkpoint through the engine, then the run state, and point `{name}.ds` at it.

        Collective: call it on every process; it returns once the pointers name the new checkpoint, and raises on
        every process if the main process fails to finish it. See the module's documentation for the layout.

        Args:
            name: Name of the pointer. Defaults to `"latest"`.
            epochs: Epoch index to name a snapshot after. Defaults to `config.epochs`.
            save_best: Also point `best.ds` at it when `is_best`.
        """
        root = os.path.join(self.checkpoint_dir, self.checkpoint_states_dir)
        tag = self.broadcast_object(fresh_tag(root, name, self.config.steps) if self.is_main_process else None)
        engine: Any = self.model
        engine.save_checkpoint(root, tag=tag, save_latest=False)  # every process writes its part
        epochs = self.config.epochs if epochs is None else epochs
        self.finish_on_main_process(tag, lambda: self._complete_checkpoint(tag, name, epochs, save_best))

    def _complete_checkpoint(self, tag: str, name: str, epochs: int, save_best: bool) -> None:
        # Every process has written its files (flushed here, and their sizes recorded, so a later truncation is
        # caught): the run state, written last, marks the checkpoint complete; then the pointers move.
        directory = os.path.join(self.checkpoint_dir, ENGINE_DIR_NAME, tag)
        state = dict(self.state_dict())
        state["files"] = {file: durable_size(os.path.join(directory, file)) for file in sorted(os.listdir(directory))}
        fsync_dir(directory)
        save(state, os.path.join(directory, RUN_STATE_FILE))
        self.publish_checkpoint(name, tag, epochs, save_best)

    @staticmethod
    def is_checkpoint(path: str) -> bool:
        """Whether `path` names a DeepSpeed checkpoint: a `.ds` pointer, or a directory with model states."""
        return path.endswith(POINTER_EXTENSION) or bool(glob.glob(os.path.join(path, MODEL_STATES_PATTERN)))

    @classmethod
    def read_checkpoint_file(cls, checkpoint: CheckpointLike, **kwargs: Any) -> Mapping:
        """The run state of a DeepSpeed checkpoint (a pointer or a directory), its directory under `"deepspeed"`.

        Raises:
            FileNotFoundError: If the checkpoint does not exist.
            CorruptFileError: If it is incomplete or a file of it is missing or truncated; the message names them.
        """
        if isinstance(checkpoint, Mapping):
            return checkpoint
        path = os.fsdecode(checkpoint)
        if not cls.is_checkpoint(path) and not os.path.isdir(path):
            return super().read_checkpoint_file(checkpoint, **kwargs)  # a plain file of another backend
        directory = resolve_checkpoint(path)
        if not os.path.isfile(os.path.join(directory, RUN_STATE_FILE)):
            raise CorruptFileError(f"checkpoint {directory} is incomplete: no {RUN_STATE_FILE}")
        state = dict(load(os.path.join(directory, RUN_STATE_FILE), **kwargs))
        problems = []
        for file, size in state.pop("files", {}).items():
            found = os.path.getsize(os.path.join(directory, file)) if os.path.isfile(f"{directory}/{file}") else None
            if found != size:
                problems.append(f"{file} is missing" if found is None else f"{file} has {found} bytes, not {size}")
        if problems:
            raise CorruptFileError(f"checkpoint {directory} is damaged: " + "; ".join(problems))
        state[ENGINE_DIR_NAME] = directory
        return state

    def load_checkpoint(self, checkpoint: CheckpointLike, *args: Any, **kwargs: Any) -> None:
        """Restore the engine (model, optimizer partitions, DeepSpeed's scheduler) and the run state.

        Collective: every process reads its part. A checkpoint of ZeRO stage 1 or 2 loads on the number of
        processes that saved it only (DeepSpeed does not repartition the optimizer state); stage 0 loads on any.

        Raises:
            ValueError: If the checkpoint's ZeRO optimizer state is partitioned over another number of processes
                than this run has; the message says how to go on.
        """
        if self.model is None:
            raise ValueError("model is not defined: assign self.model before loading a checkpoint")
        state = self.read_checkpoint_file(checkpoint, **kwargs)
        if ENGINE_DIR_NAME not in state:
            raise ValueError("a DeepSpeed runner loads DeepSpeed checkpoints; use load_pretrained for model weights")
        directory = os.path.normpath(state[ENGINE_DIR_NAME])
        _check_partitions(directory, self.world_size)
        engine: Any = self.model
        path, _ = engine.load_checkpoint(os.path.dirname(directory), tag=os.path.basename(directory))
        if path is None:
            raise CorruptFileError(f"DeepSpeed could not load checkpoint {directory}")
        self.load_state_dict(state)
        if not isinstance(checkpoint, Mapping):
            self.config.checkpoint = os.fsdecode(checkpoint)

    def load_pretrained(self, checkpoint: CheckpointLike, *args: Any, **kwargs: Any) -> None:
        """Load model weights from a plain model file, or the full fp32 weights of a DeepSpeed checkpoint."""
        if self.model is None:
            raise ValueError("model is not defined: assign self.model before loading pretrained weights")
        path = None if isinstance(checkpoint, Mapping) else os.fsdecode(checkpoint)
        if path is not None and self.is_checkpoint(path):
            weights = full_weights(path)
        else:
            weights = extract_model_state(super().read_checkpoint_file(checkpoint, **kwargs))
        self.unwrap(self.model).load_state_dict(weights)
        # ZeRO keeps fp32 master weights apart from the module's: they must follow, or the next step undoes this.
        refresh = getattr(self.optimizer, "refresh_fp32_params", None)
        if callable(refresh):
            refresh()


def _check_partitions(directory: str, world_size: int) -> None:
    """Refuse, before DeepSpeed fails inside its engine, a ZeRO checkpoint partitioned over another world size."""
    saved = len(glob.glob(os.path.join(directory, ZERO_PARTITIONS_PATTERN)))
    if saved in (0, world_size):  # stage 0 keeps the optimizer whole, in the model states
        return
    raise ValueError(
        f"checkpoint {directory} holds ZeRO optimizer state partitioned over {saved} process(es), and this run has "
        f"{world_size}: DeepSpeed cannot repartition it. Resume on {saved} process(es) "
        f"(torchrun --nproc_per_node {saved}), or start a new run from its weights: --pretrained {directory} "
        "without --resume or --checkpoint"
    )


def pending_op_build() -> str | None:
    """The name of the op DeepSpeed's communication will compile when it starts, or `None` when nothing is to build.

    On its CPU accelerator DeepSpeed's communication uses a shared-memory op (`deepspeed_shm_comm`) that it compiles
    on first use, with no output, into torch's extension directory (`TORCH_EXTENSIONS_DIR`); later starts load it.
    `None` when the accelerator needs no such op, when the op came prebuilt or is loaded already, or when its
    compiled library is in the extension directory.
    """
    from deepspeed.git_version_info import installed_ops
    from deepspeed.ops.op_builder.builder import OpBuilder

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None  # DeepSpeed does not use it here (another accelerator), so it builds nothing
    if installed_ops.get(builder.NAME, False) or builder.NAME in OpBuilder._loaded_ops:
        return None
    try:
        from torch.utils.cpp_extension import _get_build_directory  # where `load` compiles; private, so guarded

        directory = _get_build_directory(builder.NAME, verbose=False)
    except (ImportError, TypeError):  # another torch: the library cannot be looked for, so a build may follow
        return builder.NAME
    built = os.path.isfile(os.path.join(directory, f"{builder.NAME}.so"))
    return None if built else builder.NAME


def _cast_floats(data: Any, dtype: torch.dtype) -> Any:
    """`data` with its floating-point tensors (nested in mappings, lists and tuples) cast to `dtype`."""
    if isinstance(data, torch.Tensor):
        return data.to(dtype) if data.is_floating_point() else data
    if isinstance(data, Mapping):
        return {key: _cast_floats(value, dtype) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(_cast_floats(value, dtype) for value in data)
    return data


def _fp32_master(parameter: torch.Tensor) -> torch.Tensor:
    """The optimizer's fp32 master copy of `parameter` (a view, no copy) when this process holds all of it, else
    `parameter` itself.

    ZeRO 1/2 and DeepSpeed's bf16 optimizer link each trained parameter to its fragment of the flat fp32 partition
    (`_hp_mapping`, set by `deepspeed.utils.link_hp_params`); the fragment is the whole parameter when the
    partition covers it (one process). Frozen parameters, ZeRO 0 without bf16 and fp32 training have no mapping
    (the module's weights are then the ones the optimizer steps, or equal to them).
    """
    mapping = getattr(parameter, "_hp_mapping", None)
    fragment = mapping.get_hp_fragment() if mapping is not None else None
    if fragment is None or fragment.numel() != parameter.numel():
        return parameter
    return fragment.view(parameter.shape)


def full_weights(checkpoint: str) -> Mapping[str, torch.Tensor]:
    """The model's full weights in a DeepSpeed checkpoint (a `.ds` pointer or a directory), as a plain state dict.

    ZeRO's fp32 master copy when there is one (so bf16/fp16 training loses nothing), else the saved module. Reads
    the files on one process, without a process group.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    directory = resolve_checkpoint(checkpoint)
    if glob.glob(os.path.join(directory, "*optim_states.pt")):
        root, tag = os.path.split(os.path.normpath(directory))
        return get_fp32_state_dict_from_zero_checkpoint(root, tag)
    states = torch.load(glob.glob(os.path.join(directory, MODEL_STATES_PATTERN))[0], map_location="cpu")
    return states["module"]
