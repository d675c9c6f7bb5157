"""What every stored analysis result offers besides its own fields: versioned JSON and the arrays views draw.

A result class names its analysis (`analysis`, also the file name `results/<analysis>.json` of a bundle) and
its JSON `schema_version`, implements `to_json()` and the classmethod `from_json()`, and overrides the view
methods it has data for. Views (the app, notebooks) call these methods and never parse a result's JSON.

Positions in results are token positions; a query row that predicts a token is stored under a name that says
so (`predicting_row`; see `workbench.traces.metrics`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from workbench.errors import BundleError

__all__ = ["HeadMetric", "Result", "TokenValues", "stored_version"]


@dataclass(frozen=True)
class HeadMetric:
    """One number per attention head: values [layer, head] (float64, NaN = no value for that head)."""

    values: np.ndarray
    label: str
    description: str
    stack: str = "text"
    zmin: float | None = None
    zmax: float | None = None
    # Heads the result does not mention have no value: a grid smaller than the model's is padded with NaN.
    sparse: bool = False


@dataclass(frozen=True)
class TokenValues:
    """One number per token: positions [token] (token positions, int64) and values [token] (float64)."""

    positions: np.ndarray
    values: np.ndarray
    label: str
    description: str

    def as_dict(self) -> dict[int, float]:
        """{token position: value}, finite values only."""
        return {int(p): float(v) for p, v in zip(self.positions, self.values) if math.isfinite(float(v))}


class Result:
    """Base of the analysis results stored in bundles (mixed into their frozen dataclasses)."""

    analysis: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1

    def to_json(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_json(cls, data: dict) -> Result:
        raise NotImplementedError

    def head_metrics(self) -> dict[str, HeadMetric]:
        """Per-head numbers a layer x head view can show, by name."""
        return {}

    def token_values(self) -> dict[str, TokenValues]:
        """Per-token numbers (at token positions) a text view can show, by name."""
        return {}

    def token_sets(self) -> dict[str, list[int]]:
        """Named sets of token positions a view can mark (e.g. visual sink tokens)."""
        return {}


def stored_version(data: dict, cls: type[Result], *, unversioned: int = 1) -> int:
    """The schema version of a stored result of `cls`: files written before results were versioned count as
    `unversioned`; a version newer than this workbench reads is a BundleError that says what to do."""
    if not isinstance(data, dict):
        raise BundleError(f"a {cls.analysis} result must be a JSON object, not {type(data).__name__}")
    version = data.get("schema_version", unversioned)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(f"the {cls.analysis} result has an invalid schema_version {version!r}")
    if version > cls.schema_version:
        raise BundleError(f"the {cls.analysis} result has schema version {version}, newer than this workbench reads "
                          f"({cls.schema_version}); upgrade the workbench or rerun the analysis")
    return version
