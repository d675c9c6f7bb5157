"""Result classes by analysis name: how anything reading `results/<name>.json` turns it back into a result.

A stored result names its analysis (`"analysis": "sinks"`); files that do not (older probe scores) are known
by their file name. The analyses' own classes are looked up lazily (importing an analysis pulls in torch or
networkx); packages built on the analyses (the Lookback Lens scores of `workbench.probes`) `register` theirs
when imported.
"""

from __future__ import annotations

import importlib

from workbench.analyses.result import Result

__all__ = ["analysis_of", "read_result", "register", "result_class"]

# analysis name -> (module, class), imported on first use
_BUILT_IN = {
    "sinks": ("workbench.analyses.sinks", "SinksResult"),
    "vhd": ("workbench.analyses.divergence", "VHDResult"),
    "routes": ("workbench.analyses.routes", "RoutesResult"),
    "circuits": ("workbench.analyses.circuits", "CircuitsResult"),
    "patching": ("workbench.analyses.causal.patching", "PatchingResult"),
    "ablation": ("workbench.analyses.causal.ablation", "AblationResult"),
    "rollout": ("workbench.analyses.rollout", "RolloutResult"),
    "funnel": ("workbench.analyses.funnel", "FunnelResult"),
    "basin": ("workbench.analyses.basin", "BasinResult"),
    "lens": ("workbench.analyses.lens", "LensResult"),
    "importance": ("workbench.analyses.importance", "ImportanceResult"),
    "opera": ("workbench.analyses.opera", "OperaResult"),
    "blind_tokens": ("workbench.analyses.blind_tokens", "BlindTokensResult"),
}
_REGISTERED: dict[str, type[Result]] = {}


def register(cls: type[Result]) -> type[Result]:
    """Make `cls` the reader of results whose analysis is `cls.analysis` (usable as a class decorator)."""
    if not cls.analysis:
        raise ValueError(f"{cls.__name__} names no analysis")
    _REGISTERED[cls.analysis] = cls
    return cls


def result_class(analysis: str) -> type[Result] | None:
    """The result class of `analysis`, or None when no class reads it."""
    if analysis in _REGISTERED:
        return _REGISTERED[analysis]
    if analysis in _BUILT_IN:
        module, name = _BUILT_IN[analysis]
        return register(getattr(importlib.import_module(module), name))
    return None


def analysis_of(name: str, data) -> str:
    """The analysis a stored result belongs to: the one it declares, else its file name (results/<name>.json)."""
    declared = data.get("analysis") if isinstance(data, dict) else None
    return declared if isinstance(declared, str) and declared else name


def read_result(name: str, data) -> Result | None:
    """The result object of `results/<name>.json` (parsed JSON `data`), or None when no class reads it.
    Malformed data raises (BundleError, or KeyError / TypeError / ValueError from the class's `from_json`)."""
    cls = result_class(analysis_of(name, data))
    return None if cls is None else cls.from_json(data)
