"""Context managers."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["debug"]


@contextmanager
def debug(
    enable: bool = True,
    error: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    exclude: type[BaseException] | tuple[type[BaseException], ...] | None = None,
) -> Iterator[None]:
    """Open the post-mortem debugger where an error in the block was raised, then re-raise it.

    The debugger opens only when `enable` is true and standard input is a terminal; elsewhere (CI, batch jobs)
    the error is simply re-raised, so leaving `with debug():` in a script is harmless.

    Args:
        enable: Open the debugger on error.
        error: Errors to debug.
        exclude: Errors to let through untouched even if they match `error`.

    Examples:
        >>> with debug():
        ...     x = 1 + 1
        >>> x
        2
    """
    try:
        yield
    except error as caught:
        if exclude is not None and isinstance(caught, exclude):
            raise
        if enable and sys.stdin is not None and sys.stdin.isatty():
            import pdb

            traceback.print_exc()
            pdb.post_mortem(caught.__traceback__)
        raise
