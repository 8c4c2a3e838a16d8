"""Decorators used across DanLing."""

from __future__ import annotations

import os
import sys
import traceback
import weakref
from collections.abc import Callable
from functools import lru_cache, wraps
from typing import Any

__all__ = [
    "catch",
    "ensure_dir",
    "flexible_decorator",
    "method_cache",
    "on_local_main_process",
    "on_main_process",
]


def flexible_decorator(maybe_decorator: Callable | None = None):
    """Let a decorator factory be used both bare (`@deco`) and called (`@deco(...)`).

    The factory must take keyword arguments only and return a decorator.

    Examples:
        >>> @flexible_decorator
        ... def tag(label="x"):
        ...     def decorator(func):
        ...         func.label = label
        ...         return func
        ...     return decorator
        >>> @tag
        ... def f(): ...
        >>> @tag(label="y")
        ... def g(): ...
        >>> f.label, g.label
        ('x', 'y')
    """

    def wrap(factory: Callable) -> Callable:
        @wraps(factory)
        def flexible(*args: Any, **kwargs: Any) -> Callable:
            if len(args) == 1 and not kwargs and callable(args[0]) and not isinstance(args[0], type):
                return factory()(args[0])
            return factory(*args, **kwargs)

        return flexible

    if maybe_decorator is None:
        return wrap
    return wrap(maybe_decorator)


@flexible_decorator
def catch(
    error: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    exclude: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    print_args: bool = False,
) -> Callable:
    """Report errors raised by the decorated function on stderr instead of raising them.

    For best-effort side work only (a progress message, an optional plot). DanLing never uses it on writes of
    checkpoints or results: those must fail loudly.

    Args:
        error: Exceptions to catch.
        exclude: Exceptions to let through even if they match `error`.
        print_args: Also print the arguments the function was called with.

    Examples:
        >>> @catch
        ... def fail():
        ...     raise ValueError("boom")
        >>> fail() is None
        True
    """

    def decorator(func: Callable) -> Callable:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except error as caught:
                if exclude is not None and isinstance(caught, exclude):
                    raise
                message = f"error in {func.__qualname__}"
                if print_args:
                    message += f" called with args={args!r}, kwargs={kwargs!r}"
                print(message, file=sys.stderr)
                traceback.print_exc()
                return None

        return wrapper

    return decorator


def ensure_dir(func: Callable[..., str]) -> Callable[..., str]:
    """Create the directory that `func` returns before returning it.

    Examples:
        >>> import os, tempfile
        >>> root = tempfile.mkdtemp()
        >>> @ensure_dir
        ... def where():
        ...     return os.path.join(root, "a", "b")
        >>> os.path.isdir(where())
        True
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        path = func(*args, **kwargs)
        os.makedirs(path, exist_ok=True)
        return path

    return wrapper


def method_cache(maxsize: int | None = 128) -> Callable:
    """Like `functools.lru_cache`, for methods: one cache per instance, which does not keep the instance alive.

    Examples:
        >>> class Square:
        ...     calls = 0
        ...     @method_cache(maxsize=None)
        ...     def of(self, x):
        ...         Square.calls += 1
        ...         return x * x
        >>> s = Square()
        >>> s.of(3), s.of(3), Square.calls
        (9, 9, 1)
    """

    def decorator(method: Callable) -> Callable:
        # Keyed by identity, not by hash: unhashable instances work and equal instances keep separate caches.
        # The weak reference's callback drops an entry as its instance dies, before the id can be reused.
        caches: dict[int, Callable] = {}

        @wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            key = id(self)
            cached = caches.get(key)
            if cached is None:

                def forget(_: weakref.ref, key: int = key) -> None:
                    caches.pop(key, None)

                ref = weakref.ref(self, forget)

                def call(*a: Any, **k: Any) -> Any:
                    return method(ref(), *a, **k)

                cached = caches[key] = lru_cache(maxsize=maxsize)(call)
            return cached(*args, **kwargs)

        return wrapper

    return decorator


def on_main_process(func: Callable) -> Callable:
    """Run a method only on the main process (global rank 0); elsewhere it returns `None`.

    The instance must have an `is_main_process` attribute, as runners do.
    """

    @wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.is_main_process:
            return func(self, *args, **kwargs)
        return None

    return wrapper


def on_local_main_process(func: Callable) -> Callable:
    """Run a method only on the main process of each node (local rank 0); elsewhere it returns `None`."""

    @wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.is_local_main_process:
            return func(self, *args, **kwargs)
        return None

    return wrapper
