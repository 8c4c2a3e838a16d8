"""`torch.compile` for the runner: options read from the config, and state dicts that never carry its prefix.

The runner compiles a module's `forward` in place, so the model keeps its class, its attributes, its hooks and the
keys of its state dict: a checkpoint of a compiled run loads into an uncompiled runner and the reverse. State dicts
taken from a module wrapped by `torch.compile(module)` elsewhere carry `_orig_mod.` in their keys; they are read
without it.

`forward` rather than `nn.Module.compile`: dynamo skips frames of torch's own files, so a compiled `__call__` of a
module torch defines (`nn.Sequential`, DDP) compiles nothing, while its `forward` compiles as given. Hooks stay
outside the compiled code: DDP's and FSDP's run as they do uncompiled, and dynamo splits a DDP model's graph at
DDP's buckets itself (it sees the DDP forward it is called from).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "COMPILE_MODES",
    "COMPILE_PREFIX",
    "compile_forward",
    "compile_options",
    "compile_seconds",
    "strip_compile_prefix",
]

COMPILE_PREFIX = "_orig_mod."
"""What `torch.compile(module)` puts before each key of the state dict of the module it wraps."""


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""The modes of `torch.compile`: `config.compile` may name one (`--compile max-autotune`)."""

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0", "none", "")


def compile_options(value: Any) -> dict[str, Any] | None:
    """Keyword arguments for `torch.compile` from `config.compile`, or `None` when the model is not compiled.

    `config.compile` is a bool (or its spelling on the command line, `true`/`false`), a mode of `torch.compile`, or
    a mapping of its options.

    Examples:
        >>> compile_options(False) is None, compile_options("false") is None, compile_options(True)
        (True, True, {})
        >>> compile_options("max-autotune"), compile_options({"mode": "max-autotune", "dynamic": True})
        ({'mode': 'max-autotune'}, {'mode': 'max-autotune', 'dynamic': True})

    Raises:
        ValueError: If `value` is none of these.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return {}
        if word in _FALSE:
            return None
        if word in COMPILE_MODES:
            return {"mode": word}
    elif isinstance(value, Mapping):
        return dict(value)
    raise ValueError(
        f"config.compile is {value!r}; expected true, false, a mode of torch.compile ({', '.join(COMPILE_MODES)}), "
        "or a mapping of its options (for example {mode: max-autotune, dynamic: true})"
    )


def compile_forward(module: nn.Module, options: Mapping[str, Any]) -> bool:
    """Replace `module.forward` by `torch.compile(module.forward, **options)`; `False` if it was compiled already.

    Examples:
        >>> module = nn.Linear(2, 2)
        >>> compile_forward(module, {"backend": "eager"}), compile_forward(module, {"backend": "eager"})
        (True, False)
        >>> list(module.state_dict())
        ['weight', 'bias']
    """
    if "forward" in vars(module):  # an instance attribute: already replaced (by us, or by the user on purpose)
        return False
    module.forward = torch.compile(module.forward, **options)  # type: ignore[method-assign]
    return True


def compile_seconds() -> float:
    """Seconds this process has spent compiling with `torch.compile` so far (dynamo's own account)."""
    from torch._dynamo.utils import calculate_time_spent

    return float(calculate_time_spent().get("total_wall_time", 0.0))


def strip_compile_prefix(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """`state` with every `_orig_mod.` removed from its keys (at the start, or after a submodule's name).

    Examples:
        >>> strip_compile_prefix({"_orig_mod.w": 1, "layers.0._orig_mod.b": 2})
        {'w': 1, 'layers.0.b': 2}
        >>> state = {"w": 1}
        >>> strip_compile_prefix(state) is state
        True
    """
    if not any(isinstance(key, str) and COMPILE_PREFIX in key for key in state):
        return state
    return {key.replace(COMPILE_PREFIX, "") if isinstance(key, str) else key: value for key, value in state.items()}
