"""Capture: the custom attention implementation, the recorder and `trace()`."""

from workbench.capture.plan import CapturePlan, MapSelection
from workbench.capture.tracer import trace

__all__ = ["trace", "CapturePlan", "MapSelection"]
