"""Checkpoints: one reader for "path or Mapping", composed state, atomic writes, and the ways to resume."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any
from warnings import warn

from chanfig import NestedDict

from ..runs import POINTER_EXTENSIONS
from ..utils.io import CorruptFileError, atomic_copy, not_a_torch_file, remove_stale_temporaries, spare_file
from .compiling import strip_compile_prefix
from .config import Config, interval
from .resumption import (
    config_changes,
    describe_changes,
    keep_global_batch,
    refuse_changes,
    results_beyond,
    run_directory_of,
    run_finished,
    same_checkpoint,
)

__all__ = [
    "CheckpointIO",
    "epoch_checkpoints",
    "extract_model_state",
    "find_resumable_checkpoints",
    "prune_epoch_checkpoints",
    "read_checkpoint",
]

CheckpointLike = Mapping | bytes | str | os.PathLike

LOCATION_KEYS = ("dir", "log_path", "checkpoint_dir")
"""Config keys that say where a run's files are: a resume takes them from where its checkpoint is, not from it."""

LAUNCH_KEYS = ("backend", "init_method", "world_size", "rank", "local_rank", "device")
"""Config keys that describe one launch (its processes and devices): a resume never takes them from its checkpoint,
so a run saved on two GPUs resumes on one CPU process as that launch says, not as the last one did."""


def read_checkpoint(checkpoint: CheckpointLike, what: str = "checkpoint", **kwargs: Any) -> Mapping:
    """Return `checkpoint` if it is a Mapping, else load it from its path.

    Args:
        checkpoint: A checkpoint, or the path of one.
        what: How to call it in error messages (`"checkpoint"`, `"pretrained"`).
        **kwargs: Passed to [`danling.load`][danling.utils.io.load].

    Raises:
        FileNotFoundError: If the path does not exist.
        ValueError: If `checkpoint` is neither a path nor a Mapping, the file is not a torch file (a `config.yaml`,
            say), or it does not hold a Mapping.
    """
    if isinstance(checkpoint, Mapping):
        return checkpoint
    if not isinstance(checkpoint, (bytes, str, os.PathLike)):
        raise ValueError(f"{what} is set to {checkpoint!r}, which is neither a path nor a Mapping")
    path = os.fsdecode(checkpoint)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} is set to {path!r} but does not exist")
    # Pointers (`latest.dcp`) are small JSON files that their platform's reader follows.
    content = None if path.endswith(POINTER_EXTENSIONS) or not os.path.isfile(path) else not_a_torch_file(path)
    if content is not None:
        raise ValueError(
            f"{what} {path!r} is not a checkpoint: it holds {content}. A checkpoint is a file the runner saved, "
            "such as checkpoints/latest.pth in a run directory"
        )
    loaded = _load(path, **kwargs)
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{what} {path!r} holds a {type(loaded).__name__}, expected a Mapping")
    return loaded


def find_resumable_checkpoints(
    run_root: str, checkpoint_dir_name: str = "checkpoints", extension: str = ".pth"
) -> list[str]:
    """Checkpoints a run could resume from, newest first.

    `run_root` is `{project_root}/{name}-{id}`; each launch of the run has a timestamped directory under it. The
    timestamps sort in time order, so the newest launch comes first; within a launch, `latest.pth` comes before
    the `epoch-N.pth` snapshots (highest N first). Nothing here is read, only listed.
    """
    if not os.path.isdir(run_root):
        return []
    candidates: list[str] = []
    for timestamp in sorted(os.listdir(run_root), reverse=True):
        directory = os.path.join(run_root, timestamp, checkpoint_dir_name)
        if not os.path.isdir(directory):
            continue
        names = os.listdir(directory)
        latest = f"latest{extension}"
        ordered = ([latest] if latest in names else []) + epoch_checkpoints(names, extension)
        candidates.extend(os.path.join(directory, name) for name in ordered)
    return candidates


def epoch_checkpoints(names: list[str], extension: str = ".pth") -> list[str]:
    """The `epoch-N{extension}` names among `names`, newest (highest N) first.

    Examples:
        >>> epoch_checkpoints(["latest.pth", "epoch-9.pth", "epoch-10.pth", "best.pth", "epoch-x.pth"])
        ['epoch-10.pth', 'epoch-9.pth']
    """
    end = -len(extension)
    numbered = [name for name in names if name.startswith("epoch-") and name.endswith(extension)]
    numbered = [name for name in numbered if name[6:end].isdigit()]
    return sorted(numbered, key=lambda name: int(name[6:end]), reverse=True)


def checkpoint_roles(config: Mapping, position: Mapping | None, epochs: int) -> tuple[bool, bool]:
    """`(snapshot, scored)`: whether a checkpoint is also the `epoch-{epochs}` snapshot, and whether it may be `best`.

    A snapshot is due at an epoch's end every `save_interval` epochs. A checkpoint from inside an epoch (one with a
    `position`) is never a snapshot, and is scored only when taken right after an evaluation (training by steps).
    """
    period = interval(config.get("save_interval"))
    snapshot = position is None and bool(period) and (epochs + 1) % period == 0
    return snapshot, position is None or bool(position.get("evaluated"))


def prune_epoch_checkpoints(directory: str, keep: int | None, extension: str = ".pth") -> list[str]:
    """Delete all but the newest `keep` `epoch-N.pth` files in `directory`; return the paths deleted.

    Called after the newest copy is safely in place, so at least `keep` good copies exist at every instant.
    `latest.pth` and `best.pth` are never touched (a copy shares its data with them through a hard link, so
    deleting the link frees nothing they hold). `None` or a value below 1 keeps every copy.
    """
    if keep is None or keep < 1:
        return []
    removed = []
    for name in epoch_checkpoints(os.listdir(directory), extension)[keep:]:
        path = os.path.join(directory, name)
        os.remove(path)
        removed.append(path)
    return removed


def _load(path: str, **kwargs: Any) -> Any:
    from ..utils.io import load

    return load(path, **kwargs)


def extract_model_state(checkpoint: Mapping) -> Mapping:
    """The model's state dict inside `checkpoint`: nested `model`/`module` keys, `module.` prefixes and
    `torch.compile`'s `_orig_mod.` stripped.

    Examples:
        >>> extract_model_state({"model": {"module": {"w": 1}}, "optimizer": {}})
        {'w': 1}
        >>> extract_model_state({"module.w": 1, "module.b": 2})
        {'w': 1, 'b': 2}
    """
    state = checkpoint
    while isinstance(state, Mapping) and ("model" in state or "module" in state):
        state = state["model"] if "model" in state else state["module"]
    if state and all(isinstance(key, str) and key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    # A model that was wrapped by `torch.compile(model)` when it was saved (by another tool) has `_orig_mod.` keys.
    return strip_compile_prefix(state) if isinstance(state, Mapping) else state


class CheckpointIO:
    """Saving and loading runner state; part of `BaseRunner`."""

    config: Config
    results: NestedDict
    timestamp: str
    model: Any
    ema: Any
    optimizer: Any
    scheduler: Any
    _checkpoint_to_load: Mapping | None
    _resume_position: Mapping | None

    def unwrap(self, model: Any) -> Any:
        """The model without parallel wrappers; the identity here, `TorchRunner` strips DDP and friends."""
        return model

    checkpoint_extension: str = ".pth"
    """How checkpoint names end (`latest.pth`): a backend with another format names its own."""

    @classmethod
    def read_checkpoint_file(cls, checkpoint: CheckpointLike, **kwargs: Any) -> Mapping:
        """The checkpoint at `checkpoint` (or `checkpoint` itself, if a Mapping); a backend may read its own format."""
        return read_checkpoint(checkpoint, **kwargs)

    def stateful_parts(self) -> dict[str, Any]:
        """The objects whose `state_dict()` goes into a checkpoint, by key; `None` entries are skipped."""
        return {
            "model": self.unwrap(self.model) if self.model is not None else None,
            "ema": self.ema,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
        }

    def state_dict(self, cls: Callable = dict) -> Mapping:
        """Everything needed to resume: the config (`runner`), results, timestamp and each part's state.

        Args:
            cls: Mapping type of the result.
        """
        state: dict[str, Any] = {
            "runner": self.config.dict(),
            "results": {index: _plain(result) for index, result in self.results.items()},
            "timestamp": self.timestamp,
        }
        for key, part in self.stateful_parts().items():
            if part is not None and hasattr(part, "state_dict"):
                state[key] = part.state_dict()
        return cls(state)

    def load_state_dict(self, checkpoint: Mapping) -> None:
        """Restore each present part from `checkpoint`, then results and progress counters.

        A part the runner has but the checkpoint lacks is left as it is, with a warning.
        """
        for key, part in self.stateful_parts().items():
            if part is None or not hasattr(part, "load_state_dict"):
                continue
            if key == "model":
                part.load_state_dict(extract_model_state(checkpoint))
            elif key in checkpoint:
                part.load_state_dict(checkpoint[key])
            else:
                warn(f"{key} is not in the checkpoint and keeps its current state", RuntimeWarning, stacklevel=3)
        if "results" in checkpoint:
            self.results = NestedDict()
            for index, result in checkpoint["results"].items():
                self.results[int(index) if isinstance(index, str) and index.isdigit() else index] = NestedDict(result)
        if "runner" in checkpoint:
            self._restore_progress(checkpoint["runner"], checkpoint.get("position"))

    def _restore_progress(self, config: Mapping, position: Mapping | None = None) -> None:
        # Counters count work done. A checkpoint taken at an epoch's end resumes at the next epoch; one taken
        # inside an epoch (it records its position) resumes inside that same epoch.
        for counter in ("iters", "steps", "epochs"):
            self.config[counter] = config.get(counter, 0)
        self.config.iter_begin = self.config.iters
        self.config.step_begin = self.config.steps
        self.config.epoch_begin = self.config.epochs + (0 if position else 1)
        self._resume_position = position

    def save_checkpoint(self, name: str = "latest", epochs: int | None = None, save_best: bool = True) -> None:
        """Save the state to `checkpoint_dir/{name}.pth` atomically, on the main process.

        `best.pth` is made from it (a hard link, or an atomic copy) when the latest score is the best, and
        `epoch-{epochs}.pth` when `config.save_interval` is positive and `epochs + 1` is a multiple of it (only the
        newest `config.max_epoch_checkpoints` of those are kept, when that is set). A failed write raises with the
        path in the message; the previous files stay intact.

        Never collective: call it on every process or on the main process only; the others return at once. What
        each process holds on its own (random generators, say) comes from the snapshot the training loop takes
        where every process already is (see `TorchRunner.collect_process_state`).

        Args:
            name: Name of the checkpoint. Defaults to `"latest"`.
            epochs: Epoch index to name a snapshot after. Defaults to `config.epochs`.
            save_best: Also update `best.pth` when `is_best`.
        """
        if not self.is_main_process:  # type: ignore[attr-defined]
            return
        self.wait_for_checkpoint()  # the save in flight completes (or its failure is raised) before this one starts
        writer = self.checkpoint_writer()
        state = self.state_dict()
        epochs = self.config.epochs if epochs is None else epochs
        checkpoint_dir = self.checkpoint_dir  # type: ignore[attr-defined]
        if not self.__dict__.get("_checkpoint_dir_tidied"):
            # A process killed while saving (the run being resumed now, say) leaves its temporary file behind.
            remove_stale_temporaries(checkpoint_dir)
            self.__dict__["_checkpoint_dir_tidied"] = True
        latest_path = os.path.join(checkpoint_dir, f"{name}.pth")
        spare = bool(self.config.get("checkpoint_spare")) and latest_path.endswith(".pth")
        # Decided now, from the state at this step: a background write must not read what training changes later.
        snapshot, scored = checkpoint_roles(self.config, state.get("position"), epochs)
        best = scored and save_best and self.is_best  # type: ignore[attr-defined]
        keep = self.config.get("max_epoch_checkpoints")

        def write(state: Mapping) -> None:
            self.save(state, latest_path, spare=spare)  # type: ignore[attr-defined]
            if snapshot:
                atomic_copy(latest_path, os.path.join(checkpoint_dir, f"epoch-{epochs}.pth"))
                prune_epoch_checkpoints(checkpoint_dir, keep)
            if best:
                # The `best` being replaced becomes `latest`'s spare: the next save rewrites it in place.
                retire = spare_file(latest_path) if spare else None
                atomic_copy(latest_path, os.path.join(checkpoint_dir, "best.pth"), retire_to=retire)

        if writer is None:
            write(state)
        else:
            writer.submit(state, write, latest_path)

    def checkpoint_writer(self) -> Any:
        """The background [`CheckpointWriter`][danling.runner.async_checkpoint.CheckpointWriter] of this runner when
        `config.async_checkpoint` is on, else `None`; made at the first save, and kept (with its buffers)."""
        if not self.config.get("async_checkpoint"):
            return None
        writer = self.__dict__.get("_checkpoint_writer")
        if writer is None:
            from .async_checkpoint import CheckpointWriter  # imports torch, which this module does not

            writer = self.__dict__["_checkpoint_writer"] = CheckpointWriter()
        return writer

    def wait_for_checkpoint(self, raise_error: bool = True) -> BaseException | None:
        """Wait for the checkpoint being written in the background, if any, and raise its failure.

        With `raise_error=False`, the failure is returned instead (for a caller already raising another error).
        A no-op without `config.async_checkpoint`. Training calls it at its end; call it yourself before reading a
        checkpoint you saved with `save_checkpoint` outside `train`.
        """
        writer = self.__dict__.get("_checkpoint_writer")
        return None if writer is None else writer.wait(raise_error)

    def load_config(self, checkpoint: CheckpointLike, overwrite: bool = False, *args: Any, **kwargs: Any) -> None:
        """Take the config of the run that wrote `checkpoint`, to continue it.

        Keys the current config lacks or leaves `None` are taken from the checkpoint (all keys when
        `overwrite=True`), except those of one launch (`LAUNCH_KEYS`:
        backend, devices, ranks) and, when the checkpoint sits in its run's directory, the storage locations; the
        progress counters are restored, so the run resumes where the checkpoint was taken
        (the next epoch, or inside the epoch for a mid-epoch checkpoint); and the run keeps its identity
        (`experiment_id`, `run_id` and `timestamp`), so it writes to the same run directory.

        Args:
            checkpoint: Checkpoint (or its path) to load.
            overwrite: Let the checkpoint's values replace the current ones.
            *args: Unused; kept for signature compatibility.
            **kwargs: Passed to [`danling.load`][danling.utils.io.load].

        Raises:
            FileNotFoundError: If `checkpoint` does not exist.
            ValueError: If `checkpoint` is not a valid checkpoint.
        """
        ckpt = self.read_checkpoint_file(checkpoint, **kwargs)
        config = dict(ckpt.get("runner", ckpt))
        source = self.config.get("checkpoint") if isinstance(checkpoint, Mapping) else os.fsdecode(checkpoint)
        record = None if overwrite else self._check_config_changes(config, source, len(ckpt.get("rng") or [None]))
        run_dir = None
        if source is not None and self.config.get("dir") is None:
            run_dir = run_directory_of(source, config.get("checkpoint_dir_name") or self.config.checkpoint_dir_name)
        if run_dir is not None:
            # The run continues where its checkpoint is (a copied run in the copy): the saved locations are stale.
            for key in LOCATION_KEYS:
                config.pop(key, None)
        for key in LAUNCH_KEYS:
            config.pop(key, None)
        # A key the current config leaves unset (absent or None, like a seed to be drawn) takes the checkpoint's
        # value: otherwise a resumed run would draw a new seed and see its data in a different order.
        unset = {k: v for k, v in config.items() if k != "checkpoint" and self.config.get(k) is None}
        if "seed" in unset and "seed_drawn" in config:
            unset["seed_drawn"] = config["seed_drawn"]  # a drawn seed stays out of the run's identity
        self.config.merge({k: v for k, v in config.items() if k != "checkpoint"}, overwrite=overwrite)
        self.config.merge(unset, overwrite=True)
        for key in ("experiment_id", "run_id"):
            if config.get(key) is not None:
                self.config[key] = config[key]
        fresh_timestamp = self.timestamp
        if "timestamp" in ckpt:
            self.timestamp = ckpt["timestamp"]
        for cached in ("id", "uuid", "log_path"):
            self.__dict__.pop(cached, None)
        self._restore_progress(config, ckpt.get("position"))
        if run_dir is not None:
            self.__dict__["_run_dir"] = self._resume_directory(run_dir, ckpt, fresh_timestamp)
        if record is not None:
            history = list(self.config.get("config_changes") or [])
            record.update(epoch=self.config.epoch_begin, step=self.config.steps, iter=self.config.iters)
            history.append(record)
            self.config.config_changes = history

    def _check_config_changes(self, saved: Mapping, source: str | None, saved_world: int) -> dict[str, Any] | None:
        """Stop a resume whose config shapes the training differently, unless allowed; return the change record.

        `saved_world` is the number of processes that wrote the checkpoint: batch size and accumulation may change
        with the number of processes where the global batch stays the same.
        """
        shaping, steering = config_changes(saved, self.config)
        keep_global_batch(shaping, steering, saved, self.config, saved_world, self.world_size)  # type: ignore[attr-defined]
        if shaping and not self.config.get("allow_config_change"):
            raise refuse_changes(shaping, source)
        notes = self.__dict__.setdefault("_start_notes", [])
        if steering:
            notes.append(f"resume: changed {describe_changes(steering)}")
        if shaping:
            notes.append(f"resume: changed with allow_config_change: {describe_changes(shaping)}")
            self.__dict__["_reapply_hyperparameters"] = True
        if not (shaping or steering):
            return None
        changes = {key: [old, new] for key, (old, new) in {**steering, **shaping}.items()}
        return {"checkpoint": source, "changes": changes, "allowed": sorted(shaping)}

    def _newer_checkpoint_in(self, run_dir: str, source: str | None) -> str | None:
        """A checkpoint of `run_dir`, newer than `source` and intact, if there is one; main process only."""
        if source is None:
            return None
        run_root = os.path.dirname(run_dir)
        checkpoint_dir_name, extension = self.config.checkpoint_dir_name, self.checkpoint_extension
        for path in find_resumable_checkpoints(run_root, checkpoint_dir_name, extension):
            if os.path.dirname(os.path.dirname(path)) != run_dir:
                continue
            if same_checkpoint(path, source):
                return None  # newest first: everything after it is older
            try:
                self.read_checkpoint_file(path)
            except (CorruptFileError, ValueError, OSError):
                continue
            return path
        return None

    def _resume_directory(self, run_dir: str, checkpoint: Mapping, fresh_timestamp: str) -> str:
        """`run_dir`, unless it recorded more of the run than `checkpoint` holds and that record is worth keeping:
        then a new directory beside it, said at start.

        Results past the checkpoint are kept when the run finished, or when its directory holds a checkpoint, intact,
        newer than the one resumed from: resuming there from an older checkpoint would overwrite them. Results past
        the newest intact checkpoint of an unfinished run (a crash between an epoch's results and its save) are
        recomputed by the resume, in place, as `resume=True` would.
        """
        chosen = run_dir
        if self.is_main_process:  # type: ignore[attr-defined]
            source = self.config.get("checkpoint")
            beyond = results_beyond(run_dir, checkpoint)
            if beyond is not None and (run_finished(run_dir) or self._newer_checkpoint_in(run_dir, source) is not None):
                chosen = os.path.join(os.path.dirname(run_dir), fresh_timestamp)
                if os.path.exists(chosen):
                    chosen = f"{chosen}-{os.getpid()}"
        chosen = self.broadcast_object(chosen)  # type: ignore[attr-defined]
        if chosen != run_dir:
            self.__dict__.setdefault("_start_notes", []).append(
                f"resume: {run_dir} already holds results past this checkpoint; not overwriting them, this run "
                f"writes to {chosen}"
            )
        return chosen

    def load_checkpoint(self, checkpoint: CheckpointLike, *args: Any, **kwargs: Any) -> None:
        """Restore model, EMA, optimizer, scheduler, results and progress from `checkpoint`.

        Training then continues at the epoch after the checkpoint's. When `checkpoint` is a path, it is stored in
        `config.checkpoint`; a Mapping is never stored in the config.

        Args:
            checkpoint: Checkpoint (or its path) to load.
            *args: Unused; kept for signature compatibility.
            **kwargs: Passed to [`danling.load`][danling.utils.io.load].

        Raises:
            ValueError: If `model` is not defined, or `checkpoint` is not a valid checkpoint.
            FileNotFoundError: If `checkpoint` does not exist.

        See Also:
            [`from_checkpoint`][danling.BaseRunner.from_checkpoint]: Build a runner from a checkpoint.
            [`load_pretrained`][danling.BaseRunner.load_pretrained]: Load only the model weights.
        """
        if self.model is None:
            raise ValueError("model is not defined: assign self.model before loading a checkpoint")
        self.wait_for_checkpoint()  # a checkpoint still being written in the background is read complete, or not
        ckpt = self.read_checkpoint_file(checkpoint, **kwargs)
        self.load_state_dict(ckpt)
        if not isinstance(checkpoint, Mapping):
            self.config.checkpoint = os.fsdecode(checkpoint)

    @classmethod
    def from_checkpoint(cls, checkpoint: CheckpointLike, *args: Any, **kwargs: Any) -> Any:
        """Build a runner that continues the run which wrote `checkpoint`.

        The runner is constructed from the checkpoint's config, takes over its identity and run directory, and
        restores every part once its `__init__` has built them; training resumes at the next epoch.

        Args:
            checkpoint: Checkpoint (or its path) to load.
            *args: Unused; kept for signature compatibility.
            **kwargs: Passed to [`danling.load`][danling.utils.io.load].

        Raises:
            ValueError: If `checkpoint` is not a valid checkpoint or holds no `runner` config.
            FileNotFoundError: If `checkpoint` does not exist.
        """
        ckpt = cls.read_checkpoint_file(checkpoint, **kwargs)
        if "runner" not in ckpt:
            raise ValueError(f"checkpoint has no 'runner' config; its keys are {sorted(map(str, ckpt))}")
        config = Config(ckpt["runner"])
        config.checkpoint = None if isinstance(checkpoint, Mapping) else os.fsdecode(checkpoint)
        runner = cls.__new__(cls, config)  # type: ignore[call-arg]  # Runner.__new__ picks the platform from it
        # Handed to __init__ so the file is read once and the model is restored after the subclass builds it.
        object.__setattr__(runner, "_pending_checkpoint", ckpt)
        runner.__init__(config)  # type: ignore[misc]
        runner.__post_init__()  # type: ignore[attr-defined]
        return runner

    def load_pretrained(self, checkpoint: CheckpointLike, *args: Any, **kwargs: Any) -> None:
        """Load only the model weights from `checkpoint` (nested `model`/`module` keys are stripped).

        Raises:
            ValueError: If `model` is not defined, or `checkpoint` is not a valid checkpoint.
            FileNotFoundError: If `checkpoint` does not exist.
        """
        if self.model is None:
            raise ValueError("model is not defined: assign self.model before loading pretrained weights")
        ckpt = read_checkpoint(checkpoint, what="pretrained", **kwargs)
        self.unwrap(self.model).load_state_dict(extract_model_state(ckpt))


def _plain(result: Any) -> Any:
    return result.dict() if hasattr(result, "dict") else dict(result)
