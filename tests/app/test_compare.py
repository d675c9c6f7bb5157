"""Compare page data and views without a browser: every number is checked against an independent computation
from the bundles' stored maps or raw statistics with numpy (not through the metric code), alignment against
planted token sequences, and incompatible pairs against the message they must give."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from workbench.app.data import compare as cmp
from workbench.app.data.synthetic import synthetic_trace

import workbench
from tests.app.app_helpers import png_bytes
from workbench.traces.names import tensor_name

PROMPTS = ("The cat sat on the mat and looked at the dog", "The dog sat on the rug and looked at the cat")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Two tiny-llama bundles with fp32 maps (two prompts), the first again under an ACT intervention, a
    shorter prompt, a model with another grid (synthetic, stored maps), a statistics-only bundle."""
    from workbench.interventions import ACT

    folder = tmp_path_factory.mktemp("compare")
    for name, prompt in (("cat", PROMPTS[0]), ("dog", PROMPTS[1]), ("short", "The cat sat")):
        workbench.trace("tiny-llama", prompt, max_new_tokens=3, maps="all", map_dtype="float32").save(
            folder / f"{name}.wbtrace")
    workbench.trace("tiny-llama", PROMPTS[0], max_new_tokens=3, maps="all", map_dtype="float32",
                    intervention=ACT(beta=0.2, threshold=0.01, first_layer=0, min_queries=1)).save(folder / "cat-act.wbtrace")
    synthetic_trace(layers=4, heads=8, tokens=20, n_generated=3, map_layers=(0, 1), seed=4,
                    model="synthetic-other").save(folder / "other.wbtrace")
    workbench.trace("tiny-llama", PROMPTS[1], max_new_tokens=3).save(folder / "dog-stats.wbtrace")
    image = folder / "picture.png"
    image.write_bytes(png_bytes())
    for name, picture in (("llava-image", str(image)), ("llava-text", None)):
        workbench.trace("tiny-llava", "Describe the picture", image=picture, max_new_tokens=2, maps="all",
                        map_dtype="float32").save(folder / f"{name}.wbtrace")
    return folder


@pytest.fixture(scope="module")
def app(root):
    from workbench.app import create_app

    return create_app(root, allow_recompute=False)


def load(root, name):
    return workbench.load(root / f"{name}.wbtrace")


def maps_of(trace, layer) -> np.ndarray:
    """[head, query, key] stored maps read straight from the bundle, float64."""
    return trace.tensor(tensor_name("text", layer, "maps")).double().numpy()


def test_token_curves_match_the_stored_maps(root):
    """alpha of a key = mean of its map column over the rows that see it; entropy = -sum p log p of the row."""
    trace = load(root, "cat")
    n, layers, heads = len(trace.tokens), trace.n_layers(), trace.n_heads()
    received, entropy = np.zeros((layers, heads, n)), np.zeros((layers, heads, n))
    for layer in range(layers):
        maps = maps_of(trace, layer)
        for key in range(n):
            received[layer, :, key] = maps[:, key:, key].mean(-1)  # causal: rows key..n-1 see key
        entropy[layer] = -(maps * np.log(np.where(maps > 0, maps, 1))).sum(-1)
    np.testing.assert_allclose(cmp.token_curve(trace, "received", layer=1, head=2), received[1, 2], atol=2e-5)
    np.testing.assert_allclose(cmp.token_curve(trace, "received", layer=1), received[1].mean(0), atol=2e-5)
    np.testing.assert_allclose(cmp.token_curve(trace, "received"), received.mean((0, 1)), atol=2e-5)
    np.testing.assert_allclose(cmp.token_curve(trace, "entropy", layer=0, head=1), entropy[0, 1], atol=2e-4)
    np.testing.assert_allclose(cmp.token_curve(trace, "entropy"), entropy.mean((0, 1)), atol=2e-4)
    logprob = trace.tensor("outputs.next_token_logprob").double().numpy()
    probability = cmp.token_curve(trace, "probability")
    assert math.isnan(probability[0])
    np.testing.assert_allclose(probability[1:], np.exp(logprob[:n - 1]))


def test_metric_difference_matches_the_maps_of_both_bundles(root, app):
    """The page's B - A of the sink score and of the entropy equals the same quantities computed from each
    bundle's stored maps with numpy, head by head."""
    from workbench.app.pages.compare import metric_view

    def from_maps(trace):
        sink = np.stack([maps_of(trace, layer)[:, :, 0].mean(-1) for layer in range(trace.n_layers())])
        entropy = np.stack([(-(m * np.log(np.where(m > 0, m, 1))).sum(-1)).mean(-1)
                            for m in (maps_of(trace, layer) for layer in range(trace.n_layers()))])
        return sink, entropy

    (sink_a, entropy_a), (sink_b, entropy_b) = from_maps(load(root, "cat")), from_maps(load(root, "dog"))
    with app.server.app_context():
        grid, profile, _ = metric_view("cat", "dog", "sink")
        assert [t.name for t in grid.data] == ["cat", "dog", "B − A"]
        np.testing.assert_allclose(np.asarray(grid.data[2].z, dtype=float), sink_b - sink_a, atol=2e-5)
        np.testing.assert_allclose(np.asarray(grid.data[0].z, dtype=float), sink_a, atol=2e-5)
        assert grid.layout.coloraxis2.cmid == 0 and grid.layout.coloraxis2.cmin == -grid.layout.coloraxis2.cmax
        assert "L%{y}H%{x}" in grid.data[2].hovertemplate
        np.testing.assert_allclose(profile.data[1].y, sink_b.mean(1), atol=2e-5)
        grid, _, _ = metric_view("cat", "dog", "entropy")
        np.testing.assert_allclose(np.asarray(grid.data[2].z, dtype=float), entropy_b - entropy_a, atol=2e-4)


def test_map_difference_is_b_minus_a_of_the_stored_maps(root, app):
    from workbench.app.pages.compare import maps_view

    a, b = load(root, "cat"), load(root, "cat-act")
    with app.server.app_context():
        fig, messages = maps_view("cat", "cat-act", 1, 2)
    expected = maps_of(b, 1)[2] - maps_of(a, 1)[2]
    assert len(fig.data) == 3
    np.testing.assert_allclose(np.asarray(fig.data[2].z, dtype=float), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), maps_of(a, 1)[2], atol=1e-6)
    assert fig.layout.coloraxis2.cmid == 0
    from workbench.app.figures.common import token_label

    assert list(fig.data[0].customdata[3][5]) == [token_label(a.tokens[3].text, 40), token_label(a.tokens[5].text, 40)]
    assert "stored map" in json.dumps([m.to_plotly_json() for m in messages], default=str)


def test_signed_window_keeps_the_largest_magnitude_of_each_block():
    generator = torch.Generator().manual_seed(0)
    full = torch.randn(37, 53, generator=generator)
    win = cmp.signed_window(full, max_cells=8)
    assert (win.q_step, win.k_step) == (5, 7)
    naive = np.zeros(win.values.shape)
    values = full.numpy()
    for r in range(naive.shape[0]):
        for c in range(naive.shape[1]):
            block = values[r * 5:(r + 1) * 5, c * 7:(c + 1) * 7]
            naive[r, c] = block.flat[np.abs(block).argmax()]
    np.testing.assert_array_equal(win.values, naive.astype(np.float32))
    small = cmp.signed_window(full[:5, :5], max_cells=8)
    np.testing.assert_array_equal(small.values, values[:5, :5])


def test_alignment_of_planted_sequences(root):
    cat, dog, short = load(root, "cat"), load(root, "dog"), load(root, "short")
    ids_cat, ids_dog = [t.id for t in cat.tokens], [t.id for t in dog.tokens]
    common = min(len(ids_cat), len(ids_dog))
    prefix = next((i for i in range(common) if ids_cat[i] != ids_dog[i]), common)
    found = cmp.align(cat, dog)
    assert found.shared_prefix == prefix and found.mode == "position" and found.same_model and found.same_grid
    assert found.differing == sum(x != y for x, y in zip(ids_cat, ids_dog))
    assert cmp.align(cat, cat).same_tokens and cmp.align(cat, load(root, "cat-act")).shared_prefix >= 9
    shorter = cmp.align(cat, short)
    assert not shorter.same_length and "different lengths" in shorter.map_reason()
    assert shorter.pairs.tolist() == [[i, i] for i in range(len(short.tokens))]
    # with vs without an image: BOS, 16 image tokens and the newline a chat template adds, then the same text
    text_ids = [1] + list(range(10, 39))
    vision_ids = [1] + [999] * 16 + [5] + list(range(10, 39))
    text = planted(text_ids, ["special"] + ["prompt"] * 29)
    vision = planted(vision_ids, ["special"] + ["image"] * 16 + ["prompt"] * 30)
    paired = cmp.align(text, vision)
    assert paired.mode == "text" and paired.image_b == 16
    assert paired.pairs.tolist() == [[0, 0]] + [[k, 17 + k] for k in range(1, 30)]  # the newline stays unpaired
    assert "image tokens: A 0, B 16" in paired.map_reason()


def planted(ids: list[int], regions: list[str], layers: int = 2, heads: int = 2):
    """A stand-in trace with the given token ids and regions (all `align` reads)."""
    from types import SimpleNamespace

    from workbench.traces.tokens import Token

    tokens = [Token(i, token_id, f"t{token_id}", region) for i, (token_id, region) in enumerate(zip(ids, regions))]
    return SimpleNamespace(tokens=tokens, model={"name": "planted"}, n_layers=lambda stack="text": layers,
                           n_heads=lambda stack="text": heads)


def test_models_with_other_grids_compare_what_aligns_and_say_what_does_not(root, app):
    from workbench.app.pages.compare import curves_view, maps_view, metric_view

    with app.server.app_context():
        grid, profile, messages = metric_view("cat", "other", "sink")
        assert len(grid.data) == 2 and "grids differ" in json.dumps(grid.layout.annotations[-1].text)
        assert "relative depth" in profile.layout.xaxis.title.text
        np.testing.assert_allclose(profile.data[1].x, [0, 1 / 3, 2 / 3, 1])
        fig, messages = maps_view("cat", "other", 1, 7)  # tiny-llama has 6 heads: head 7 exists only in B
        text = json.dumps([m.to_plotly_json() for m in messages], default=str)
        assert len(fig.data) == 1 and "A has no layer 1 head 7" in text and "grids differ" in text
        fig, messages = curves_view("cat", "other", "received", "head", 2, 7)
        assert "bundle A has no layer 2 head 7" in json.dumps(messages[0].to_plotly_json(), default=str)
        fig, _ = curves_view("cat", "other", "received", "all", 0, 0)
        assert len(fig.data) == 3 and len(fig.data[0].x) == min(len(load(root, "cat").tokens), 20)


def test_pages_never_raise_on_incompatible_or_odd_pairs(root, app):
    from workbench.app.pages.compare import layout, maps_view

    def text(component):
        return json.dumps(component.to_plotly_json(), default=lambda o: o.to_plotly_json()
                          if hasattr(o, "to_plotly_json") else str(o))

    with app.server.app_context():
        for params in ({"a": "cat", "b": "short"}, {"a": "cat", "b": "cat"}, {"a": "cat", "b": "other"},
                       {"bundle": "dog"}, {"a": ["x", "y"], "b": "../../etc"}, {}):
            built = text(layout(**params))
            assert "wb-error" not in built and "Traceback" not in built, params
        assert "same bundle" in text(layout(a="cat", b="cat"))
        _, messages = maps_view("cat", "dog-stats", 0, 0)  # B has no maps and may not recompute
        assert "no map for B" in json.dumps([text(m) for m in messages])


def test_with_and_without_an_image_pairs_the_text_tokens(root, app):
    """tiny-llava on one prompt with and without an image: the curves pair the text tokens both share, in order
    (the chat template's newline after the image is left out), the received attention at each pair is each bundle's own map column mean, and the map
    difference is refused because the lengths differ."""
    from workbench.app.pages.compare import curves_view, maps_view

    image, text = load(root, "llava-image"), load(root, "llava-text")
    found = cmp.align(image, text)
    assert found.mode == "text" and found.image_a > 0 and found.image_b == 0
    ids_a, ids_b = [t.id for t in image.tokens], [t.id for t in text.tokens]
    assert all(ids_a[i] == ids_b[j] for i, j in found.pairs) and len(found.pairs) >= len(ids_b) - 2
    assert all(image.tokens[i].region != "image" for i, _ in found.pairs)
    assert (np.diff(found.pairs, axis=0) > 0).all()  # in order on both sides
    with app.server.app_context():
        fig, _ = curves_view("llava-image", "llava-text", "received", "layer", 1, 0)
        maps_fig, messages = maps_view("llava-image", "llava-text", 1, 0)

    def column_means(trace, layer):  # [key] alpha of every key, mean over heads, from the stored maps
        maps = maps_of(trace, layer)
        return np.array([maps[:, key:, key].mean(-1).mean() for key in range(maps.shape[-1])])

    expected_a = column_means(image, 1)[found.pairs[:, 0]]
    expected_b = column_means(text, 1)[found.pairs[:, 1]]
    np.testing.assert_allclose(fig.data[0].y, expected_a, atol=2e-5)
    np.testing.assert_allclose(fig.data[1].y, expected_b, atol=2e-5)
    np.testing.assert_allclose(fig.data[2].y, expected_b - expected_a, atol=4e-5)
    assert list(fig.data[0].x) == list(range(len(found.pairs))) and "shared text token" in fig.layout.xaxis2.title.text
    assert len(maps_fig.data) == 2
    assert "image tokens: A" in json.dumps([m.to_plotly_json() for m in messages], default=str)
