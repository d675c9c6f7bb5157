"""OPERA's over-trust curve on the Hallucination page in real Chromium on a 48-token SmolLM2 story (`workbench trace`,
then `workbench opera`, which stores results/opera.json): the curve plotly drew holds, at each generated token's
position, the log10 score of results/opera.json read here with `json` (not through the result class), on a titled
right-hand axis; the token text under the x axis stays readable. The screenshot,
out/test-artifacts/app/opera-smollm2.png, is docs/images/app-opera.png's source."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests.app.app_helpers import ARTIFACTS, Server
from tests.app.test_browser import browser, page, wait_figure  # noqa: F401 - fixtures and helpers shared
from tests.workbench.cli.cli_inprocess import run_cli

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PROMPT = "Once upon a time, a little cat named Tom"
NEW = 48

DRAWN = """() => { const gd = document.querySelector('#hall-curves .js-plotly-plot');
    const curve = gd.data.find(t => t.name.startsWith('OPERA'));
    const ticks = Array.from(gd.querySelectorAll('.xtick text')).map(t => { const r = t.getBoundingClientRect();
        return {text: t.textContent, centre: (r.left + r.right) / 2, size: parseFloat(getComputedStyle(t).fontSize)}; });
    return {name: curve.name, axis: curve.yaxis, x: Array.from(curve.x), y: Array.from(curve.y), ticks: ticks,
            angle: gd._fullLayout.xaxis.tickangle, y2title: gd.querySelector('.g-y2title').textContent,
            xtitle: gd.querySelector('.g-xtitle').textContent}; }"""


@pytest.fixture(scope="module")
def opera_server(tmp_path_factory):
    from workbench.app import create_app

    root = tmp_path_factory.mktemp("opera") / "traces"
    root.mkdir(parents=True)
    code, _, err = run_cli("trace", "-m", "smollm2", "--raw", "-p", PROMPT, "-n", str(NEW),
                           "-o", str(root / "story.wbtrace"))
    assert code == 0, err
    code, _, err = run_cli("opera", str(root / "story.wbtrace"))
    assert code == 0, err
    running = Server(create_app(root))
    yield running, root / "story.wbtrace"
    running.close()
    shutil.rmtree(root, ignore_errors=True)


def test_the_opera_curve_draws_the_stored_scores(opera_server, page):  # noqa: F811
    server, bundle = opera_server
    stored = json.loads((bundle / "results" / "opera.json").read_text())
    scores = {token["position"]: value for token, value in zip(stored["tokens"], stored["log10_score"])}
    assert len(scores) == NEW and max(scores.values()) - min(scores.values()) > 1  # a real curve, not a flat line

    page.goto(server.url + "/hallucination?bundle=story")
    wait_figure(page, "hall-curves", "gd.data.some(t => t.name.startsWith('OPERA'))")
    drawn = page.evaluate(DRAWN)
    assert drawn["axis"] == "y2" and "OPERA" in drawn["y2title"] and drawn["xtitle"]
    drawn_at = dict(zip(drawn["x"], drawn["y"]))
    assert sorted(drawn_at) == sorted(scores)
    for position, value in scores.items():
        assert math.isclose(drawn_at[position], value, abs_tol=1e-6), position

    # the x axis names tokens at every generated position or an even subset, never overlapping when slanted
    assert len(drawn["ticks"]) >= 12
    across = abs(math.sin(math.radians(drawn["angle"] or 90)))
    for a, b in zip(drawn["ticks"], drawn["ticks"][1:]):
        assert (b["centre"] - a["centre"]) * across >= a["size"], (a, b, drawn["angle"])

    page.mouse.move(5, 5)
    box = page.evaluate("""() => { const g = document.querySelector('#hall-curves').getBoundingClientRect();
        return {x: 0, y: g.top + window.scrollY - 8, width: 1400, height: g.height + 16}; }""")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "opera-smollm2.png"), full_page=True, clip=box)
