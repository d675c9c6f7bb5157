"""The one error family for mistakes a user can make or fix.

Every `WorkbenchError` carries a message that says what went wrong and what to do; the CLI prints it on
one line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """A user-fixable problem (bad model name, missing weights, bad input, corrupt bundle, ...)."""


class ModelNotFoundError(WorkbenchError):
    """The model name is not in the registry, not a local directory and not a loadable hub id."""


class WeightsMissingError(WorkbenchError):
    """The model is known but its weights are not on this machine and cannot be downloaded."""


class InputError(WorkbenchError):
    """A prompt, image or option the model cannot take."""


class BundleError(WorkbenchError):
    """A trace bundle that is missing, corrupt, truncated or of an unknown schema."""


class OutputExistsError(WorkbenchError):
    """Refusing to overwrite something the user already has."""


class ResourceError(WorkbenchError):
    """A request this machine cannot serve (e.g. full maps larger than the memory budget)."""
