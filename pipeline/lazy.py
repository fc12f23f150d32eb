"""Package re-exports imported on first use (PEP 562), so importing a package does not import every
module behind its public names: Great Expectations takes seconds to import, and key-holding modules
must not come along with a package that merely names them (tests/test_key_boundary.py).

    >>> __getattr__ = lazy_exports("pipeline.example", {"sqrt": "math"})
    >>> __getattr__("sqrt")(9.0)
    3.0
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `exports[name]` (a module path) when `name` is first asked for."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__
