"""Per-token hallucination scores of a Lookback Lens probe on one traced generation (results/lookback.json).

`LookbackProbe.score_trace` builds them; the class registers itself with `workbench.analyses.registry`, so
whatever reads a bundle's results gets the scores back as token values at token positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from workbench.analyses.registry import register
from workbench.analyses.result import Result, TokenValues, stored_version
from workbench.errors import BundleError

MEANING = "score = probability that the token is hallucinated (1 = hallucinated)"


@register
@dataclass(frozen=True)
class LookbackScores(Result):
    """token_scores: ({pos, score, text}, ...) with pos the generated token's position; generation_score: the
    generation's score (its highest window, or the whole span's score)."""

    analysis: ClassVar[str] = "lookback"
    schema_version: ClassVar[int] = 1

    probe: dict
    token_scores: tuple[dict, ...] = ()
    generation_score: float | None = None
    threshold: float = 0.5

    def to_json(self) -> dict:
        return {"analysis": self.analysis, "schema": "workbench-probe-scores", "schema_version": self.schema_version,
                "probe": self.probe, "meaning": MEANING, "token_scores": list(self.token_scores),
                "generation_score": self.generation_score, "threshold": self.threshold}

    @classmethod
    def from_json(cls, data: dict) -> LookbackScores:
        stored_version(data, cls)
        scores = tuple(dict(t) for t in data["token_scores"])
        if not all(isinstance(t.get("pos"), int) and isinstance(t.get("score"), (int, float)) for t in scores):
            raise BundleError("every token score of a lookback result needs an integer pos and a numeric score")
        return cls(probe=dict(data.get("probe") or {}), token_scores=scores,
                   generation_score=data.get("generation_score"), threshold=float(data.get("threshold", 0.5)))

    def token_values(self) -> dict[str, TokenValues]:
        positions = np.array([int(t["pos"]) for t in self.token_scores], dtype=np.int64)
        scores = np.array([float(t["score"]) for t in self.token_scores], dtype=np.float64)
        return {"score": TokenValues(positions, scores, "probe score", MEANING)}
