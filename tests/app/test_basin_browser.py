"""The attention-basin panel of the Model page in real Chromium on a ~350-token SmolLM2 bundle whose 20 list items
are user spans (`workbench trace --span-markers "[,]"`, then `workbench basin`): the bars, whiskers, item labels and
U-score plotly drew equal results/basin.json read here with `json` (not through the result class), the item labels
are the items' own text (cut from the prompt by the stored character offsets) and do not overlap, and both axes
are titled. The screenshot, out/test-artifacts/app/basin-smollm2.png, is docs/images/app-basin.png's source."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from tests.app.app_helpers import ARTIFACTS, Server
from tests.app.test_browser import browser, page, wait_figure  # noqa: F401 - fixtures and helpers shared
from tests.workbench.cli.cli_inprocess import run_cli

pytestmark = [pytest.mark.browser, pytest.mark.slow]
FACTS = ["The Eiffel Tower stands in Paris", "The Colosseum stands in Rome", "Big Ben stands in London",
         "The Parthenon stands in Athens", "The Sagrada Familia stands in Barcelona", "The Kremlin stands in Moscow",
         "The Brandenburg Gate stands in Berlin", "The Little Mermaid stands in Copenhagen",
         "The Atomium stands in Brussels", "The Space Needle stands in Seattle", "The Golden Gate Bridge is in San Francisco",
         "The Statue of Liberty stands in New York", "The Opera House stands in Sydney", "The CN Tower stands in Toronto",
         "Christ the Redeemer stands in Rio de Janeiro", "The Taj Mahal stands in Agra",
         "The Forbidden City lies in Beijing", "Tokyo Tower stands in Tokyo", "The Burj Khalifa stands in Dubai",
         "The Petronas Towers stand in Kuala Lumpur"]
FACTS = [f"{fact} and draws many visitors every year" for fact in FACTS]
PROMPT = "Famous landmarks and their cities:\n" + "\n".join(f"- [{fact}.]" for fact in FACTS) + \
    "\nQuestion: which city has the Atomium? Answer: The Atomium stands in"

DRAWN = """() => { const gd = document.querySelector('#model-basin-profile .js-plotly-plot'); const bar = gd.data[0];
    const ticks = Array.from(gd.querySelectorAll('.xtick text')).map(t => { const r = t.getBoundingClientRect();
        return {text: t.textContent, centre: (r.left + r.right) / 2,
                size: parseFloat(getComputedStyle(t).fontSize)}; });
    return {x: Array.from(bar.x), y: Array.from(bar.y), plus: Array.from(bar.error_y.array),
            minus: Array.from(bar.error_y.arrayminus), ticks: ticks, title: gd.layout.title.text,
            angle: gd._fullLayout.xaxis.tickangle,
            xtitle: gd.querySelector('.g-xtitle').textContent, ytitle: gd.querySelector('.g-ytitle').textContent}; }"""


@pytest.fixture(scope="module")
def basin_server(tmp_path_factory):
    from workbench.app import create_app

    root = tmp_path_factory.mktemp("basin") / "traces"
    root.mkdir(parents=True)
    code, _, err = run_cli("trace", "-m", "smollm2", "--raw", "-n", "0", "-p", PROMPT, "--span-markers", "[,]",
                           "-o", str(root / "landmarks.wbtrace"))
    assert code == 0, err
    code, _, err = run_cli("basin", str(root / "landmarks.wbtrace"))
    assert code == 0, err
    running = Server(create_app(root))
    yield running, root / "landmarks.wbtrace"
    running.close()
    shutil.rmtree(root, ignore_errors=True)


def test_the_basin_panel_draws_the_stored_profile(basin_server, page):  # noqa: F811
    server, bundle = basin_server
    stored = json.loads((bundle / "results" / "basin.json").read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert len(stored["items"]) == len(FACTS) and stored["rows"][1] > 300  # 20 items, several hundred tokens

    page.goto(server.url + "/model?bundle=landmarks")
    wait_figure(page, "model-basin-profile")
    drawn = page.evaluate(DRAWN)
    profile = np.array(stored["profile"])
    layers = np.array(stored["layer_profile"])
    assert drawn["x"] == list(range(len(FACTS)))
    np.testing.assert_allclose(drawn["y"], profile, rtol=1e-6, atol=1e-8)  # the JSON keeps 8 decimals
    np.testing.assert_allclose(drawn["plus"], layers.max(0) - profile, rtol=1e-6, atol=2e-8)
    np.testing.assert_allclose(drawn["minus"], profile - layers.min(0), rtol=1e-6, atol=2e-8)
    assert f"U-score {stored['u_score']:+.3f}" in drawn["title"]
    assert drawn["xtitle"] and drawn["ytitle"]

    # every item labelled with its own text, in list order, read from the prompt by the stored offsets
    prompt = manifest["inputs"]["prompt"]
    texts = [prompt[item["start"]:item["end"]] for item in stored["items"]]
    assert texts == [f"{fact}." for fact in FACTS]
    labels = [tick["text"] for tick in drawn["ticks"]]
    assert len(labels) == len(FACTS)
    for label, text in zip(labels, texts):
        shown = label.rstrip("…").strip()
        assert shown and text.startswith(shown), (label, text)
    # slanted labels are parallel: they do not overlap when neighbours lie a line height apart across the text
    across = abs(math.sin(math.radians(drawn["angle"] or 90)))
    for a, b in zip(drawn["ticks"], drawn["ticks"][1:]):
        assert (b["centre"] - a["centre"]) * across >= a["size"], (a, b, drawn["angle"])

    page.mouse.move(5, 5)
    box = page.evaluate("""() => { const g = document.querySelector('#model-basin').getBoundingClientRect();
        return {x: 0, y: g.top + window.scrollY - 8, width: 1400, height: g.height + 16}; }""")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "basin-smollm2.png"), full_page=True, clip=box)
