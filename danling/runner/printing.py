"""Rank-aware `print`: installed into `builtins` once per process, routed by the runner that installed it last.

On the process it was installed for (rank 0 by default) `print` writes as usual, or through the `danling.print`
logger when the runner logs (so user prints land in `run.log` too); on other processes it is silent unless called
with `force=True`. Either way, while a progress bar is on the screen the line is written above the bar, not over it
(see [`progress`][danling.runner.progress]). An explicit `file=` is always honoured as given.
[`restore_print`][danling.runner.printing.restore_print] puts the original `print` back.
"""

from __future__ import annotations

import builtins
import logging
import sys
import weakref
from typing import Any

from .progress import current_bar, write

__all__ = ["RankPrint", "install_print", "restore_print"]

PRINT_LOGGER = "danling.print"


class RankPrint:
    """Callable that replaces `builtins.print`; it keeps the original and a weak reference to its runner."""

    def __init__(self, original: Any) -> None:
        self.original = original
        # Newest last. Weak, so a finished runner can be collected; prints then follow the newest one still alive.
        self._bindings: list[tuple[weakref.ref, int]] = []
        self.logger = logging.getLogger(PRINT_LOGGER)

    def bind(self, runner: Any, process: int = 0) -> None:
        """Route prints by `runner`'s rank and `config.log` from now on (`process` is the rank that prints)."""
        self._bindings = [(ref, rank) for ref, rank in self._bindings if ref() is not None and ref() is not runner]
        self._bindings.append((weakref.ref(runner), process))

    def _current(self) -> tuple[Any, int]:
        while self._bindings:
            ref, process = self._bindings[-1]
            runner = ref()
            if runner is not None:
                return runner, process
            self._bindings.pop()
        return None, 0

    def __call__(
        self, *args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False,
        force: bool = False,
    ) -> None:  # fmt: skip
        runner, process = self._current()
        if runner is None or file is not None:
            self.original(*args, sep=sep, end=end, file=file, flush=flush)
            return
        if not force and runner.rank != process:
            return
        text = (" " if sep is None else sep).join(str(arg) for arg in args)
        if runner.config.log and logging.getLogger("danling").handlers:
            self.logger.info(text)
        elif current_bar() is not None:
            write(text, sys.stdout, "\n" if end is None else end)
        else:
            self.original(*args, sep=sep, end=end, file=sys.stdout, flush=flush)


def install_print(runner: Any, process: int = 0) -> RankPrint:
    """Install the rank-aware `print` (once per process) and bind it to `runner`."""
    printer = builtins.print
    if not isinstance(printer, RankPrint):
        printer = RankPrint(builtins.print)
        builtins.print = printer  # type: ignore[assignment]
    printer.bind(runner, process)
    return printer


def restore_print() -> None:
    """Put back the `print` that was there before [`install_print`][danling.runner.printing.install_print]."""
    printer = builtins.print
    if isinstance(printer, RankPrint):
        builtins.print = printer.original
