"""The Tracer an analysis that runs the model works through: a Tracer as given, or a LoadedModel wrapped without
loading anything (never a model name: analyses do not load models)."""

from __future__ import annotations

from workbench.errors import InputError


def as_tracer(tracer):
    """A Tracer for `tracer` (a Tracer or a LoadedModel)."""
    from workbench.capture import Tracer

    if isinstance(tracer, Tracer):
        return tracer
    if isinstance(tracer, (str, bytes)) or hasattr(tracer, "__fspath__"):
        raise InputError("this analysis runs the model through a Tracer: pass Tracer.open(name), not a model name")
    return Tracer.open(tracer)
