"""Checkpoints that are directories, published through small pointer files switched atomically.

A backend whose checkpoint is several files (FSDP's Distributed Checkpoint, Accelerate's `save_state`, DeepSpeed's
engine checkpoint) writes each save into a new directory under `checkpoint_dir/{states_dir}/`. Only once the
directory is complete does the main process point `latest{extension}` at it: a JSON file `{"path": "<directory
relative to checkpoint_dir>"}`, replaced atomically. `best` and `epoch-N` are pointers too, so nothing is copied,
and a directory no pointer names any more (an older `latest`, a save killed half-way) is deleted after the switch.
A killed save therefore never leaves a pointer naming an incomplete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..utils.io import CorruptFileError, atomic_write, fsync_dir
from .checkpoint import checkpoint_roles, prune_epoch_checkpoints

__all__ = ["PointedCheckpoints", "durable_size", "fresh_tag", "point", "remove_unreferenced", "resolve_checkpoint"]

T = TypeVar("T")


def resolve_checkpoint(path: str) -> str:
    """The checkpoint directory a pointer file (`latest.dcp`, say) names, or `path` if it is a directory.

    Raises:
        FileNotFoundError: If `path` does not exist.
        CorruptFileError: If the pointer file cannot be read.
    """
    if os.path.isdir(path):
        return path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    with open(path, encoding="utf-8") as file:
        try:
            target = json.load(file)["path"]
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptFileError(f"checkpoint pointer {path!r} is unreadable: {error}") from None
    return os.path.join(os.path.dirname(path), target)


def fresh_tag(states: str, name: str, steps: int) -> str:
    """A name for a new checkpoint directory under `states` that no directory has yet: `{name}-s{steps}-{n}`.

    Never an existing one: a directory of an earlier launch of the run (a save killed half-way, or the very
    checkpoint this launch resumed from, which `latest` names until the new save completes) is never written into.
    """
    number = 1
    while os.path.exists(os.path.join(states, f"{name}-s{steps}-{number}")):
        number += 1
    return f"{name}-s{steps}-{number}"


def durable_size(path: str) -> int:
    """The size of the file at `path`, once flushed to disk: a checkpoint records it to catch later truncation."""
    with open(path, "rb") as file:
        os.fsync(file.fileno())
    return os.path.getsize(path)


def point(checkpoint_dir: str, name: str, target: str, extension: str) -> None:
    """Point `checkpoint_dir/{name}{extension}` at `target` (relative to `checkpoint_dir`), atomically."""
    with atomic_write(os.path.join(checkpoint_dir, f"{name}{extension}"), "w") as file:
        json.dump({"path": target}, file)


def remove_unreferenced(checkpoint_dir: str, states_dir: str, extension: str) -> None:
    """Delete the directories under `checkpoint_dir/states_dir` that no `*{extension}` pointer names."""
    referenced = set()
    for name in os.listdir(checkpoint_dir):
        if name.endswith(extension):
            try:
                referenced.add(os.path.normpath(resolve_checkpoint(os.path.join(checkpoint_dir, name))))
            except (OSError, CorruptFileError):
                continue
    states = os.path.join(checkpoint_dir, states_dir)
    for tag in os.listdir(states):
        path = os.path.normpath(os.path.join(states, tag))
        if os.path.isdir(path) and path not in referenced:  # DeepSpeed also leaves its conversion scripts here
            shutil.rmtree(path, ignore_errors=True)


class PointedCheckpoints:
    """Publishing a complete checkpoint directory: `latest`, `epoch-N` and `best` pointers, then the clean-up.

    Mixed into a runner whose class sets `checkpoint_extension` (the pointers' extension) and `checkpoint_states_dir`
    (the directory under `checkpoint_dir` that holds one directory per save).
    """

    checkpoint_extension: str
    checkpoint_states_dir: str
    config: Any
    checkpoint_dir: str
    is_best: bool
    is_main_process: bool
    _position: dict[str, Any] | None

    if TYPE_CHECKING:

        def broadcast_object(self, obj: Any, src: int = 0) -> Any: ...

    def run_on_main_process(self, function: Callable[[], T], failure: str) -> T:
        """`function()` run on the main process, returned on every process. Collective.

        A failure on the main process is raised there and, as a `RuntimeError` starting with `failure` and naming
        the error, on every other process: none is left waiting in its next collective.
        """
        result: T | None = None
        error: BaseException | None = None
        if self.is_main_process:
            try:
                result = function()
            # Whatever it is, the other processes must hear of it before the main process raises it.
            except BaseException as raised:
                error = raised
        message = None if error is None else f"{type(error).__name__}: {error}"
        result, message = self.broadcast_object((result, message))
        if error is not None:
            raise error
        if message is not None:
            raise RuntimeError(f"{failure}: the main process failed: {message}")
        return result  # type: ignore[return-value]

    def finish_on_main_process(self, tag: str, finish: Callable[[], None]) -> None:
        """Run `finish` (complete and publish checkpoint `tag`) on the main process; every process returns after it.

        Collective. A failure on the main process is raised there and, as a `RuntimeError` naming it, on every other
        process: none is left waiting in its next collective, and none reads `latest` before it names `tag`.
        """
        self.run_on_main_process(finish, f"checkpoint {tag} is incomplete")

    def resolve_on_main_process(self, path: str) -> str:
        """The directory the pointer `path` names (or `path`, a directory) as the main process reads it, on every
        process. Collective.

        Resolved once, so every process loads the same checkpoint even if the pointer moves meanwhile.
        """
        return self.run_on_main_process(lambda: resolve_checkpoint(path), f"checkpoint {path!r} cannot be read")

    def publish_checkpoint(self, name: str, tag: str, epochs: int, save_best: bool) -> None:
        """Point `{name}` at the complete checkpoint `tag`, and `epoch-{epochs}`/`best` when due; main process only.

        As for single-file checkpoints, a checkpoint from inside an epoch is never an epoch snapshot, and is `best`
        only when taken right after an evaluation (training by steps).
        """
        snapshot, scored = checkpoint_roles(self.config, self._position, epochs)
        self.publish_checkpoint_as(name, tag, epochs, snapshot, scored and save_best and self.is_best)

    def publish_checkpoint_as(self, name: str, tag: str, epochs: int, snapshot: bool, best: bool) -> None:
        """Point `{name}` at the complete checkpoint `tag`, `epoch-{epochs}` if `snapshot` and `best` if `best`;
        main process only. The roles are decided by the caller (when the checkpoint was taken, for one written in
        the background)."""
        checkpoint_dir, extension = self.checkpoint_dir, self.checkpoint_extension
        target = os.path.join(self.checkpoint_states_dir, tag)
        # The checkpoint's entries, its own entry and its parent's reach the disk before any pointer names it, so a
        # power loss cannot leave a pointer to a directory that lost files (or was never recorded).
        states = os.path.join(checkpoint_dir, self.checkpoint_states_dir)
        for directory in (os.path.join(checkpoint_dir, target), states, checkpoint_dir):
            fsync_dir(directory)
        point(checkpoint_dir, name, target, extension)
        if snapshot:
            point(checkpoint_dir, f"epoch-{epochs}", target, extension)
            prune_epoch_checkpoints(checkpoint_dir, self.config.get("max_epoch_checkpoints"), extension)
        if best:
            point(checkpoint_dir, "best", target, extension)
        remove_unreferenced(checkpoint_dir, self.checkpoint_states_dir, extension)
