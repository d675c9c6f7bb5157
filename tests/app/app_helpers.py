"""Helpers shared by the app tests: images, analysis results in the documented shapes, a threaded server."""

from __future__ import annotations

import io
import socket
import threading
from pathlib import Path

import numpy as np

ARTIFACTS = Path(__file__).resolve().parents[2] / "out" / "test-artifacts" / "app"


def png_bytes(seed: int = 0, size: int = 64) -> bytes:
    from PIL import Image

    image = Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8"))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def routes_result(trace, position: int) -> dict:
    """A routes result in the shape workbench.analyses.routes writes (node-link graph per route)."""
    n_layers, n_heads = trace.n_layers(), trace.n_heads()
    nodes = [{"id": f"X0_{position - 1}", "kind": "embedding", "layer": -1, "position": position - 1}]
    edges = []
    for layer in range(n_layers):
        nodes += [{"id": f"A{layer}_{position}", "kind": "attention", "layer": layer, "position": position},
                  {"id": f"I{layer}_{position}", "kind": "layer_output", "layer": layer, "position": position}]
        source = f"X0_{position - 1}" if layer == 0 else f"I{layer - 1}_{position}"
        heads = [0.0] * n_heads
        heads[layer % n_heads] = 0.5
        edges += [{"source": source, "target": f"A{layer}_{position}", "weight": 0.6, "kind": "attention",
                   "heads": heads},
                  {"source": f"A{layer}_{position}", "target": f"I{layer}_{position}", "weight": 0.9, "kind": "residual"}]
    usage = [[1 if head == layer % n_heads else 0 for head in range(n_heads)] for layer in range(n_layers)]
    return {"analysis": "routes", "routes": [{"position": position, "output": f"I{n_layers - 1}_{position}",
                                              "graph": {"directed": True, "multigraph": False, "graph": {},
                                                        "nodes": nodes, "edges": edges}}],
            "heads": {"usage": {"routes": usage, "edges": usage, "weight": usage}, "patterns": None}}


def circuits_result() -> dict:
    nodes = [{"id": "L0H1", "layer": 0, "head": 1, "firings": 0}, {"id": "L2H3", "layer": 2, "head": 3, "firings": 4}]
    edges = [{"source": "L0H1", "target": "L2H3", "weight": 0.7, "q_weight": 0.0, "k_weight": 0.7, "sides": "k",
              "count": 4}]
    return {"analysis": "circuits", "graph": {"directed": True, "graph": {}, "nodes": nodes, "edges": edges}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """The app served by werkzeug in a thread on 127.0.0.1:<free port>; stopped by `close()`."""

    def __init__(self, app):
        from werkzeug.serving import make_server

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = make_server("127.0.0.1", self.port, app.server, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)
