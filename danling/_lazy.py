"""Names a package lists in `__all__` but imports only when first used (PEP 562)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, sources: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose names load from `sources` when first used.

    Args:
        package: The package's `__name__`.
        sources: Each lazy name and the module (relative to `package`) it comes from; a name whose module is
            `.{name}` is that module itself (a subpackage).

    Returns:
        The package's `__getattr__`, which imports a name and keeps it in the package (later look-ups are plain
        attribute reads), and its `__dir__`, which lists `__all__` with what the package holds.
    """
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        source = sources.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        imported = import_module(source, package)
        value = imported if source == f".{name}" else getattr(imported, name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(module), *getattr(module, "__all__", ())})

    return __getattr__, __dir__
