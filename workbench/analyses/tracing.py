"""What an analysis that runs the model again needs: the Tracer it works through (a Tracer as given, or a
LoadedModel wrapped without loading anything; never a model name: analyses do not load models), and the image a
trace was made with (checked against the recorded sha256, so a moved or edited picture is refused, not analysed)."""

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


def traced_image(trace, image=None):
    """The image to run `trace`'s input again with: `image` if given, else the path the trace recorded; None for a
    trace without an image. Either must hash to the recorded sha256."""
    from workbench.capture.inputs import load_image

    recorded = trace.meta["inputs"].get("image")
    if recorded is None:
        return None
    image = image if image is not None else recorded.get("source")
    if image is None or image == "in-memory image":
        raise InputError("the trace was made from an in-memory image; pass image=... to analyse it")
    if load_image(image)[1]["sha256"] != recorded["sha256"]:
        raise InputError(f"{image} is not the image this trace was made with (sha256 differs)")
    return image
