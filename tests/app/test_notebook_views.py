"""workbench.app.notebook: the app's views from a Trace, checked against numbers computed here from the
statistics, the stored maps and the analysis graphs (never against the figures' own output)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from workbench.app import notebook

import workbench
from workbench.errors import InputError


@pytest.fixture(scope="module")
def llama_maps():
    return workbench.trace("tiny-llama", "The cat sat on the mat and the dog", max_new_tokens=3, maps="1:all",
                           map_dtype="float32")


def test_model_view_shows_alpha_of_position_zero(llama_maps):
    expected = np.stack([(llama_maps.layer(l)["key_mass"][:, 0] / llama_maps.layer(l)["key_count"][0]).numpy()
                         for l in range(llama_maps.n_layers())])
    np.testing.assert_allclose(np.asarray(notebook.model_view(llama_maps, "sink").data[0].z, float), expected, atol=1e-6)
    with pytest.raises(InputError, match="no metric"):
        notebook.model_view(llama_maps, "nonsense")


def test_head_view_stored_and_recomputed_maps_agree(llama_maps):
    stored = notebook.head_view(llama_maps, 1, 2)
    np.testing.assert_allclose(np.asarray(stored.data[0].z, float), llama_maps.layer(1)["maps"][2].numpy(), atol=1e-6)
    plain = workbench.trace("tiny-llama", "The cat sat on the mat and the dog", max_new_tokens=3)
    recomputed = notebook.head_view(plain, 1, 2, model="tiny-llama")
    assert "recomputed" in recomputed.layout.title.text and "stored" in stored.layout.title.text
    np.testing.assert_allclose(np.asarray(recomputed.data[0].z, float), np.asarray(stored.data[0].z, float), atol=1e-5)


def test_image_view_puts_each_value_on_its_patch():
    trace = workbench.trace("tiny-llava", "What is shown?", "data/scenes/images/scene_0000.png")
    patches = [t for t in trace.tokens if t.region == "image"]
    values = np.arange(len(patches), dtype=float)
    grid = np.asarray(notebook.image_view(trace, values).data[0].z, float)
    for value, token in zip(values, patches):
        assert grid[token.patch[0], token.patch[1]] == value
    with pytest.raises(InputError, match="one number per image token"):
        notebook.image_view(trace, values[:-1])
    with pytest.raises(InputError, match="no image tokens"):
        notebook.image_view(workbench.trace("tiny-llama", "hello"))


def test_route_and_circuit_views_draw_every_edge():
    from workbench.analyses import circuits, routes

    loaded = workbench.load_model("planted-induction")
    trace = workbench.trace(loaded, "f x r c e l f x r c e l", raw=True, decomposition=True)
    result = routes.analyse(trace, position=-1)
    graph = result.routes[0].graph
    fig = notebook.route_view(result, trace=trace)  # every edge of a route is above the tau it was built with
    assert sum(len(t.x) for t in fig.data if t.meta == "edges") == graph.number_of_edges()  # a hover marker each
    assert sum(len(t.x) for t in fig.data if t.meta == "nodes") == graph.number_of_nodes()
    assert all("pass model=" in text for t in fig.data if t.meta == "nodes" for text in t.hovertext)
    fig = notebook.route_view(result, trace=trace, model=loaded, threshold=1.5)  # no edge: says so
    assert "No edge" in fig.layout.annotations[0].text
    circuit = circuits.analyse(trace, model=loaded)
    fig = notebook.circuit_view(circuit, n_layers=trace.n_layers(), n_heads=trace.n_heads())
    hovers = [text for t in fig.data if t.meta == "edges" for text in t.hovertext]  # one per drawn edge
    assert len(hovers) == circuit.graph.number_of_edges()  # a small graph: all of it under the default top-k
    heads = next(t for t in fig.data if t.meta == "heads")
    assert len(heads.x) == len({node for edge in circuit.graph.edges for node in edge})
    heaviest = max(w for _, _, w in circuit.graph.edges(data="weight"))
    assert "No edge" in notebook.circuit_view(circuit, min_weight=heaviest + 1).layout.annotations[0].text
    assert torch.isfinite(torch.tensor(heads.x, dtype=torch.float64)).all()
