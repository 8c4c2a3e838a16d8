"""A profiler window: a `torch.profiler` trace of a few optimizer steps of `train()`, and nothing outside them.

`config.profile` names the window in optimizer steps of this launch: `wait` steps untouched, `warmup` steps traced
and discarded (the profiler's own start-up), then `active` steps traced and written. Each process writes its trace
under `{run dir}/profile/` as `rank{r}.*.pt.trace.json`, which TensorBoard's profiler plugin
(`tensorboard --logdir {run dir}/profile`) and Perfetto (ui.perfetto.dev, "Open trace file") open.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

__all__ = ["DEFAULT_PROFILE_WINDOW", "ProfilerWindow", "profile_window"]

DEFAULT_PROFILE_WINDOW = {"wait": 5, "warmup": 1, "active": 3}
"""The window of `profile: true`: steps 6 to 8 of the launch traced, after 5 untouched and 1 of warm-up."""

_WINDOW_KEYS = ("wait", "warmup", "active")
_OPTIONS = ("record_shapes", "profile_memory", "with_stack", "with_flops")


def profile_window(value: Any) -> dict[str, Any] | None:
    """The profiler window `config.profile` asks for, or `None` when nothing is profiled.

    `value` is a bool (or `true`/`false` on the command line), or a mapping of `wait`, `warmup`, `active` (optimizer
    steps; the defaults of [`DEFAULT_PROFILE_WINDOW`][danling.runner.profiling.DEFAULT_PROFILE_WINDOW] fill what is
    missing) and `torch.profiler.profile`'s flags `record_shapes`, `profile_memory`, `with_stack`, `with_flops`.

    Examples:
        >>> profile_window(False) is None, profile_window("false") is None
        (True, True)
        >>> profile_window(True)
        {'wait': 5, 'warmup': 1, 'active': 3}
        >>> profile_window({"wait": 2, "active": 1, "record_shapes": True})
        {'wait': 2, 'warmup': 1, 'active': 1, 'record_shapes': True}

    Raises:
        ValueError: If `value` is none of these, names an unknown key, or a step count is not a whole number (or
            `active` is below 1).
    """
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
        value = True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0", "none", ""):
        return None
    if value is True:
        return dict(DEFAULT_PROFILE_WINDOW)
    if not isinstance(value, Mapping):
        raise ValueError(
            f"config.profile is {value!r}; expected true, false, or a mapping such as {{wait: 5, active: 3}}"
        )
    unknown = sorted(set(value) - set(_WINDOW_KEYS) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"config.profile has unknown key(s) {unknown}; expected {list(_WINDOW_KEYS + _OPTIONS)}")
    window = {**DEFAULT_PROFILE_WINDOW, **value}
    for key in _WINDOW_KEYS:
        steps = window[key]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < (1 if key == "active" else 0):
            least = 1 if key == "active" else 0
            raise ValueError(f"config.profile.{key} is {steps!r}; expected a whole number of steps, at least {least}")
    return window


class ProfilerWindow:
    """A `torch.profiler.profile` over one window of optimizer steps, writing one trace per process.

    [`step`][danling.runner.profiling.ProfilerWindow.step] is called after each optimizer step; once the window is
    written, the profiler is stopped and each later call costs one comparison.

    Args:
        window: What [`profile_window`][danling.runner.profiling.profile_window] returns.
        directory: Where the traces go.
        rank: This process's rank, in the trace's name.
    """

    def __init__(self, window: Mapping[str, Any], directory: str, rank: int = 0) -> None:
        self.directory = directory
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self._steps_left = window["wait"] + window["warmup"] + window["active"]
        self._profiler: profile | None = profile(
            activities=activities,
            schedule=schedule(wait=window["wait"], warmup=window["warmup"], active=window["active"], repeat=1),
            on_trace_ready=tensorboard_trace_handler(directory, worker_name=f"rank{rank}"),
            record_shapes=bool(window.get("record_shapes", False)),
            profile_memory=bool(window.get("profile_memory", False)),
            with_stack=bool(window.get("with_stack", False)),
            with_flops=bool(window.get("with_flops", False)),
        )
        os.makedirs(directory, exist_ok=True)
        self._profiler.start()

    def step(self) -> None:
        """Mark the end of one optimizer step; the trace is written at the end of the window's last one."""
        if self._profiler is None:
            return
        self._profiler.step()
        self._steps_left -= 1
        if self._steps_left <= 0:
            self.stop()

    def stop(self) -> None:
        """Stop profiling (a window cut short by the end of training is written with the steps it holds)."""
        profiler, self._profiler = self._profiler, None
        if profiler is not None:
            profiler.stop()
