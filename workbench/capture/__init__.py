"""Capture: `Tracer` (the one object that runs a model), `CapturePlan` (every capture option) and `trace()`.

Inside: the attention implementation registered with transformers (`attention.py`), the kernel choice
(`kernel_choice.py`), the recorder and its statistics (`recorder.py`, `statistics.py`), greedy generation
(`generation.py`), the backends (`backends/`) and the replay of stored bundles (`replay.py`). Names that need
torch load on first use, so checking a plan (`CapturePlan.build`) stays fast.
"""

from workbench.capture.plan import CapturePlan, MapSelection
from workbench.lazy import lazy_getattr

_LAZY = {
    "Tracer": ("workbench.capture.tracer", "Tracer"),
    "Generation": ("workbench.capture.tracer", "Generation"),
    "trace": ("workbench.capture.tracer", "trace"),
}

__all__ = ["Tracer", "CapturePlan", "MapSelection", "Generation", "trace"]

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
