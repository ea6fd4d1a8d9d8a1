"""Public names of a package imported on first use (a module ``__getattr__``).

The packages that keep their cold start small (``onceonly``,
``onceonly.stores``, ``onceonly.stores.redis``) list which module each of
their lazy names comes from; this builds their ``__getattr__`` and
``__dir__`` from that table.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    package: str, origins: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build a package's ``__getattr__`` and ``__dir__`` for names imported on first use.

    Args:
        package: The package's ``__name__`` (it must be in ``sys.modules``).
        origins: Each lazy name and the submodule (relative, without the dot)
            it comes from.

    Returns:
        ``(__getattr__, __dir__)``: the first imports a name's module on first
        use and keeps the name in the package, so later lookups skip it.
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = origins.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(origins))

    return __getattr__, __dir__
