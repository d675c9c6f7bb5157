"""One definition of every quantity derived from a trace's statistics.

The JSON export, sweeps, the app and the probe features all call these functions, so a number means the
same thing wherever it is shown. Axis names follow the vocabulary in `workbench.traces`.

Positions: a causal language model predicts the token at position t from query row t - 1. Results that
refer to a generated token store the token's position; the row that predicts it is named
`predicting_row` wherever it is stored.
"""

from __future__ import annotations


def predicting_row(token_position: int) -> int:
    """The query row whose output predicts the token at `token_position` (a causal LM's next-token row)."""
    if token_position < 1:
        raise ValueError(f"token position {token_position} has no predicting row: position 0 is never predicted")
    return token_position - 1


def predicted_position(row: int) -> int:
    """The position of the token that query row `row` predicts (inverse of `predicting_row`)."""
    return row + 1
