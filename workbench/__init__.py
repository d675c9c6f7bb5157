"""Attention workbench: capture attention from real models, analyse it, explain what the model says.

    >>> import workbench
    >>> t = workbench.trace("tiny-gpt2", "The cat sat on the mat", max_new_tokens=3)
    >>> t.n_layers(), t.n_heads()
    (3, 4)

Heavy modules (torch, transformers) load on first use, so `import workbench` stays fast.
"""

from __future__ import annotations

from workbench.errors import BundleError, InputError, ModelNotFoundError, WeightsMissingError, WorkbenchError
from workbench.lazy import lazy_getattr
from workbench.version import __version__

_LAZY = {
    "trace": ("workbench.capture.tracer", "trace"),
    "Tracer": ("workbench.capture.tracer", "Tracer"),
    "CapturePlan": ("workbench.capture.plan", "CapturePlan"),
    "load": ("workbench.traces.trace", "load"),
    "Trace": ("workbench.traces.trace", "Trace"),
    "Token": ("workbench.traces.tokens", "Token"),
    "REGIONS": ("workbench.traces.tokens", "REGIONS"),
    "load_model": ("workbench.models.loading", "load_model"),
    "MapSelection": ("workbench.capture.plan", "MapSelection"),
}

__all__ = ["__version__", "WorkbenchError", "BundleError", "InputError", "ModelNotFoundError",
           "WeightsMissingError", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
