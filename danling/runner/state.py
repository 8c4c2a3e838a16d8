"""What each process holds on its own, gathered in the loop and composed into checkpoints: part of `TorchRunner`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from warnings import warn

import torch

from ..utils import distributed as du
from ..utils.seed import get_rng_state, set_rng_state
from .parts import RunnerParts

__all__ = ["ProcessStateMixin"]


class ProcessStateMixin(RunnerParts):
    """Per-process state (random generators, loader generators, mid-epoch measures) in checkpoints.

    Part of [`TorchRunner`][danling.TorchRunner]. The training loop takes a snapshot of every process's state
    where every process already is; `state_dict` reads it, so saving never waits for the other processes.
    """

    _position: dict[str, Any] | None = None
    _epoch_generator_state: torch.Tensor | None = None
    # Meters and metrics of this process from a checkpoint taken inside an epoch, restored by `train_epoch`.
    _resume_state: Mapping | None = None
    # Every process's own state (random generators, loader generators, mid-epoch measures), by rank, as gathered
    # at the last point where the loop had every process together: a save never has to wait for the others.
    _process_states: list[Any] | None = None

    def collect_process_state(self) -> None:
        """Snapshot what every process holds on its own, for the checkpoints saved until the next snapshot.

        Collective when distributed: the training loop calls it where every process already is (each epoch's end,
        and the optimizer step a mid-epoch checkpoint is taken at), so that `save_checkpoint` never needs one.
        """
        local = self._local_process_state()
        self._process_states = du.all_gather_object(local) if self.distributed else [local]

    def _local_process_state(self) -> dict[str, Any]:
        """This process's random generators and loader generators, and inside an epoch its meters and metrics."""
        rng = get_rng_state(self.device)
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
                set_rng_state(entries[rank], self.device)
                for split, generator_state in entries[rank].get("dataloaders", {}).items():
                    generator = getattr(self.dataloaders.get(split), "generator", None)
                    if generator is not None and generator_state is not None:
                        generator.set_state(generator_state)
            else:
                self._resume_state = entries[rank]
