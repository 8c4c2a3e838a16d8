"""`Runner`: the runner for the platform `config.platform` names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .torch_runner import TorchRunner

__all__ = ["PLATFORM_RUNNERS", "Runner"]

PLATFORM_RUNNERS: dict[str, type | None] = {
    "auto": TorchRunner,
    "torch": TorchRunner,
    "accelerate": None,
    "deepspeed": None,
}
"""Runner class of each platform; `None` marks platforms reserved for backends that do not exist yet."""


class Runner(TorchRunner):
    """The runner to subclass when the platform comes from the config.

    `Runner(config)` behaves as [`TorchRunner`][danling.TorchRunner] for `config.platform` of `"torch"` or
    `"auto"`. `"accelerate"` and `"deepspeed"` are reserved and raise `NotImplementedError`; any other value
    raises `ValueError` listing the valid platforms.

    Examples:
        >>> Runner({"platform": "tpu", "log": False})
        Traceback (most recent call last):
        ValueError: unknown platform 'tpu'; expected one of: auto, torch, accelerate, deepspeed
    """

    def __init__(self, config: Any) -> None:
        platform = config.get("platform", "auto") if isinstance(config, Mapping) else "auto"
        check_platform(platform)
        super().__init__(config)


def check_platform(platform: str) -> type:
    """The runner class for `platform`; raise if it is unknown or not available yet."""
    if platform not in PLATFORM_RUNNERS:
        raise ValueError(f"unknown platform {platform!r}; expected one of: {', '.join(PLATFORM_RUNNERS)}")
    runner = PLATFORM_RUNNERS[platform]
    if runner is None:
        available = ", ".join(name for name, cls in PLATFORM_RUNNERS.items() if cls is not None)
        raise NotImplementedError(f"platform {platform!r} is not available yet; use one of: {available}")
    return runner
