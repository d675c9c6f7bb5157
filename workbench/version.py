"""The workbench version, importable by any layer (manifests record it) without importing the public API."""

__version__ = "0.1.0"
