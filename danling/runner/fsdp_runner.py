"""`FSDPRunner`: the loops of `TorchRunner` on PyTorch's FSDP2 (`fully_shard`), with Distributed Checkpoint.

Only what differs from DDP lives here: sharding the model (and the EMA), gradient clipping over the shards,
skipping the gradient reduction inside accumulation windows, evaluation with full parameters, and checkpoints
written by every process with `torch.distributed.checkpoint`.

A checkpoint is a directory under `checkpoint_dir/dcp/`: a `.distcp` file of shards per process, `runner.pth` (the
config, results, scheduler and every process's random state, written by the main process) and `.metadata`, which
DCP writes last, once every process has finished. Only then does the main process point `latest.dcp` (a small
JSON file, replaced atomically) at the new directory; `best.dcp` and `epoch-N.dcp` are pointers too, so nothing
is copied. Directories no pointer names any more are deleted after the switch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ..runs import CHECKPOINT_EXTENSIONS
from ..utils import distributed as du
from ..utils.io import CorruptFileError, load, save
from . import dcp, fsdp_utils
from .checkpoint import CheckpointLike, checkpoint_roles, extract_model_state
from .pointers import PointedCheckpoints, fresh_tag, resolve_checkpoint
from .torch_runner import TorchRunner

__all__ = ["FSDPRunner", "consolidate_checkpoint"]

POINTER_EXTENSION = CHECKPOINT_EXTENSIONS["fsdp"]
RUN_STATE_FILE = "runner.pth"
SHARDS_DIR_NAME = "dcp"


class FSDPRunner(PointedCheckpoints, TorchRunner):
    """`TorchRunner` on FSDP2: parameters, gradients and optimizer state sharded over the processes.

    Assign the model, criterion, optimizer (over `self.model.parameters()`), scheduler, EMA and datasets in
    `__init__` as for `TorchRunner`; `__post_init__` shards the model with `fully_shard` and points the optimizer
    at the sharded parameters. It runs on one process too (a single-process group is created).

    Sharding units: by default the smallest subtrees holding at least `config.fsdp_min_unit_params` parameters,
    then the root; the units are logged at start. Name other units with `config.fsdp_units` (class names, such as
    `["TransformerBlock"]`; nested ones too) or override
    [`sharding_units`][danling.runner.fsdp_runner.FSDPRunner.sharding_units]. The mesh is on `device`
    (`config.device="cpu"` keeps a GPU machine's model on the CPU, over `gloo`). `config.reshard_after_forward`
    (default: FSDP's) trades memory for a second all-gather in backward. `config.precision` of `bf16`/`fp16`
    becomes FSDP's `MixedPrecisionPolicy` (gradients reduced in fp32, outputs cast to
    `config.fsdp_output_precision`, fp32 by default).

    Unlike `TorchRunner`, `save_checkpoint` is collective: every process writes its shards.
    """

    checkpoint_extension = POINTER_EXTENSION
    checkpoint_states_dir = SHARDS_DIR_NAME
    needs_process_group = True  # `fully_shard` needs one, on one process too
    wraps_before_restore = True  # DCP loads into the shards, resharding as needed

    # Model

    def sharding_units(self, model: nn.Module) -> list[nn.Module]:
        """Submodules to shard as their own units (before the root), deepest first.

        The default reads `config.fsdp_units`, a list of class names (units may nest: each is sharded); without it,
        the smallest subtrees that hold at least `config.fsdp_min_unit_params` parameters.
        """
        names = self.config.get("fsdp_units")
        min_params = self.config.get("fsdp_min_unit_params", fsdp_utils.DEFAULT_MIN_UNIT_PARAMS)
        if not names:
            return fsdp_utils.sharding_units(model, min_params=min_params)
        names = set(names)
        units = [module for module in model.modules() if type(module).__name__ in names and module is not model]
        if not units:
            raise ValueError(f"config.fsdp_units {sorted(names)} names no submodule of {type(model).__name__}")
        return fsdp_utils.sharding_units(model, units)

    def wrap_model(self) -> None:
        """Shard the model (and the EMA's copy alike) over a mesh on `device`, then point the optimizer at the
        sharded parameters.

        Raises:
            ValueError: If the EMA holds no copy of the model FSDP can shard (see `ema_model_copy`).
        """
        model = self.model
        if not isinstance(model, nn.Module) or fsdp_utils.fsdp_modules(model):
            return
        ema: Any = self.ema
        ema_copy = ema_model_copy(ema) if ema is not None else None
        if ema is not None and ema_copy is None:
            raise ValueError(
                f"an EMA of type {type(ema).__name__} cannot be sharded by FSDP (it holds no copy of the model as an "
                "nn.Module in `.module`); use torch.optim.swa_utils.AveragedModel (with get_ema_multi_avg_fn), or an "
                "EMA that holds its copy as `.module` and updates it with `update(model)`, as timm's ModelEmaV2 does"
            )
        # Processes seed differently (by rank), so their initial weights differ; DDP would broadcast rank 0's.
        du.broadcast_module(model)
        names = {id(parameter): name for name, parameter in model.named_parameters()}
        device = self.device
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # FSDP works on the current device of a CUDA mesh
        options = {
            "mesh": fsdp_utils.device_mesh(device),
            "mp_policy": fsdp_utils.mixed_precision_policy(
                self.config.precision, self.config.get("fsdp_output_precision", "fp32")
            ),
            "reshard_after_forward": self.config.get("reshard_after_forward"),
        }
        units = self.sharding_units(model)
        print(f"FSDP units of {type(model).__name__}, deepest first:\n{fsdp_utils.unit_summary(model, units)}")
        fsdp_utils.shard_model(model, units, **options)
        self.broadcast_ema()
        if ema_copy is not None:
            # Sharded like the model, the EMA averages shard by shard with no communication.
            fsdp_utils.shard_model(ema_copy, self.sharding_units(ema_copy), **options)
        if self.optimizer is not None:
            _rebind_optimizer(self.optimizer, names, dict(model.named_parameters()))

    def compile_targets(self) -> list[nn.Module]:
        """The innermost sharded units (the root alone when it is the only unit), each compiled on its own.

        FSDP's hooks, which gather and free each unit's parameters, stay outside the compiled `forward`s: every
        gather runs between two graphs, as uncompiled.
        """
        model = self.model
        if not isinstance(model, nn.Module):
            return []
        units: list[nn.Module] = fsdp_utils.fsdp_modules(model)  # type: ignore[assignment]
        unit_ids = {id(unit) for unit in units}
        innermost = [
            unit for unit in units if not any(id(sub) in unit_ids for sub in unit.modules() if sub is not unit)
        ]
        return innermost or [model]

    # Backend

    def autocast(self) -> Any:
        """A null context: FSDP casts parameters and inputs itself (`MixedPrecisionPolicy`); fp16 on CUDA still
        gets `TorchRunner`'s `GradScaler`."""
        return nullcontext()

    def accumulate(self) -> Any:
        """Skip the gradient reduce-scatter on micro-batches that do not close an accumulation window."""
        if self.config.accum_steps > 1 and not self._accumulation_window()[1]:
            return fsdp_utils.no_gradient_sync(self.model)  # type: ignore[arg-type]
        return nullcontext()

    def clip_grad_norm(self, parameters: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        """Clip by the norm of the whole (unsharded) gradient, the same on every process."""
        return fsdp_utils.clip_grad_norm(parameters, max_norm)

    def evaluation_context(self, model: nn.Module) -> Any:
        """Full parameters on every process, so processes may evaluate different numbers of batches."""
        root = model if fsdp_utils.fsdp_modules(model)[:1] == [model] else ema_model_copy(model)
        if root is None or not fsdp_utils.fsdp_modules(root):
            return nullcontext()
        return fsdp_utils.unsharded(root, self.config.get("reshard_after_forward"))

    # State

    def stateful_parts(self) -> dict[str, Any]:
        """Scheduler and grad scaler: the model, EMA and optimizer are sharded and go through DCP."""
        return {"scheduler": self.scheduler, "scaler": self.scaler}

    def sharded_state(self) -> dict[str, Any]:
        """The DCP state: model and optimizer (and the EMA), keyed by parameter name so any world size loads it."""
        state: dict[str, Any] = {"model": dcp.ModelOptimizerState(self.model, self.optimizer)}  # type: ignore[arg-type]
        ema: Any = self.ema
        if ema is not None:
            # wrap_model refused an EMA with no module to shard, so one of the two is a module here.
            state["ema"] = dcp.ModelOptimizerState(ema if isinstance(ema, nn.Module) else ema.module)
        return state

    def save_checkpoint(self, name: str = "latest", epochs: int | None = None, save_best: bool = True) -> None:
        """Write a sharded checkpoint and point `{name}.dcp` at it once every process has finished.

        Collective: call it on every process. See the module's documentation for the layout.

        Args:
            name: Name of the pointer. Defaults to `"latest"`.
            epochs: Epoch index to name a snapshot after. Defaults to `config.epochs`.
            save_best: Also point `best.dcp` at it when `is_best`.
        """
        epochs = self.config.epochs if epochs is None else epochs
        shards = os.path.join(self.checkpoint_dir, self.checkpoint_states_dir)
        background = bool(self.config.get("async_checkpoint"))
        if background:
            self.wait_for_checkpoint()  # the save in flight is published (or its failure raised) first

        def start() -> str:
            tag = fresh_tag(shards, name, self.config.steps)
            os.makedirs(os.path.join(shards, tag))
            # Other processes' entries come from the loop's snapshot: nothing to gather here.
            save(self.state_dict(), os.path.join(shards, tag, RUN_STATE_FILE))
            return tag

        # The main process's name, sent once the directory exists (on a shared filesystem) for every process; if it
        # fails to make it (a full disk), every process raises instead of waiting for the name.
        tag = self.run_on_main_process(start, f"checkpoint {name} was not started")
        if background:
            # Roles decided now, from the state at this step; the pointers move once every process has written.
            snapshot, scored = checkpoint_roles(self.config, self._position, epochs)
            best = scored and save_best and self.is_best
            stager, group = self._background_checkpointing()
            future = dcp.dcp_async_save(self.sharded_state(), os.path.join(shards, tag), stager, group)
            self.__dict__["_checkpoint_in_flight"] = (future, tag, name, epochs, snapshot, best)
            return
        dcp.dcp_save(self.sharded_state(), os.path.join(shards, tag))
        # dcp_save returns on the main process after it wrote `.metadata`, which it does once every process has
        # finished: the checkpoint is complete, and pointing at it is safe. Every process waits for the pointers,
        # so none reads `latest` before it names this checkpoint.
        self.finish_on_main_process(tag, lambda: self.publish_checkpoint(name, tag, epochs, save_best))

    def _background_checkpointing(self) -> tuple[Any, Any]:
        """The stager (host buffers reused from save to save) and the `gloo` group of background saves; made at the
        first, collectively (every process saves together)."""
        made = self.__dict__.get("_background_checkpointing_made")
        if made is None:
            from torch import distributed as dist

            # A group of its own: DCP's collectives run in its writer thread, and must never interleave with those of
            # training (or of the preemption agreement); gloo, which async saving requires, whatever training uses.
            group = dist.new_group(backend="gloo") if dist.is_initialized() else None
            made = self.__dict__["_background_checkpointing_made"] = (
                dcp.snapshot_stager(pinned=self.device.type == "cuda"),
                group,
            )
        return made

    def wait_for_checkpoint(self, raise_error: bool = True) -> BaseException | None:
        """Wait for the checkpoint being written in the background; once every process has written its part, point
        `latest` (and `best`, `epoch-N`) at it. Collective, with `raise_error` (training calls it at each save and at
        its end; call it after your own `save_checkpoint` calls, on every process).

        A failure on any process is raised on every process, naming the checkpoint, and no pointer moves. With
        `raise_error=False` (after a crash, when the other processes may never come), this process only waits for its
        own part, returns its failure, and publishes nothing: `latest` stays the previous checkpoint.
        """
        in_flight = self.__dict__.pop("_checkpoint_in_flight", None)
        if in_flight is None:
            return None
        future, tag, name, epochs, snapshot, best = in_flight
        failure: BaseException | None = None
        try:
            future.result()
        # Whatever it is, every process must hear of it before any pointer moves.
        except BaseException as error:
            failure = error
        if not raise_error:
            return failure
        failures = du.all_gather_object(None if failure is None else f"{type(failure).__name__}: {failure}")
        failed = [f"process {rank}: {message}" for rank, message in enumerate(failures) if message is not None]
        if failed:
            directory = os.path.join(self.checkpoint_dir, self.checkpoint_states_dir, tag)
            raise RuntimeError(
                f"checkpoint {directory} was not written; {name} still names the previous one: " + "; ".join(failed)
            ) from failure
        self.finish_on_main_process(tag, lambda: self.publish_checkpoint_as(name, tag, epochs, snapshot, best))
        return None

    @staticmethod
    def is_checkpoint(path: str) -> bool:
        """Whether `path` names a DCP checkpoint: a `.dcp` pointer, or a directory with DCP's `.metadata`."""
        return path.endswith(POINTER_EXTENSION) or os.path.isfile(os.path.join(path, dcp.METADATA_FILE))

    @classmethod
    def read_checkpoint_file(cls, checkpoint: CheckpointLike, **kwargs: Any) -> Mapping:
        """The run state of a DCP checkpoint (a pointer file or a directory), with its directory under `"dcp"`.

        Raises:
            FileNotFoundError: If the checkpoint does not exist.
            CorruptFileError: If it is incomplete or damaged; the message names what is missing or wrong.
        """
        if isinstance(checkpoint, Mapping):
            return checkpoint
        directory = resolve_checkpoint(os.fsdecode(checkpoint))
        problems = dcp.checkpoint_complete(directory)
        if problems:
            raise CorruptFileError(f"checkpoint {directory} is incomplete: " + "; ".join(problems))
        state = dict(load(os.path.join(directory, RUN_STATE_FILE), **kwargs))
        state["dcp"] = directory
        return state

    def load_checkpoint(self, checkpoint: CheckpointLike, *args: Any, **kwargs: Any) -> None:
        """Restore the run state and, resharded to this number of processes, the model, optimizer and EMA.

        Collective: every process reads its shards.
        """
        if self.model is None:
            raise ValueError("model is not defined: assign self.model before loading a checkpoint")
        self.wait_for_checkpoint()
        if isinstance(checkpoint, Mapping):
            state = checkpoint
            if "dcp" not in state:
                raise ValueError("an FSDP runner loads DCP checkpoints; use load_pretrained for plain model weights")
            # Read by each process on its own (at construction, from a pointer that may have moved since): all
            # load what the main process read, which this process reads again if its own was another.
            directory = self.broadcast_object(state["dcp"])
            if os.path.normpath(directory) != os.path.normpath(state["dcp"]):
                state = self.read_checkpoint_file(directory, **kwargs)
        else:
            state = self.read_checkpoint_file(self.resolve_on_main_process(os.fsdecode(checkpoint)), **kwargs)
        self.load_state_dict(state)
        dcp.dcp_load(self.sharded_state(), state["dcp"])
        if not isinstance(checkpoint, Mapping):
            self.config.checkpoint = os.fsdecode(checkpoint)

    def load_pretrained(self, checkpoint: CheckpointLike, *args: Any, **kwargs: Any) -> None:
        """Load model weights from a plain model file (full weights) or from a DCP checkpoint, into the shards."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        if self.model is None:
            raise ValueError("model is not defined: assign self.model before loading pretrained weights")
        path = os.fsdecode(checkpoint) if not isinstance(checkpoint, Mapping) else None
        if path is not None and (self.is_checkpoint(path) or os.path.isdir(path)):
            directory = self.resolve_on_main_process(path)
            dcp.dcp_load({"model": dcp.ModelOptimizerState(self.model)}, directory)
            return
        full = extract_model_state(super().read_checkpoint_file(checkpoint, **kwargs))
        set_model_state_dict(self.model, dict(full), options=StateDictOptions(full_state_dict=True))


def consolidate_checkpoint(checkpoint: str, output: str, ema: bool = False) -> str:
    """Write the full weights of a DCP checkpoint to one plain file (`model.pth`), on one process, without FSDP.

    The file loads with `danling.load` (or `torch.load`) into the unsharded model: share it, evaluate it with a
    `TorchRunner`, or pass it to `load_pretrained`.

    Args:
        checkpoint: A pointer file (`checkpoints/latest.dcp`) or a checkpoint directory.
        output: The file to write (atomically).
        ema: Write the EMA's weights instead of the model's.

    Returns:
        `output`.
    """
    directory = resolve_checkpoint(checkpoint)
    key = "ema" if ema else "model"
    state = dcp.dcp_to_full_state_dict(directory, keys=[key])
    weights = state[key]["model"]
    if ema and any(name.startswith("module.") for name in weights):
        # An EMA that is a module (`AveragedModel`) was saved whole; one that is not, as its copy of the model.
        weights = {name[len("module.") :]: value for name, value in weights.items() if name.startswith("module.")}
    save(weights, output)
    return output


def ema_model_copy(ema: Any) -> nn.Module | None:
    """The EMA's copy of the model, which FSDP shards like the model: `ema.module` when it is an `nn.Module`
    (`torch.optim.swa_utils.AveragedModel`, timm's `ModelEmaV2`, an EMA of the `update(model)` kind that is not a
    module itself); `None` for any other EMA.

    The EMA is saved through DCP (the whole EMA when it is a module, else its copy) and updated with its own
    `update_parameters(model)` or `update(model)`, shard by shard: both copies are sharded alike, so their entries
    line up.
    """
    module = getattr(ema, "module", None)
    return module if isinstance(module, nn.Module) else None


def _rebind_optimizer(optimizer: Any, names: Mapping[int, str], sharded: Mapping[str, nn.Parameter]) -> None:
    # `fully_shard` replaces each parameter with a sharded one; an optimizer built in `__init__` holds the old ones.
    for group in optimizer.param_groups:
        group["params"] = [sharded[names[id(p)]] if id(p) in names else p for p in group["params"]]
    if optimizer.state:
        raise RuntimeError("the optimizer has state before sharding; build it in __init__ and do not step it there")
