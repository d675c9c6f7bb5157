"""Every head at once and token labels at any length, without a browser: thumbnail pooling against naive loops,
thumbnails of stored and recomputed maps against HF eager attention, the PNG's pixels, and the Head map's
thinned tick labels (positions as values, duplicates kept) at 30, 100 and 2,048 tokens."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
import torch
from workbench.app.data.maps import window
from workbench.app.data.thumbnails import pool_map
from workbench.app.figures import attention_map
from workbench.app.figures.common import thinned_positions, token_text
from workbench.app.figures.thumbnails import HIGH, LOW, thumbnail_rgb, thumbnail_uri

import workbench
from tests.helpers import eager_forward


def naive_pool(values: np.ndarray, side: int, mode: str) -> np.ndarray:
    """The definition, one block at a time: blocks of ceil(max(n_q, n_k) / side) positions on both axes."""
    n_q, n_k = values.shape
    step = max(1, -(-max(n_q, n_k) // side))
    out = np.zeros((-(-n_q // step), -(-n_k // step)))
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            block = values[r * step:(r + 1) * step, c * step:(c + 1) * step]
            out[r, c] = block.max() if mode == "max" else block.mean()
    return out


@pytest.mark.parametrize("shape", [(150, 150), (130, 130), (200, 97), (64, 64), (30, 30), (2048, 2048)])
@pytest.mark.parametrize("mode", ["max", "mean"])
def test_pool_map_equals_a_block_by_block_loop(shape, mode):
    values = np.random.default_rng(sum(shape)).random(shape).astype(np.float32)
    pooled = pool_map(values, 64, mode=mode)
    assert max(pooled.shape) <= 64
    np.testing.assert_allclose(pooled, naive_pool(values, 64, mode), rtol=1e-5, atol=1e-7)


def test_pooling_keeps_a_one_token_sink_column_and_the_diagonal_visible():
    n = 2048
    causal = np.tril(np.full((n, n), 1e-4, dtype=np.float32))
    causal[:, 0] = 0.6
    causal[np.arange(n), np.arange(n)] = 0.3
    pooled = pool_map(causal, 64)
    assert pooled.shape == (64, 64)
    assert np.all(pooled[:, 0] == np.float32(0.6)) and np.all(np.diag(pooled)[1:] == np.float32(0.3))
    assert pooled[10, 40] == 0  # above the diagonal: nothing is attended


def test_thumbnail_colours_and_png_pixels():
    pooled = np.array([[0.0, 0.25], [0.5, 2.0]], dtype=np.float32)
    rgb = thumbnail_rgb(pooled, limit=0.5)
    assert tuple(rgb[0, 0]) == tuple(LOW.astype(int)) and tuple(rgb[1, 0]) == tuple(HIGH.astype(int))
    assert tuple(rgb[1, 1]) == tuple(HIGH.astype(int))  # clipped above the limit
    assert tuple(rgb[0, 1]) == tuple(np.rint((LOW + HIGH) / 2).astype(int))
    values = np.random.default_rng(0).random((50, 50)).astype(np.float32)
    uri, limit = thumbnail_uri(values)
    assert limit == pytest.approx(np.sort(values.ravel())[int(0.99 * (values.size - 1))], abs=2e-3)
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))
    np.testing.assert_array_equal(image, thumbnail_rgb(values, limit))


@pytest.fixture(scope="module")
def eager_maps(models, traces_dir):
    out = {}
    for name in ("llama-maps", "llama-stats"):
        trace = workbench.load(traces_dir / f"{name}.wbtrace")
        ids = torch.tensor([[t.id for t in trace.tokens]])
        out[name] = [a[0].float().numpy() for a in eager_forward(models("tiny-llama").model, input_ids=ids).attentions]
    return out


@pytest.mark.parametrize("bundle", ["llama-maps", "llama-stats"])
def test_thumbnails_of_stored_and_recomputed_maps_equal_pooled_eager_maps(traces_dir, eager_maps, bundle, monkeypatch):
    from workbench.app.data import service
    from workbench.app.data.service import AppData

    store = AppData(traces_dir)
    trace = store.trace(bundle)
    n = len(trace.tokens)
    # force several forwards of two layers each on the statistics-only bundle (the budget path of long bundles)
    monkeypatch.setattr(service, "RECOMPUTE_LAYER_BYTES", 2 * n * n * trace.n_heads() * 2)
    layers = store.thumbnails(bundle, "text", range(trace.n_layers()), side=8)
    assert [t.source for t in layers] == ["stored" if bundle == "llama-maps" else "recomputed"] * trace.n_layers()
    for layer, thumbs in enumerate(layers):
        assert thumbs.pooled.shape[0] == trace.n_heads() and thumbs.step == math.ceil(n / 8)
        for head in range(trace.n_heads()):
            expected = naive_pool(eager_maps[bundle][layer][head], 8, "max")
            np.testing.assert_allclose(thumbs.pooled[head], expected, atol=2e-3)
    assert store.thumbnails(bundle, "text", [1], side=8)[0] is layers[1]  # cached


def test_thumbnails_refuse_layers_outside_the_bundle(store):
    from workbench.errors import InputError

    with pytest.raises(InputError, match="no text layers"):
        store.thumbnails("llama-maps", "text", [99])


# ------------------------------------------------------------------------------------------ tick labels
@pytest.mark.parametrize(("start", "end", "most"), [(0, 30, 37), (0, 100, 37), (0, 2048, 37), (1000, 1400, 37),
                                                    (5, 6, 37), (0, 100, 2)])
def test_thinned_positions_are_evenly_spaced_and_fit(start, end, most):
    shown = thinned_positions(start, end, most)
    assert 1 <= len(shown) <= most and all(start <= p < end for p in shown)
    steps = set(np.diff(shown).tolist()) or {1}
    assert len(steps) == 1  # evenly spaced
    step = steps.pop()
    assert shown[0] - start < step and end - 1 - shown[-1] < step  # no gap at either end longer than a step
    if end - start <= most:
        assert shown == list(range(start, end))


@pytest.mark.parametrize("n", [30, 100, 2048])
def test_head_map_labels_every_length_with_positions_as_values(n):
    texts = [[" the", " cat", " the", " mat", "\n"][p % 5] for p in range(n)]
    texts[7] = " an-unusually-long-token-text-that-goes-on"
    full = torch.softmax(torch.randn(n, n), -1)
    fig = attention_map(window(full), texts=texts, regions=["prompt"] * n)
    for axis in (fig.layout.xaxis, fig.layout.yaxis):
        assert axis.tickmode == "array" and axis.type != "category"
        values, labels = list(axis.tickvals), list(axis.ticktext)
        assert len(values) == len(set(values)) and min(20, n) <= len(values) <= 40
        assert labels == [f"{token_text(texts[p], 10)} {p}" for p in values]
        assert sum(label.startswith("␣the ") for label in labels) >= 2  # duplicate texts keep their own ticks
    if n <= 100:  # full resolution: every cell's hover names both tokens in full
        custom = np.asarray(fig.data[0].customdata, dtype=object)
        assert custom[7, 3, 0] == token_text(texts[7], 60) and "goes-on" in custom[7, 3, 0]
    zoomed = attention_map(window(full, (n - 30, n - 1), (n - 30, n - 1)), texts=texts, regions=["prompt"] * n)
    assert zoomed.data[0].customdata is not None and list(zoomed.layout.yaxis.tickvals) == list(range(n - 30, n))
