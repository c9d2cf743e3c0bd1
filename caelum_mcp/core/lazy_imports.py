"""Modules that load at their first use instead of when the server starts.

A client gives a server a few seconds to answer ``initialize``, and on a loaded 2-core machine the
imports were most of them: the Anthropic SDK alone took 2-4 s, numpy, duckdb and jsonschema another
0.3 s, for tools that a session may never call. Use it as::

    if TYPE_CHECKING:
        import duckdb
    else:
        duckdb = lazy_module("duckdb")

so type checkers see the real module and the code reads as if it were imported at the top.
``tests/test_startup_imports.py`` checks that serving over stdio loads none of them.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    """Stands for the module ``name`` (not in ``sys.modules`` until used); the first attribute
    read imports it, and each attribute read once is kept here, so later reads cost what a plain
    module's do. An attribute the package lacks is tried as its submodule (``referencing.jsonschema``
    is not imported by ``referencing`` itself). Importing is thread-safe (the import system's own
    module locks)."""

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        try:
            value = getattr(module, attr)
        except AttributeError:
            if attr.startswith("__") or not hasattr(module, "__path__"):
                raise
            try:
                value = importlib.import_module(f"{self.__name__}.{attr}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{self.__name__}.{attr}":
                    raise  # the submodule exists but needs something missing: say that
                raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}") from None
        setattr(self, attr, value)
        return value


def lazy_module(name: str) -> ModuleType:
    """A stand-in for ``import name`` that imports it at the first attribute read."""
    return LazyModule(name)
