"""The Causal and Rollout pages and the Token view's lens section in real Chromium, on a SmolLM2 bundle of an IOI
prompt after the commands that store their results: `workbench patch --store` (every head, last position),
`workbench ablate --store`, `workbench importance --curve --store`, `workbench lens`, `workbench rollout`. What is
drawn is read back from the page and compared with the results files; a click on a head opens it. Screenshots land
in out/test-artifacts/app/ (causal-smollm2.png is docs/images/app-causal.png, token-lens-smollm2.png is
docs/images/app-token-lens.png, rollout-smollm2.png is docs/images/app-rollout.png)."""

from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pytest

import workbench
from tests.app.app_helpers import ARTIFACTS, Server
from tests.app.test_browser import browser, click_cell, page, shot, wait_figure  # noqa: F401 - fixtures and helpers
from tests.workbench.cli.cli_inprocess import run_cli
from workbench.models.registry import data_root

pytestmark = [pytest.mark.browser, pytest.mark.slow]
IOI = json.loads((data_root() / "prompts" / "ioi.jsonl").read_text().splitlines()[0])

# A trace's property and the axis ticks as the page holds them (plotly keeps typed arrays as {dtype, bdata, shape}).
DRAWN = """([id, index, key]) => { const gd = document.querySelector(`#${id} .js-plotly-plot`);
    return {values: gd.data[index][key], title: gd.layout.title.text,
            yticks: Array.from(gd.querySelectorAll('.ytick text')).map(e => e.textContent),
            xticks: Array.from(gd.querySelectorAll('.xtick text')).map(e => e.textContent)}; }"""


def decoded(values) -> np.ndarray:
    """A plotly array from the page: a plain (nested) list, or a typed array {dtype, bdata, shape?}."""
    if isinstance(values, dict) and "bdata" in values:
        flat = np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"]))
        shape = values.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat.astype(np.float64)
    return np.array([[np.nan if v is None else v for v in row] if isinstance(row, list) else
                     (np.nan if row is None else row) for row in values], dtype=np.float64)


def drawn(tab, graph_id: str, index: int = 0, key: str = "z") -> tuple[np.ndarray, dict]:
    found = tab.evaluate(DRAWN, [graph_id, index, key])
    return decoded(found["values"]).astype(np.float64), found


@pytest.fixture(scope="module")
def causal_server(models, tmp_path_factory):
    from workbench.app import create_app

    root = tmp_path_factory.mktemp("causal") / "traces"
    root.mkdir(parents=True)
    bundle = root / "ioi.wbtrace"
    workbench.trace(models("smollm2"), IOI["prompt"], raw=True, maps="all:all").save(bundle)
    pairs = data_root() / "prompts" / "ioi.jsonl"
    for args in (("patch", "-m", "smollm2", "--pairs", pairs, "--limit", "1", "--positions", "-1", "--store", bundle),
                 ("ablate", "-m", "smollm2", "--pairs", pairs, "--limit", "1", "--heads", "23.3,29.1,23.0,5.5",
                  "--store", bundle),
                 ("importance", "-m", "smollm2", "--prompts", pairs, "--limit", "2", "--curve", "--store", bundle),
                 ("lens", bundle, "--pos", "-1", "--target", IOI["answer"]),
                 ("rollout", bundle, "--pos", "-1")):
        code, out, err = run_cli(*args)
        assert code == 0, (args[0], err)
    stored = {name: json.loads((bundle / "results" / f"{name}.json").read_text())
              for name in ("patching", "ablation", "importance", "lens", "rollout")}
    running = Server(create_app(root))
    yield running, stored, workbench.load(bundle)
    running.close()
    shutil.rmtree(root, ignore_errors=True)


def test_causal_page_draws_the_stored_patching_ablation_and_importance(causal_server, page):  # noqa: F811
    server, stored, _ = causal_server
    page.goto(server.url + "/causal?bundle=ioi")
    for graph_id in ("causal-patching", "causal-ablation", "causal-importance", "causal-pruning"):
        wait_figure(page, graph_id)
    effect, shown = drawn(page, "causal-patching")
    expected = np.array([[np.nan if plane[h][0] is None else plane[h][0] for h in range(9)]
                         for plane in stored["patching"]["effect"]])
    np.testing.assert_allclose(effect, expected, atol=1e-6, equal_nan=True)
    assert sorted(map(int, shown["yticks"])) == list(range(30)) and sorted(map(int, shown["xticks"])) == list(range(9))
    top = stored["patching"]["ranking"][0]
    assert re.search(rf"L{top['layer']}H{top['head']}(@[\d,]+)? {top['effect']:.2f}", page.inner_text("#causal-body"))

    change, _ = drawn(page, "causal-ablation")
    expected = np.full((30, 9), np.nan)
    for (layer, head), value in zip((run[0] for run in stored["ablation"]["runs"]), stored["ablation"]["change"]):
        expected[layer, head] = value
    np.testing.assert_allclose(change, expected, atol=1e-6, equal_nan=True)

    scores, _ = drawn(page, "causal-importance")
    np.testing.assert_allclose(scores, np.array(stored["importance"]["scores"]), atol=1e-6)
    loss, _ = drawn(page, "causal-pruning", 0, "y")
    np.testing.assert_allclose(loss, [c["loss"] for c in stored["importance"]["curve"]], atol=1e-9)
    page.mouse.move(5, 5)
    shot(page, "causal-smollm2")

    click_cell(page, "causal-patching", top["head"], top["layer"])
    page.wait_for_url(f"**/head?**layer={top['layer']}**head={top['head']}**")


def test_token_view_lens_section_and_rollout_page(causal_server, page):  # noqa: F811
    server, stored, trace = causal_server
    last = len(trace.tokens) - 1
    page.goto(server.url + f"/token?bundle=ioi&pos={last}")
    wait_figure(page, "token-lens-dla")
    wait_figure(page, "token-lens-curve")
    heads, shown = drawn(page, "token-lens-dla")
    np.testing.assert_allclose(heads, np.array(stored["lens"]["attribution"]["heads"]), atol=1e-6)
    assert sorted(map(int, shown["yticks"])) == list(range(30))
    rows = page.locator("#token-lens-table tbody tr")
    assert rows.count() == 31 and "after the last layer" in rows.nth(30).inner_text()
    final = stored["lens"]["layers"][-1]
    assert f"{final['target_probability']:.3f}" in rows.nth(30).inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(5, 5)
    page.locator("#token-lens-section").screenshot(path=str(ARTIFACTS / "token-lens-smollm2.png"))

    page.goto(server.url + "/rollout?bundle=ioi")
    wait_figure(page, "rollout-bars")
    wait_figure(page, "rollout-layers")
    relevance, _ = drawn(page, "rollout-bars", 0, "y")
    np.testing.assert_allclose(relevance, stored["rollout"]["relevance"], atol=1e-9)
    per_layer, _ = drawn(page, "rollout-layers")
    np.testing.assert_allclose(per_layer, np.array(stored["rollout"]["per_layer"]), atol=1e-6)
    assert "results/rollout.json" in page.inner_text("#rollout-summary")
    page.mouse.move(5, 5)
    shot(page, "rollout-smollm2")


def test_the_json_export_carries_every_stored_result(causal_server):
    _, stored, trace = causal_server
    code, out, err = run_cli("info", trace.path, "--json")
    assert code == 0, err
    exported = json.loads(out)["results"]
    for name, data in stored.items():
        assert exported[name] == json.loads(json.dumps(data)), name
