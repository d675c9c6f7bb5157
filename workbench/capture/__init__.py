"""Capture: `Tracer` (the one object that runs a model), `CapturePlan` (every capture option) and `trace()`.

Inside: the attention implementation registered with transformers (`attention.py`), the kernel choice
(`kernel_choice.py`), the recorder and its statistics (`recorder.py`, `statistics.py`), greedy generation
(`generation.py`), the backends (`backends/`) and the replay of stored bundles (`replay.py`).
"""

from workbench.capture.plan import CapturePlan, MapSelection
from workbench.capture.tracer import Generation, Tracer, trace

__all__ = ["Tracer", "CapturePlan", "MapSelection", "Generation", "trace"]
