"""The app's pages, coarse to fine. Each module exposes `PAGE` (a `Page`: path, name, layout, callbacks).

To add the view of a new analysis: write `pages/<name>.py` with a `PAGE`, read its result through
`workbench.app.data.results` (add the analysis to `ANALYSES` with the command that produces it, so a
bundle without it shows that command), and append the module here.
"""

from __future__ import annotations

from workbench.app.pages import (
    causal,
    circuits,
    compare,
    hallucination,
    head,
    heads,
    image,
    model,
    rollout,
    runs,
    token,
)
from workbench.app.pages.common import Page

PAGES: list[Page] = [runs.PAGE, model.PAGE, heads.PAGE, head.PAGE, token.PAGE, image.PAGE, circuits.PAGE,
                     hallucination.PAGE, compare.PAGE, causal.PAGE, rollout.PAGE]

__all__ = ["PAGES", "Page"]
