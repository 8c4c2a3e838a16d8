"""The seam between the loops and a backend: what each part of `TorchRunner` may call on the others.

`TorchRunner` is composed of parts: the training loop (`training.py`), evaluation and inference
(`evaluation.py`), data (`data.py`), per-process state (`state.py`) and a backend (`torch_runner.py` for DDP,
`fsdp_runner.py` for FSDP2). Each part derives from `RunnerParts`, which declares, for the type checker only, what
the parts provide to one another. At run time it adds nothing to `BaseRunner`.

A backend supplies: `device`, `wrap_model`/`unwrap`, `backward`, `clip_gradients`, `optimizer_step`,
`update_ema`, `accumulate` (skipping gradient synchronisation inside an accumulation window), `autocast`,
`evaluation_model`, `evaluation_context` (what every process enters around an evaluation pass), and the
checkpoint methods when its state is not one file (`save_checkpoint`, `read_checkpoint_file`, `load_checkpoint`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .base_runner import BaseRunner

__all__ = ["RunnerParts"]


class RunnerParts(BaseRunner):
    """`BaseRunner`, plus the declarations the parts of `TorchRunner` share (type checking only)."""

    if TYPE_CHECKING:
        import torch
        from chanfig import NestedDict
        from torch import nn

        model: Any
        scaler: Any
        _position: dict[str, Any] | None
        _resume_state: Mapping | None
        _epoch_generator_state: torch.Tensor | None

        # Backend
        @property
        def device(self) -> torch.device: ...
        def unwrap(self, model: Any) -> Any: ...
        def backward(self, loss: torch.Tensor) -> None: ...
        def clip_gradients(self) -> None: ...
        def optimizer_step(self) -> None: ...
        def update_ema(self) -> None: ...
        def accumulate(self) -> Any: ...
        def autocast(self) -> Any: ...
        def evaluation_model(self) -> nn.Module: ...
        def evaluation_context(self, model: nn.Module) -> Any: ...

        # Data
        @property
        def train_splits(self) -> list[str]: ...
        @property
        def evaluate_splits(self) -> list[str]: ...
        def _splits(self) -> list[str]: ...
        def unpack_batch(self, batch: Any) -> tuple[Any, Any]: ...
        @staticmethod
        def forward(model: Any, input: Any) -> Any: ...

        # Evaluation and measures
        def evaluate_epoch(self, split: str = "val") -> NestedDict: ...
        def _reset_measures(self) -> None: ...
        def _update_measures(self, pred: Any, target: Any, loss: torch.Tensor | None) -> None: ...
        def _progress_bar(
            self, loader: Iterable, split: str, total: int | None = None, initial: int = 0
        ) -> Iterable: ...

        # State
        def collect_process_state(self) -> None: ...
