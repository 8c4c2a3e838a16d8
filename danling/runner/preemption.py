"""Stopping cleanly when the cluster asks: the signal handler only records the request; the runner acts on it."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["PREEMPTION_SIGNALS", "Preempted", "PreemptionWatcher"]

PREEMPTION_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))
"""Signals that request a clean stop: SIGTERM (sent by schedulers and `torchrun`) and SIGUSR1 (sent by SLURM
ahead of the kill, with `--signal`)."""


class Preempted(SystemExit):
    """Raised by `train` after it saved `latest` because a preemption signal arrived.

    Its exit status is `128 + signal number` (143 for SIGTERM, 138 for SIGUSR1), the shell's convention for a
    process ended by that signal, so an uncaught `Preempted` ends the script the way the signal would have, but
    only after the checkpoint is safely on disk.
    """

    def __init__(self, signum: int, checkpoint: str | None) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        where = f"; resume from {self.checkpoint}" if self.checkpoint else ""
        return f"stopped by {name} after saving the run's state{where}"


class PreemptionWatcher:
    """Context manager that records the first preemption signal received while it is active.

    Previous handlers are restored on exit. Outside the main thread, where Python cannot install signal
    handlers, it watches nothing.
    """

    def __init__(self, signals: tuple[int, ...] = PREEMPTION_SIGNALS) -> None:
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only record: saving from inside a signal handler could interrupt a write half-way.
        if self.received is None:
            self.received = signum

    def __enter__(self) -> PreemptionWatcher:
        self.received = None
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
