"""Model registry and loading: registry names, local directories and hub ids, all through the HF auto classes."""

from workbench.models.loaded import LoadedModel
from workbench.models.loading import load_model
from workbench.models.registry import REGISTRY, ModelSpec

__all__ = ["LoadedModel", "ModelSpec", "REGISTRY", "load_model"]
