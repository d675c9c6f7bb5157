"""Lazy package attributes: `import workbench` stays fast, heavy modules load on first use of a name."""

from __future__ import annotations


def lazy_getattr(package: str, table: dict[str, tuple[str, str]], namespace: dict):
    """A module-level __getattr__ resolving `table` (name -> (module, attribute)) once, then caching in namespace."""

    def __getattr__(name: str):
        if name in table:
            import importlib

            module, attribute = table[name]
            value = getattr(importlib.import_module(module), attribute)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
