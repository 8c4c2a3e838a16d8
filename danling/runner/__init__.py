r"""Runners: the training loop and everything around it.

```
BaseRunner        lifecycle, config fall-through, progress, results, IO, checkpoints (no framework code)
└── TorchRunner   PyTorch: the loops (training.py, evaluation.py), data, per-process state, and DDP
    ├── FSDPRunner        FSDP2: sharded parameters, gradients and optimizer state, DCP checkpoints
    ├── AccelerateRunner  Hugging Face Accelerate (data parallel); imported only for platform "accelerate"
    ├── DeepSpeedRunner   DeepSpeed ZeRO; imported only for platform "deepspeed"
    └── Runner            picks the platform from config.platform ("auto"/"torch", "fsdp", "accelerate", "deepspeed")
```

Constructing a runner (`RunnerMeta.__call__`) runs, in order:

1. `BaseRunner.__init__`: timestamp, containers, config, `init_distributed`, the config of a checkpoint to resume
   (`config.checkpoint` or `from_checkpoint`), the seed, the run id;
2. the rest of your `__init__`: model, criterion, optimizer, scheduler, datasets;
3. `__post_init__`: determinism, logging, print routing, TensorBoard, dataloaders, device, checkpoint restore,
   DDP wrapping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from ..utils.decorators import on_local_main_process, on_main_process
from .base_runner import BaseRunner
from .config import Config
from .meta import RunnerMeta, RunnerMode
from .runner import Runner
from .torch_runner import TorchRunner

if TYPE_CHECKING:
    from .fsdp_runner import FSDPRunner

__all__ = [
    "BaseRunner",
    "Config",
    "FSDPRunner",
    "Runner",
    "RunnerMeta",
    "RunnerMode",
    "TorchRunner",
    "on_local_main_process",
    "on_main_process",
]


# FSDP's runner (and Distributed Checkpoint with it) loads when first named: most runs never need it.
__getattr__, __dir__ = lazy_exports(__name__, {"FSDPRunner": ".fsdp_runner"})
