"""What a backend's capture of one input hands back to the Tracer, which builds the `Trace` from it."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.capture.layout import ModelLayout
from workbench.capture.recorder import Recorder
from workbench.traces.tokens import Token


@dataclass
class Captured:
    tokens: list[Token]  # prompt tokens and the generated ones
    tensors: dict  # name -> (tensor, axes): the recorder's statistics plus outputs.* predictions
    recorder: Recorder  # for the manifest: lengths, numerics verdict, kernels that ran
    layout: ModelLayout
    attention_backend: str  # what computed attention ("workbench" = the registered implementation, or a library)
    frontend: dict | None = None  # the library that ran the model, its version and what it reported
