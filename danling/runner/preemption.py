"""Stopping cleanly when the cluster asks: the signal handler only records the request; the runner acts on it."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from datetime import timedelta
from types import FrameType
from typing import Any

import torch

from ..utils import distributed as du

__all__ = ["INTERRUPT_NOTICE", "PREEMPTION_SIGNALS", "Preempted", "PreemptionAgreement", "PreemptionWatcher"]

PREEMPTION_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))
"""Signals that request a clean stop: SIGTERM (sent by schedulers and `torchrun`) and SIGUSR1 (sent by SLURM
ahead of the kill, with `--signal`)."""


INTERRUPT_NOTICE = (
    "\nCtrl-C: saving the run's state at the next training step, then stopping; press Ctrl-C again to stop at once\n"
)
"""What the main process writes to stderr at the first Ctrl-C of a `train()`."""


class Preempted(SystemExit):
    """Raised by `train` after it saved `latest` because a preemption signal arrived.

    Its exit status is `128 + signal number` (143 for SIGTERM, 138 for SIGUSR1, 130 for a first Ctrl-C), the
    shell's convention for a process ended by that signal, so an uncaught `Preempted` ends the script the way the
    signal would have, but only after the checkpoint is safely on disk, and without a traceback.
    """

    def __init__(self, signum: int, checkpoint: str | None) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        where = f"; resume from {self.checkpoint} (--checkpoint, or --resume true)" if self.checkpoint else ""
        return f"stopped by {name} after saving the run's state{where}"


class PreemptionWatcher:
    """Context manager that records the first preemption signal received while it is active.

    With `interrupt` (the default), a first SIGINT (Ctrl-C; `torchrun` passes its own on to its workers) is
    recorded like SIGTERM, so the run saves and stops cleanly; a SIGINT after any recorded signal raises
    `KeyboardInterrupt` at once, as Python would have. Previous handlers are restored on exit. Outside the main
    thread, where Python cannot install signal handlers, it watches nothing.

    Args:
        signals: The signals that request a clean stop.
        interrupt: Whether to handle SIGINT as above; without it, Ctrl-C raises `KeyboardInterrupt` as usual.
        announce: Whether to write [`INTERRUPT_NOTICE`][danling.runner.preemption.INTERRUPT_NOTICE] to stderr at
            the first Ctrl-C (on the main process only, so a run says it once).
    """

    def __init__(
        self, signals: tuple[int, ...] = PREEMPTION_SIGNALS, interrupt: bool = True, announce: bool = True
    ) -> None:
        self.signals = signals
        self.interrupt = interrupt
        self.announce = announce
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only record: saving from inside a signal handler could interrupt a write half-way.
        if self.received is None:
            self.received = signum

    def _handle_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        if self.announce:
            # os.write, not print: a handler that prints while the interrupted code prints can raise "reentrant call".
            with contextlib.suppress(OSError):
                os.write(2, INTERRUPT_NOTICE.encode())

    def __enter__(self) -> PreemptionWatcher:
        self.received = None
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
            if self.interrupt and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                # Only over Python's own handler: a script or tool that installed its own keeps it.
                self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle_interrupt)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class PreemptionAgreement:
    """Whether any of several processes received a preemption signal, agreed at the same step by all of them.

    Every process calls [`poll`][danling.runner.preemption.PreemptionAgreement.poll] at every optimizer step. Every
    so many steps, the same on every process, a poll reads the exchange the previous one started and starts the
    next: each process offers its signal (or 0) and its mean time per step since then, and all of them receive the
    maxima. The next exchange comes after as many steps as the slowest process takes in `period` seconds, so every
    process counts the same steps, whatever their clocks say, and a signal is acted on at most two periods (and a
    step) after it reached any process. No step waits on the others: an exchange is read a whole period after it
    started, long after every process joined it, and it runs on a `gloo` group of its own
    ([`host_group`][danling.utils.distributed.host_group]), never on the GPU nor behind the collectives of training.
    """

    period: float = 0.5
    """Seconds of training between two exchanges, aimed at: short enough to stop long before `torchrun` kills its
    workers (30 s after its SIGTERM), long enough for the exchange to cost nothing measurable; `0` exchanges at
    every step."""

    def __init__(self) -> None:
        self._group = du.host_group()
        # What an exchange carries, and then holds: the signal, and the mean microseconds per step.
        self._exchanged = torch.zeros(2, dtype=torch.int64)
        self._pending: Any = None
        self._interval = self._steps_left = 1  # the first exchange starts at the first step
        self._since = time.perf_counter()
        self.agreed: int | None = None

    def poll(self, received: int | None) -> int | None:
        """The signal some process received, once all processes know of it; `received` is this process's own."""
        if self.agreed is not None:
            return self.agreed
        self._steps_left -= 1
        if self._steps_left > 0:
            return None
        now = time.perf_counter()
        interval = 1  # no step time agreed on yet: read the first exchange at the next step
        if self._pending is not None:
            self._pending.wait()
            self._pending = None
            signum, slowest = self._exchanged.tolist()
            if signum:
                self.agreed = signum
                return signum
            interval = max(1, int(self.period * 1e6 / max(slowest, 1)))
        microseconds = round((now - self._since) * 1e6 / self._interval)
        self._exchanged.copy_(torch.tensor([received or 0, microseconds]))
        self._pending = du.all_reduce_max_async(self._exchanged, self._group)
        self._interval = self._steps_left = interval
        self._since = now
        return None

    def close(self, timeout: float | None = None) -> None:
        """Wait for the exchange still running, if any, so no collective outlives training.

        Every process started it, and finishes it here, when training ends normally. After an error, the others
        may never start it (they failed elsewhere): `timeout` seconds bound the wait, and a wait that times out is
        given up, since the error being raised is what matters.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if timeout is None:
            pending.wait()
            return
        # gloo reports a wait that timed out (the peers failed before starting it) as a RuntimeError.
        with contextlib.suppress(RuntimeError):
            pending.wait(timedelta(seconds=timeout))
