"""Seeding and RNG state: seed everything from one integer, and round-trip every generator's state."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

__all__ = ["MAX_SEED", "get_rng_state", "seed_everything", "set_rng_state", "validate_seed"]

# numpy's legacy seeding accepts [0, 2**32); the same range keeps every generator happy.
MAX_SEED = 2**32 - 1


def validate_seed(seed: Any) -> int:
    """Return `seed` as an `int` in `[0, 2**32 - 1]`, or raise `ValueError` naming it.

    Examples:
        >>> validate_seed(0)
        0
        >>> validate_seed(-1)
        Traceback (most recent call last):
        ValueError: seed must be an integer in [0, 4294967295], got -1
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    return int(seed)


def seed_everything(seed: int, torch: bool = True) -> int:
    """Seed Python's `random`, NumPy and (when `torch=True`) torch on every device.

    Args:
        seed: The seed, an integer in `[0, 2**32 - 1]`; `0` is a valid seed.
        torch: Also seed torch (CPU and every CUDA device).

    Returns:
        The seed that was set.

    Examples:
        >>> _ = seed_everything(7)
        >>> a = random.random()
        >>> _ = seed_everything(7)
        >>> a == random.random()
        True
    """
    seed = validate_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    if torch:
        import torch as _torch

        _torch.manual_seed(seed)  # seeds every CUDA device as well
    return seed


def get_rng_state(device: Any = None) -> dict[str, Any]:
    """The state of every random generator, as tensors and plain Python so `torch.load(weights_only=True)` reads it.

    Keys: `python`, `numpy`, `torch`, and `cuda` when CUDA is initialised: the state of `device`'s generator only
    (the current CUDA device when `device` is `None`). A process saves the generator it draws from, never another
    GPU's: under `CUDA_VISIBLE_DEVICES` per process, device indices differ between processes and between launches.

    Args:
        device: The CUDA device whose generator to save; a CPU device saves no CUDA state.
    """
    import torch

    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": _python_state_to_plain(random.getstate()),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(numpy_state["state"]["key"], dtype=np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    cuda_device = _cuda_device(device)
    if cuda_device is not None and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(cuda_device)
    return state


def set_rng_state(state: dict[str, Any], device: Any = None) -> None:
    """Restore generator states saved by [`get_rng_state`][danling.utils.seed.get_rng_state].

    Args:
        state: What `get_rng_state` returned.
        device: The CUDA device whose generator takes the saved CUDA state (the current CUDA device when `None`).
            A list of per-device states, as older checkpoints hold it, restores the entry of `device`'s index.

    Examples:
        >>> import torch
        >>> state = get_rng_state()
        >>> a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
        >>> set_rng_state(state)
        >>> a == (random.random(), float(np.random.rand()), float(torch.rand(1)))
        True
    """
    import torch

    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        numpy_state = state["numpy"]
        np.random.set_state(
            {
                "bit_generator": numpy_state["bit_generator"],
                "state": {"key": np.asarray(numpy_state["key"], dtype=np.uint32), "pos": numpy_state["pos"]},
                "has_gauss": numpy_state["has_gauss"],
                "gauss": numpy_state["gauss"],
            }
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda_state, cuda_device = state.get("cuda"), _cuda_device(device)
    if cuda_state is None or cuda_device is None:
        return
    if isinstance(cuda_state, (list, tuple)):
        index = cuda_device.index if cuda_device.index is not None else torch.cuda.current_device()
        if index >= len(cuda_state):
            return
        cuda_state = cuda_state[index]
    torch.cuda.set_rng_state(cuda_state.cpu(), cuda_device)


def _cuda_device(device: Any) -> Any:
    """`device` as a `torch.device` when it names a GPU (the current one for `None`), else `None`."""
    import torch

    if not torch.cuda.is_available():
        return None
    if device is None:
        return torch.device("cuda", torch.cuda.current_device())
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]
