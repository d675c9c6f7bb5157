"""The Dash multi-scale attention explorer (import name `workbench.app`), started by `workbench app`.

Layers, each importable on its own:
    workbench.app.data      server-side access to bundles: catalog, caches, per-head metrics, head maps
                            (stored or recomputed for one layer), token rows, images, analysis results,
                            background trace jobs. No Dash import.
    workbench.app.figures   pure builders returning `go.Figure` (or plain element lists), shared with notebooks.
    workbench.app.pages     one module per Dash page (Runs, Model, Heads, Head, Token, Image, Circuits,
                            Hallucination); `PAGES` lists them, so a new analysis adds its view there.
    workbench.app.server    `create_app(traces_dir)`: the Dash app with the page shell.

Dash itself is imported only by `create_app`, so `import workbench.app` stays light.
"""

from __future__ import annotations


def create_app(traces_dir, **options):
    """The Dash app over the bundles under `traces_dir` (see `workbench.app.server.create_app`)."""
    from workbench.app.server import create_app as _create

    return _create(traces_dir, **options)


__all__ = ["create_app"]
