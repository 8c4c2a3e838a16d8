"""What a resume may change, and where it writes: pure functions the checkpoint loader calls.

A resume compares the checkpoint's config with the one it was started with. Keys that only steer the rest of the
run ([`RESUME_STEERING_KEYS`][danling.defaults.RESUME_STEERING_KEYS]) may change and are reported; any other change
stops the resume before training unless `allow_config_change` is set. A resume continues in the run directory that
holds its checkpoint, unless that directory's results already go past the checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from ..defaults import PROGRESS_AND_STORAGE_NAMES, RESUME_IDENTITY_KEYS, RESUME_STEERING_KEYS
from ..runs import POINTER_EXTENSIONS

__all__ = [
    "ConfigChangeError",
    "config_changes",
    "describe_changes",
    "reapply_hyperparameters",
    "refuse_changes",
    "results_beyond",
    "run_finished",
    "same_checkpoint",
    "run_directory_of",
]

Changes = dict[str, tuple[Any, Any]]


class ConfigChangeError(ValueError):
    """A resume was started with a config that differs from its checkpoint's in keys that shape the training."""


def _flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_changes(saved: Mapping, current: Mapping) -> tuple[Changes, Changes]:
    """`(shaping, steering)`: the keys `current` sets to a value other than `saved`'s, as `{key: (old, new)}`.

    A key `current` leaves unset (`None`) is not a change: the checkpoint's value fills it in. Progress counters,
    storage locations and the run's identity are never changes. Nested keys are compared leaf by leaf, spelled with
    dots (`optim.lr`).

    Examples:
        >>> shaping, steering = config_changes(
        ...     {"optim": {"lr": 0.1}, "epoch_end": 10, "seed": 1, "steps": 40},
        ...     {"optim": {"lr": 0.5}, "epoch_end": 20, "seed": None, "steps": 0},
        ... )
        >>> shaping, steering
        ({'optim.lr': (0.1, 0.5)}, {'epoch_end': (10, 20)})
    """
    old, new = _flatten(saved), _flatten(current)
    shaping: Changes = {}
    steering: Changes = {}
    for key, value in new.items():
        top = key.split(".", 1)[0]
        if value is None or top in PROGRESS_AND_STORAGE_NAMES or top in RESUME_IDENTITY_KEYS:
            continue
        previous = old.get(key)
        if _same(previous, value):
            continue
        target = steering if key in RESUME_STEERING_KEYS or top in RESUME_STEERING_KEYS else shaping
        target[key] = (previous, value)
    return shaping, steering


GLOBAL_BATCH_KEYS = frozenset({"accum_steps", "dataloader.batch_size", "dataloader.train.batch_size"})
"""Keys that a resume on another number of processes may change together, if the global batch stays the same."""


def global_batch(config: Mapping, world_size: int) -> int:
    """Samples per optimizer step over all processes: the training batch size × `accum_steps` × `world_size`."""
    flat = _flatten(config)
    batch = flat.get("dataloader.train.batch_size") or flat.get("dataloader.batch_size") or 1
    return int(batch) * int(flat.get("accum_steps") or 1) * world_size


def keep_global_batch(
    shaping: Changes, steering: Changes, saved: Mapping, current: Mapping, saved_world: int, world: int
) -> None:
    """Move batch-size and accumulation changes from `shaping` to `steering` where they keep the global batch.

    Resuming on another number of processes with `accum_steps` (or the batch size) scaled to match trains on the
    same samples per optimizer step: the same experiment, which only the order of float additions tells apart.
    """
    batch_changes = [key for key in shaping if key in GLOBAL_BATCH_KEYS]
    if not batch_changes or global_batch(saved, saved_world) != global_batch(current, world):
        return
    for key in batch_changes:
        steering[key] = shaping.pop(key)


def _same(a: Any, b: Any) -> bool:
    # A YAML or checkpoint round trip turns tuples into lists; 1 and 1.0 are the same setting.
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def describe_changes(changes: Changes) -> str:
    """`key: old → new` for each change, separated by commas.

    Examples:
        >>> describe_changes({"optim.lr": (0.1, 0.5), "note": (None, "x")})
        "optim.lr: 0.1 → 0.5, note: (unset) → 'x'"
    """
    return ", ".join(f"{key}: {_show(old)} → {_show(new)}" for key, (old, new) in changes.items())


def _show(value: Any) -> str:
    return "(unset)" if value is None else repr(value)


def refuse_changes(changes: Changes, checkpoint: str | None) -> ConfigChangeError:
    """The error that stops a resume whose config changes keys that shape the training."""
    where = f" {checkpoint}" if checkpoint else ""
    lines = "\n".join(f"  {key}: {_show(old)} → {_show(new)}" for key, (old, new) in changes.items())
    return ConfigChangeError(
        f"the config differs from the checkpoint's{where} in keys that shape the training:\n{lines}\n"
        "Resuming would mix two runs under one record. Run with the checkpoint's values, start a new run, or "
        "pass --allow_config_change to continue with the new values (they take effect, and config.diff.yaml "
        "records from which point)."
    )


def run_directory_of(checkpoint: str, checkpoint_dir_name: str) -> str | None:
    """The run directory holding `checkpoint` (`{run}/{checkpoint_dir_name}/latest.pth` gives `{run}`), else `None`.

    Examples:
        >>> run_directory_of("/runs/a/2024/checkpoints/latest.pth", "checkpoints")
        '/runs/a/2024'
        >>> run_directory_of("/weights/model.pth", "checkpoints") is None
        True
    """
    parent = os.path.dirname(os.path.abspath(checkpoint))
    if os.path.basename(parent) != checkpoint_dir_name:
        return None
    return os.path.dirname(parent)


def results_beyond(run_dir: str, checkpoint: Mapping) -> int | None:
    """The last result index in `run_dir`'s `results.json` if it is past the last one `checkpoint` holds, else `None`.

    Such a directory recorded more of the run than the checkpoint knows: resuming there would overwrite it.
    """
    path = os.path.join(run_dir, "results.json")
    try:
        with open(path, encoding="utf-8") as file:
            recorded = json.load(file).get("results") or {}
    except (OSError, ValueError, AttributeError):
        # No record (or one that cannot be read): nothing there to protect.
        return None
    last_recorded = max((int(index) for index in recorded if str(index).lstrip("-").isdigit()), default=None)
    held = checkpoint.get("results") or {}
    last_held = max((int(index) for index in held if str(index).lstrip("-").isdigit()), default=-1)
    if last_recorded is None or last_recorded <= last_held:
        return None
    return last_recorded


def run_finished(run_dir: str) -> bool:
    """Whether `run_dir`'s `run.json` says the run finished."""
    try:
        with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as file:
            return json.load(file).get("state") == "finished"
    except (OSError, ValueError, AttributeError):
        return False


def same_checkpoint(a: str, b: str) -> bool:
    """Whether paths `a` and `b` name the same checkpoint: one file (a hard link too), or pointers to one directory."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        return False
    extension = os.path.splitext(a)[1]
    if extension not in POINTER_EXTENSIONS or extension != os.path.splitext(b)[1]:
        return False
    # Pointer files (`latest.dcp`, `epoch-3.dcp`) are small JSON files that name a directory.
    from ..utils.io import CorruptFileError
    from .pointers import resolve_checkpoint

    try:
        return os.path.samefile(resolve_checkpoint(a), resolve_checkpoint(b))
    except (OSError, CorruptFileError):
        return False


def reapply_hyperparameters(optimizer: Any, scheduler: Any, fresh_groups: list[dict], fresh_base: list | None) -> None:
    """Put the optimizer's hyperparameters of the new config back after a checkpoint restored the old ones.

    `fresh_groups` are the param groups (less `params`) and `fresh_base` the scheduler's `base_lrs` as the runner
    built them from the new config, before the checkpoint was loaded. With a scheduler, the learning rate it
    reached is rescaled by new base / old base, so the schedule continues from where it was on the new scale.
    """
    base_lrs = getattr(scheduler, "base_lrs", None) if scheduler is not None else None
    for index, (group, fresh) in enumerate(zip(optimizer.param_groups, fresh_groups)):
        for key, value in fresh.items():
            if key not in ("lr", "initial_lr"):
                group[key] = value
        if base_lrs is None or fresh_base is None:
            group["lr"] = fresh["lr"]
            continue
        old, new = base_lrs[index], fresh_base[index]
        if old == new:
            continue
        group["lr"] = group["lr"] * new / old if old else new
        group["initial_lr"] = new
        base_lrs[index] = new
    if base_lrs is not None and hasattr(scheduler, "get_lr_at"):
        # A closed-form schedule (danling's LRScheduler) gives the exact lr of this step on the new scale.
        for group, lr in zip(optimizer.param_groups, scheduler.get_lr_at(scheduler.last_epoch)):
            group["lr"] = lr
    if base_lrs is not None and hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
