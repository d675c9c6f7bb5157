"""The app on a real SmolLM2 bundle (what `make demo` writes): per-head metrics and a recomputed head map
against HF eager attention, every figure builder on it, and (with a browser) screenshots of the pages."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import workbench
from tests.app.app_helpers import ARTIFACTS, Server
from tests.helpers import eager_forward

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(smollm2_bundle, models):
    trace = workbench.load(smollm2_bundle)
    ids = torch.tensor([[t.id for t in trace.tokens]])
    attentions = [a[0].double() for a in eager_forward(models("smollm2").model, input_ids=ids).attentions]
    return trace, attentions


def test_smollm2_metrics_and_recomputed_map_equal_eager(demo, smollm2_bundle):
    from workbench.app.data.metrics import statistics_metrics
    from workbench.app.data.service import AppData

    trace, attentions = demo
    metrics = statistics_metrics(trace)
    assert metrics["sink"].values.shape == (30, 9)
    n = len(trace.tokens)
    for layer, maps in enumerate(attentions):
        np.testing.assert_allclose(metrics["sink"].values[layer], maps[:, :, 0].sum(1).numpy() / n, atol=1e-4)
    store = AppData(smollm2_bundle.parent)
    head_map = store.head_map(smollm2_bundle.name.removesuffix(".wbtrace"), "text", 3, 1)
    assert head_map.source == "recomputed" and head_map.warning is None
    torch.testing.assert_close(head_map.values.double(), attentions[3][1], atol=2e-3, rtol=0)


def test_every_figure_builds_on_the_demo_bundle(demo):
    from workbench.app.data.maps import window
    from workbench.app.data.metrics import statistics_metrics, token_lookback, token_region_shares
    from workbench.app.figures import (
        attention_map,
        head_grid,
        layer_curves,
        line_view,
        lookback_heatmap,
        token_layers,
        token_regions,
    )

    from workbench.traces.tokens import REGIONS

    trace, attentions = demo
    texts, regions = [t.text for t in trace.tokens], [t.region for t in trace.tokens]
    metrics = statistics_metrics(trace)
    for metric in metrics.values():
        head_grid(metric.values, label=metric.label)
    layer_curves({"entropy": metrics["entropy"].values})
    full = attentions[5][2].float()
    assert attention_map(window(full), texts=texts, regions=regions).data[0].customdata is not None
    line_view(full[:20, :20].numpy(), start=0, texts=texts, regions=regions, selected_query=10)
    rows = torch.stack([maps[:, 40] for maps in attentions]).mean(1).numpy()
    token_layers(rows, position=40, texts=texts, regions=regions)
    token_regions(token_region_shares(trace, 40).mean(1), region_names=list(REGIONS))
    lookback = token_lookback(trace)
    start, end = trace.generation["start"], trace.generation["end"]
    lookback_heatmap(lookback.mean(1), positions=list(range(start, end)), texts=texts)


@pytest.mark.browser
def test_demo_pages_screenshots(smollm2_bundle, tmp_path):
    from pathlib import Path

    from playwright.sync_api import sync_playwright
    from workbench.app import create_app

    from tests.app.test_browser import ARGS, CHROMIUM, wait_figure

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is missing; run `make browser`")
    root = tmp_path / "demo"
    root.mkdir()
    shutil.copytree(smollm2_bundle, root / "capital.wbtrace")
    server = Server(create_app(root))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            for name, path, graph in (("model", "/model?bundle=capital", "model-grid"),
                                      ("head", "/head?bundle=capital&layer=3&head=1", "head-map"),
                                      ("token", "/token?bundle=capital&pos=40", "token-layers"),
                                      ("hallucination", "/hallucination?bundle=capital", "hall-heatmap")):
                page.goto(server.url + path)
                wait_figure(page, graph)
                page.wait_for_timeout(500)
                if name == "head":
                    assert "matches the stored statistics" in page.inner_text("#head-source")
                page.screenshot(path=str(ARTIFACTS / f"demo-{name}.png"), full_page=True)
            browser.close()
    finally:
        server.close()
