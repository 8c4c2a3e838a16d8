"""Optimizers and lr schedulers: DanLing's warmup/decay/cooldown `LRScheduler` and registries to build from configs."""

from .lr_scheduler import STRATEGIES, LRScheduler
from .registry import OPTIMIZERS, SCHEDULERS

__all__ = ["OPTIMIZERS", "SCHEDULERS", "STRATEGIES", "LRScheduler"]
