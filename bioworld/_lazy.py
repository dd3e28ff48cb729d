"""Lazy attribute export for package ``__init__`` modules (keeps ``import bioworld`` fast)."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, mapping: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``__getattr__`` / ``__dir__`` that import ``name`` from ``mapping[name]`` on first use.

    ``mapping`` maps an exported name to the submodule (relative, e.g. ``"._io"``) defining it.
    """

    def __getattr__(name: str) -> Any:
        if name not in mapping:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(mapping[name], package)
        return getattr(module, name)

    def __dir__() -> list[str]:
        return sorted(mapping)

    return __getattr__, __dir__
