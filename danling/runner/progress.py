"""Output on a terminal: one progress bar at a time, and every other console line written above it, never over it.

While a bar is on the screen, nothing may write to the terminal behind its back, or the bar and the line share a row
and the next redraw of the bar lands below the line. So, on the main process when stdout is a terminal:

- the runner's step lines (every `log_interval` batches) go to the bar's postfix, as many `name=value` pairs as fit,
  and in full to `run.log` only ([`show_metrics`][danling.runner.progress.show_metrics]);
- the console handler of the log ([`ConsoleHandler`][danling.runner.progress.ConsoleHandler]) and the rank-aware
  `print` write through [`write`][danling.runner.progress.write], which clears the bar, writes the line and draws
  the bar again below it (`tqdm.write`).

Bars and step lines count the same thing: batches done of the total (`20/45` on the bar, `[20/45]` in the line).
When stdout is not a terminal (CI, a SLURM log) there is no bar and the step lines are printed.
"""

from __future__ import annotations

import logging
import sys
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

from ..scoring import format_value

__all__ = [
    "CONSOLE_DATE_FORMAT",
    "CONSOLE_FORMAT",
    "FILE_ONLY",
    "ConsoleFormatter",
    "ConsoleHandler",
    "current_bar",
    "format_postfix",
    "inner_bars",
    "progress_bar",
    "show_metrics",
    "write",
]

CONSOLE_FORMAT = "%(asctime)s %(message)s"
CONSOLE_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# Pass as `extra=` to log a record to the file handlers only: ConsoleHandler leaves it out.
FILE_ONLY = {"console": False}
# Columns the bar itself keeps, whatever the postfix; and room for the time and rate fields to grow.
MIN_BAR_WIDTH = 10
_SLACK = 8

# The bar opened last by `progress_bar`, held weakly: a bar that is closed or collected is no longer current.
_current: weakref.ReferenceType | None = None
# Whether `inner_bars` hid the current bar: a bar opened meanwhile takes its line.
_hidden = False


def progress_bar(iterable: Iterable, description: str, total: int | None = None, initial: int = 0) -> Any:
    """A `tqdm` bar over `iterable` on stdout, cleared from the screen when the iteration ends; it becomes current.

    Args:
        iterable: What to iterate over.
        description: The label before the bar, such as `"epoch [3/19] train"`.
        total: The number of items in a full pass; by default `len(iterable)`.
        initial: The items already done before `iterable` starts (a resumed pass).

    Returns:
        The bar; iterate over it in place of `iterable`.
    """
    from tqdm.auto import tqdm  # imported on first use: `import danling` stays light

    global _current
    bar = tqdm(
        iterable,
        desc=description,
        total=total,
        initial=initial,
        leave=False,
        dynamic_ncols=True,
        file=sys.stdout,
        position=0 if _hidden else None,
    )
    _current = weakref.ref(bar)
    return bar


@contextmanager
def inner_bars() -> Iterator[None]:
    """Bars opened inside take the place of the current one, which is hidden meanwhile and shown again after.

    For an evaluation inside a training pass (training by steps): the screen keeps one bar at a time, and the
    training bar comes back, with its postfix, where it was.
    """
    global _current, _hidden
    outer, saved = current_bar(), _current
    if outer is not None:
        outer.clear()
        outer.disable = True  # tqdm neither redraws nor clears a disabled bar: `write` leaves it alone too
        _hidden = True
    try:
        yield
    finally:
        _current = saved
        if outer is not None:
            _hidden = False
            outer.disable = False
            outer.refresh()


def current_bar() -> Any | None:
    """The bar [`progress_bar`][danling.runner.progress.progress_bar] opened last, while it is open; else `None`."""
    bar = _current() if _current is not None else None
    return None if bar is None or bar.disable else bar


def show_metrics(result: Mapping, format_spec: str = ".4f") -> bool:
    """Show `result` in the postfix of the current bar, as many `name=value` pairs as fit beside it on the screen.

    Args:
        result: The step result, `{metric: value}`, possibly nested.
        format_spec: Format of the values.

    Returns:
        Whether a bar was open to show them; when not, nothing is shown.
    """
    bar = current_bar()
    if bar is None:
        return False
    state = bar.format_dict
    width = None
    if state.get("ncols"):
        # Everything on the bar's line but the bar and the postfix; tqdm puts ", " before the postfix.
        rest = bar.format_meter(**{**state, "ncols": 0, "postfix": None, "bar_format": "{l_bar}{r_bar}"})
        width = max(0, state["ncols"] - len(rest) - len(", ") - MIN_BAR_WIDTH - _SLACK)
    # Shown at the next redraw: a redraw now would show a count behind the one the iteration has reached.
    bar.set_postfix_str(format_postfix(result, width, format_spec), refresh=False)
    return True


def format_postfix(result: Mapping, width: int | None = None, format_spec: str = ".4f") -> str:
    """`name=value` pairs of the scalars in `result`, nested names joined by `.`, whole pairs only, up to `width`.

    A pair that would not fit is left out with the pairs after it, rather than cut: a cut number reads as another
    number.

    Args:
        result: `{metric: value}`, possibly nested; lists (per-class values) are left out.
        width: The most characters; no limit when `None`.
        format_spec: Format of the values.

    Examples:
        >>> format_postfix({"loss": 0.12345, "val": {"acc": 0.5, "per_class": [1.0, 0.0]}})
        'loss=0.1235, val.acc=0.5000'
        >>> format_postfix({"loss": 0.12345, "acc": 0.5}, width=20)
        'loss=0.1235'
    """
    text = ""
    for name, value in _scalars(result):
        pair = f"{name}={format_value(value, format_spec)}"
        candidate = f"{text}, {pair}" if text else pair
        if width is not None and len(candidate) > width:
            break
        text = candidate
    return text


def write(text: str, stream: TextIO | None = None, end: str = "\n") -> None:
    """Write `text` to `stream` (default `sys.stdout`) above the progress bars on the screen, if there are any.

    The bars are cleared, the text written and the bars drawn again below it (`tqdm.write`), so the two never
    share a line.
    """
    stream = sys.stdout if stream is None else stream
    tqdm_module = sys.modules.get("tqdm.std")
    if tqdm_module is None:  # tqdm is not imported: there is no bar to keep clear of
        stream.write(text + end)
    else:
        tqdm_module.tqdm.write(text, file=stream, end=end)
    stream.flush()


class ConsoleFormatter(logging.Formatter):
    """`{time} {message}`, with the lines after the first indented under the message, so tables stay aligned.

    The console has no level and no logger name: those are in `run.log`.

    Examples:
        >>> record = logging.makeLogRecord({"msg": "epoch  val.loss\\n    0    0.5000"})
        >>> print(ConsoleFormatter().format(record))  # doctest: +ELLIPSIS
        20... epoch  val.loss
                                0    0.5000
    """

    def __init__(self) -> None:
        super().__init__(CONSOLE_FORMAT, CONSOLE_DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """The record as `CONSOLE_FORMAT` makes it, every line after the first indented by the time's width.

        Trailing newlines (a captured warning ends with one) are dropped: the handler ends the record.
        """
        text = super().format(record).rstrip("\n")
        return text.replace("\n", "\n" + " " * (len(record.asctime) + 1))


class ConsoleHandler(logging.StreamHandler):
    """A `StreamHandler` that writes through [`write`][danling.runner.progress.write], clear of progress bars.

    Records logged with `extra=FILE_ONLY` are left out: they are meant for `run.log`.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether `record` goes to the console: not when logged `FILE_ONLY`, else as the handler's filters say."""
        return getattr(record, "console", True) and bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        """Write the formatted record, above the progress bar if one is on the screen."""
        try:
            write(self.format(record), self.stream, self.terminator)
        except RecursionError:  # as logging.StreamHandler does: a recursion is a bug to see, not to report
            raise
        except Exception:  # logging must never break the run; `handleError` reports it on stderr
            self.handleError(record)


def _scalars(result: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in result.items():
        if isinstance(value, Mapping):
            items.extend(_scalars(value, f"{prefix}{key}."))
        elif not isinstance(value, (list, tuple, str)):
            items.append((f"{prefix}{key}", value))
    return items
