"""`Runner`: the runner for the platform `config.platform` names."""

from __future__ import annotations

import glob
import importlib
import os
from collections.abc import Mapping
from functools import cache
from typing import Any

from ..runs import CHECKPOINT_EXTENSIONS
from .torch_runner import TorchRunner

__all__ = ["PLATFORM_RUNNERS", "Runner"]

PLATFORM_RUNNERS: dict[str, str] = {
    "auto": "danling.runner.torch_runner:TorchRunner",
    "torch": "danling.runner.torch_runner:TorchRunner",
    "fsdp": "danling.runner.fsdp_runner:FSDPRunner",
    "accelerate": "danling.runner.accelerate_runner:AccelerateRunner",
    "deepspeed": "danling.runner.deepspeed_runner:DeepSpeedRunner",
}
"""Runner class of each platform, as `module:Class`, imported only when the platform is asked for.

`auto` is `torch`: never another platform because its package happens to be installed.
"""

POINTER_PLATFORMS: dict[str, str] = {
    extension: platform for platform, extension in CHECKPOINT_EXTENSIONS.items() if platform != "torch"
}
"""The platform whose checkpoints sit behind pointer files of each extension (`latest.dcp`, ...)."""

PLATFORM_EXTRAS: dict[str, str] = {"accelerate": "accelerate", "deepspeed": "deepspeed"}
"""The optional package each platform needs, and the extra of `danling` that installs it."""


class Runner(TorchRunner):
    """The runner to subclass when the platform comes from the config.

    `Runner(config)` behaves as [`TorchRunner`][danling.TorchRunner] for `config.platform` of `"torch"` or
    `"auto"`, as [`FSDPRunner`][danling.runner.fsdp_runner.FSDPRunner] for `"fsdp"`, as `AccelerateRunner` for
    `"accelerate"` and as `DeepSpeedRunner` for `"deepspeed"`: a subclass of `Runner` is combined with the
    platform's runner, so the same script runs on any of them. A platform whose
    package is missing raises `ImportError` naming what to install; any other value raises `ValueError` listing
    the valid platforms. A subclass of `TorchRunner` (or of a platform's runner) asked for another platform raises
    `ValueError` saying to subclass `Runner`, rather than run the platform it was written for.

    Examples:
        >>> Runner({"platform": "tpu", "log": False})
        Traceback (most recent call last):
        ValueError: unknown platform 'tpu'; expected one of: auto, torch, fsdp, accelerate, deepspeed
    """

    def __new__(cls, config: Any = None, *args: Any, **kwargs: Any) -> Any:
        platform = config.get("platform", "auto") if isinstance(config, Mapping) else "auto"
        backend = check_platform(platform)
        if issubclass(cls, backend):
            return super().__new__(cls)
        return super().__new__(_with_backend(cls, backend))

    @classmethod
    def read_checkpoint_file(cls, checkpoint: Any, **kwargs: Any) -> Mapping:
        """Read a checkpoint of any platform: one behind a pointer file (`.dcp`, `.accelerate`, `.ds`) or a
        checkpoint directory by its platform's reader, else a single file.

        `Runner.from_checkpoint` reads the file before it knows the platform the file's config names.
        """
        platform = None if isinstance(checkpoint, Mapping) else checkpoint_platform(os.fsdecode(checkpoint))
        if platform is not None:
            return check_platform(platform).read_checkpoint_file(checkpoint, **kwargs)
        return super().read_checkpoint_file(checkpoint, **kwargs)


@cache
def _with_backend(cls: type, backend: type) -> type:
    # The user's class first, so its overrides win; the backend's methods then come before TorchRunner's.
    return type(cls.__name__, (cls, backend), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})


def check_platform(platform: str) -> type[TorchRunner]:
    """The runner class for `platform`.

    Raises:
        ValueError: `platform` is not one of `PLATFORM_RUNNERS`.
        ImportError: the platform's optional package is not installed; the message says what to install.
    """
    if platform not in PLATFORM_RUNNERS:
        raise ValueError(f"unknown platform {platform!r}; expected one of: {', '.join(PLATFORM_RUNNERS)}")
    module_name, class_name = PLATFORM_RUNNERS[platform].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        package = PLATFORM_EXTRAS.get(platform)
        if package is None or error.name != package:
            raise
        raise ImportError(
            f"platform {platform!r} needs the package {package!r}, which is not installed; "
            f"install it with: pip install 'danling[{package}]'"
        ) from error
    return getattr(module, class_name)


def checkpoint_platform(path: str) -> str | None:
    """The platform that wrote the checkpoint at `path` when it is not a single file, by its pointer's extension or,
    for a checkpoint directory, by what it holds; `None` for a single-file checkpoint."""
    for extension, platform in POINTER_PLATFORMS.items():
        if path.endswith(extension):
            return platform
    if not os.path.isdir(path):
        return None
    from .fsdp_runner import FSDPRunner  # FSDP's modules load only for a run that asks for them

    if FSDPRunner.is_checkpoint(path):
        return "fsdp"
    if glob.glob(os.path.join(path, "*model_states.pt")):
        return "deepspeed"
    if all(os.path.isfile(os.path.join(path, name)) for name in ("runner.pth", "model.pth")):
        return "accelerate"
    return None
