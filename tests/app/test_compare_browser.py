"""The Compare page in real Chromium on two ~100-token SmolLM2 bundles: the same prompt without and with an ACT
intervention (from layer 2 on), plus a shorter prompt. Ticking both runs on the Runs page leads to the page; it
draws A, B and B - A for the per-head metric (layers 0-2 equal: the statistics there precede any edit), token
curves of both with their difference, and one head's maps side by side with their difference; a pair of other
lengths says why no map difference is drawn, and picking another B or swapping rebuilds the page. The screenshot is docs/images/app-compare.png's source."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import workbench
from tests.app.app_helpers import ARTIFACTS, Server
from tests.app.test_browser import browser, page, wait_figure  # noqa: F401 - fixtures and helpers shared
from tests.app.test_heads_browser import PROMPT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PANEL_TITLES = "() => Array.from(document.querySelectorAll('#{0} .annotation-text')).map(t => t.textContent)"


@pytest.fixture(scope="module")
def pair_server(models, tmp_path_factory):
    from workbench.app import create_app

    from workbench.interventions import ACT

    root = tmp_path_factory.mktemp("compare") / "traces"
    root.mkdir(parents=True)
    model = models("smollm2")
    workbench.trace(model, PROMPT, max_new_tokens=4, raw=True, maps="all").save(root / "story.wbtrace")
    workbench.trace(model, PROMPT, max_new_tokens=4, raw=True, maps="all", intervention=ACT()).save(
        root / "story-act.wbtrace")
    workbench.trace(model, "The old lighthouse keeper climbed the stairs", max_new_tokens=2, raw=True,
                    maps="3:all").save(root / "short.wbtrace")
    running = Server(create_app(root))
    yield running, root
    running.close()
    shutil.rmtree(root, ignore_errors=True)


def figure(tab, graph_id: str) -> dict:
    """The drawn traces' arrays (typed arrays made plain) and the title."""
    return tab.evaluate(f"""() => {{ const gd = document.querySelector('#{graph_id} .js-plotly-plot');
        const plain = v => v == null ? null : ArrayBuffer.isView(v) ? Array.from(v) : Array.isArray(v) ? v.map(plain) : v;
        return {{data: gd._fullData.map(t => ({{type: t.type, name: t.name, z: plain(t.z), x: plain(t.x), y: plain(t.y),
                                          customdata: plain(t.customdata)}})), title: (gd.layout.title || {{}}).text}};
        }}""")


def test_runs_page_leads_to_compare_which_draws_both_bundles_and_their_differences(pair_server, page):  # noqa: F811
    server, root = pair_server
    a, b = workbench.load(root / "story.wbtrace"), workbench.load(root / "story-act.wbtrace")
    assert 90 <= len(a.tokens) <= 130 and len(a.tokens) == len(b.tokens)
    page.goto(server.url + "/")
    page.locator("#runs-bundles").wait_for()
    for bundle in ("story", "story-act"):
        page.locator(f"[id='{{\"bundle\":\"{bundle}\",\"type\":\"runs-pick\"}}'] input").check()
    page.wait_for_function("() => document.querySelector('#runs-compare').getAttribute('href').includes('b=')")
    page.click("#runs-compare")
    page.wait_for_url("**/compare?a=story&b=story-act")

    wait_figure(page, "compare-metric-grid", "gd.data.length === 3")
    titles = page.evaluate(PANEL_TITLES.format("compare-metric-grid"))
    assert {"A: story", "B: story-act", "B − A"} <= set(titles)
    metric = figure(page, "compare-metric-grid")
    drawn_a, drawn_b, diff = (np.array(t["z"], dtype=float) for t in metric["data"])
    assert diff.shape == (30, 9)
    # A's sink score from A's stored maps (mean over rows of the weight on position 0), B's from B's raw statistics
    sink_a = np.stack([a.tensor(f"layer_{layer:02d}.maps").double().numpy()[:, :, 0].mean(-1) for layer in range(30)])
    sink_b = np.stack([(b.tensor(f"layer_{layer:02d}.key_mass")[:, 0] / b.tensor(f"layer_{layer:02d}.key_count")[0])
                       .double().numpy() for layer in range(30)])
    np.testing.assert_allclose(drawn_a, sink_a, atol=2e-3)  # fp16 maps
    np.testing.assert_allclose(drawn_b, sink_b, atol=1e-6)
    np.testing.assert_allclose(diff, drawn_b - drawn_a, atol=1e-12)
    assert np.abs(diff[3:]).max() > 1e-4, "ACT from layer 2 on changes the attention of later layers"
    ids_a, ids_b = [t.id for t in a.tokens], [t.id for t in b.tokens]
    summary = page.inner_text("#compare-summary")
    differing = sum(x != y for x, y in zip(ids_a, ids_b))
    assert ("identical tokens" in summary) if differing == 0 else (f"{differing} of the {len(ids_a)}" in summary)

    wait_figure(page, "compare-curves", "gd.data.length === 3")
    curves = figure(page, "compare-curves")
    n = len(a.tokens)
    assert [len(trace["y"]) for trace in curves["data"]] == [n, n, n]
    hover = [row[2] for row in curves["data"][0]["customdata"]]
    from workbench.app.figures.common import token_label

    assert hover[5] == token_label(a.tokens[5].text, 40)

    wait_figure(page, "compare-maps", "gd.data.length === 3")
    maps = figure(page, "compare-maps")
    assert maps["title"].startswith("layer 3, head 0")
    shown_a, shown_b, shown_diff = (np.array(t["z"], dtype=float) for t in maps["data"])
    assert shown_a.shape == (n, n)
    np.testing.assert_allclose(shown_diff, shown_b - shown_a, atol=2e-3)  # fp16 maps, drawn as stored
    from workbench.app.figures.common import token_text

    for axis in ("xtick", "x2tick", "x3tick", "ytick"):  # keys of A, B, B - A; queries of A
        ticks = page.evaluate(f"() => Array.from(document.querySelectorAll('#compare-maps .{axis} text'))"
                              ".map(t => t.textContent)")
        assert len(ticks) >= 20, (axis, ticks)
        for tick in ticks:
            text, _, position = tick.rpartition(" ")
            assert text == token_text((b if axis == "x2tick" else a).tokens[int(position)].text, 10), tick
    assert {"A: story", "B: story-act", "B − A"} <= set(page.evaluate(PANEL_TITLES.format("compare-maps")))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)


def test_a_pair_of_other_lengths_says_why_no_map_difference(pair_server, page):  # noqa: F811
    server, _ = pair_server
    page.goto(server.url + "/compare?a=story&b=short")
    wait_figure(page, "compare-maps", "gd.data.length === 2")
    message = page.inner_text("#compare-maps-message")
    assert "no map difference: the token sequences have different lengths" in message
    wait_figure(page, "compare-metric-grid", "gd.data.length === 3")  # same model: the per-head metrics still subtract
    assert "first" in page.inner_text("#compare-summary")
    # another B from the picker rebuilds the page for the new pair; the swap link exchanges A and B
    page.click("#compare-b")
    page.locator(".dash-dropdown-option", has_text="story-act · smollm2").click()
    page.wait_for_url("**/compare?a=story&b=story-act")
    wait_figure(page, "compare-maps", "gd.data.length === 3")
    page.click("#compare-swap")
    page.wait_for_url("**/compare?a=story-act&b=story")
    page.wait_for_function("() => (document.querySelector('#compare-about-a')?.innerText || '').startsWith('A: story-act')")
    wait_figure(page, "compare-metric-grid", "gd.data.length === 3")
