"""Speed of the app's views against the issue's targets, measured side by side in one run.

    .venv/bin/python benchmarks/app_speed.py                 # server side: data slice + figure + JSON
    .venv/bin/python benchmarks/app_speed.py --browser       # also real Chromium, click to drawn plot
    .venv/bin/python benchmarks/app_speed.py --real-long     # also a real 4k-token SmolLM2 statistics-only bundle
    .venv/bin/python benchmarks/app_speed.py --views heads   # only the Heads view (every head at once)
    .venv/bin/python benchmarks/app_speed.py --views compare # only the Compare view (two bundles)
    .venv/bin/python benchmarks/app_speed.py --views circuits # only the Circuits view (SmolLM2 head-to-head graph)
    .venv/bin/python benchmarks/app_speed.py --views routes   # only the Token view's route graph (SmolLM2)

Bundles: SmolLM2 (30 layers x 9 heads; out/demo/capital.wbtrace or traced now), a LLaVA-7B-shaped synthetic
bundle (32 x 32, 576 image tokens, statistics only) and a 4,096-token synthetic bundle (30 x 9) storing the
maps of layer 5, heads 0-3; for the Heads view, a 2,048-token synthetic bundle (30 x 9) storing every map
(2.3 GB) and the SmolLM2 bundle's maps recomputed; for the Compare view, two 2,048-token synthetic bundles
(30 x 9) storing the maps of layer 5; for the Circuits view, a 128-token SmolLM2 bundle traced with the
residual decomposition and circuit-traced (thousands of edges); for the route graph, a ~100-token SmolLM2 bundle with
the decomposition and routes at tau = 0.01 (thousands of edges). Each row is the time of one interaction (median of
--repeat runs unless marked cold), its ratio to the 1 s target, and for the head view the ratio to the naive
alternative of shipping the full-resolution map (what inline-data tools do).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.0


def timed(function, repeat: int = 1):
    times = []
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def build_bundles(folder: Path, real_long: bool, views=("model", "head", "heads")) -> dict[str, str]:
    import shutil

    from workbench.app.data.synthetic import synthetic_trace

    import workbench

    demo = ROOT / "out" / "demo" / "capital.wbtrace"
    if demo.is_dir():
        shutil.copytree(demo, folder / "smollm2.wbtrace")
    else:
        workbench.trace("smollm2", "The capital of France is", max_new_tokens=12).save(folder / "smollm2.wbtrace")
    names = {"smollm2": "smollm2"}
    if "model" in views:
        synthetic_trace(layers=32, heads=32, tokens=640, n_image=576, n_generated=32, seed=1,
                        model="synthetic-llava-7b").save(folder / "llava7b.wbtrace")
        names["llava7b"] = "llava7b"
    if "head" in views:
        synthetic_trace(layers=30, heads=9, tokens=4096, n_generated=64, map_layers=(5,), map_heads=(0, 1, 2, 3),
                        seed=2, model="synthetic-4k").save(folder / "long4k.wbtrace")
        names["long"] = "long4k"
    if "heads" in views:
        synthetic_trace(layers=30, heads=9, tokens=2048, n_generated=64, map_layers=tuple(range(30)), seed=3,
                        model="synthetic-2k").save(folder / "every2k.wbtrace")
        names["every"] = "every2k"
    if "compare" in views:
        for name, seed in (("pair-a", 5), ("pair-b", 6)):
            synthetic_trace(layers=30, heads=9, tokens=2048, n_generated=64, map_layers=(5,), seed=seed,
                            model="synthetic-2k").save(folder / f"{name}.wbtrace")
        names["pair"] = ("pair-a", "pair-b")
    if "circuits" in views:
        names["circuits"] = circuits_bundle(folder)
    if "routes" in views:
        names["routes"] = routes_bundle(folder)
    if real_long:
        words = (ROOT / "README.md").read_text().split()
        prompt = " ".join((words * 20)[:2050])  # about 4,100 SmolLM2 tokens
        trace = workbench.trace("smollm2", prompt, max_new_tokens=4, raw=True)
        print(f"real long bundle: {len(trace.tokens)} tokens", file=sys.stderr)
        trace.save(folder / "smollm2-long.wbtrace")
        names["real_long"] = "smollm2-long"
    return names


def heads_view(folder: Path, names: dict, repeat: int) -> list[tuple]:
    """The Heads view: pooled maps of every head (one layer, or all 30) rendered to PNG thumbnails + layout JSON."""
    import json

    from workbench.app.data.service import AppData
    from workbench.app.data.thumbnails import THUMBNAIL_SIDE
    from workbench.app.pages.heads import ALL_LAYERS_SIDE, layer_grid, model_grid

    rows = []
    for key, label in (("every", "30 x 9 x 2,048 tokens, stored maps"), ("smollm2", "SmolLM2 demo, statistics only")):
        store = AppData(folder)
        bundle = names[key]
        n_layers = store.trace(bundle).n_layers()

        def one_layer(layer, store=store, bundle=bundle):
            [thumbs] = store.thumbnails(bundle, "text", [layer], THUMBNAIL_SIDE)
            return len(json.dumps(layer_grid(bundle, "text", thumbs).to_plotly_json(), default=_plotly_json))

        def all_layers(store=store, bundle=bundle, n_layers=n_layers):
            layers = store.thumbnails(bundle, "text", range(n_layers), ALL_LAYERS_SIDE)
            return len(json.dumps(model_grid(bundle, "text", layers).to_plotly_json(), default=_plotly_json))

        for what, action, count in (("one layer (layer 5) [cold]", lambda: one_layer(5), 1),
                                    ("one layer again (cached pooled maps)", lambda: one_layer(5), repeat),
                                    ("switch to layer 6 [cold]", lambda: one_layer(6), 1),
                                    ("all layers [cold]", all_layers, 1),
                                    ("all layers again (cached pooled maps)", all_layers, repeat)):
            seconds, size = timed(action, count)
            rows.append((f"Heads view {label}: {what}", seconds, None, size))
    return rows


def circuits_bundle(folder: Path) -> str:
    """A 128-token SmolLM2 bundle (README text, raw) with the decomposition and results/circuits.json."""
    import workbench
    from workbench.analyses import circuits

    model = workbench.load_model("smollm2")
    words = (ROOT / "README.md").read_text().split()
    trace = workbench.trace(model, " ".join(words[:70]), max_new_tokens=4, raw=True, decomposition=True)
    trace.save(folder / "smollm2-circuits.wbtrace")
    saved = workbench.load(folder / "smollm2-circuits.wbtrace")
    saved.add_result("circuits", circuits.analyse(saved, model=model).to_json())
    return "smollm2-circuits"


def circuits_view(folder: Path, names: dict, repeat: int) -> list[tuple]:
    """The Circuits view's callback (read results/circuits.json, keep the top-k edges, build the figure) and
    its JSON as Dash sends it, at each setting of the strongest-edges control."""
    import json

    from workbench.app import create_app
    from workbench.app.pages import circuits

    import workbench

    bundle = names["circuits"]
    app = create_app(folder, allow_trace=False, allow_recompute=False)
    stored = workbench.load(folder / f"{bundle}.wbtrace")
    graph = stored.results["circuits"]["graph"]
    label = (f"Circuits view SmolLM2 {len(stored.tokens)} tokens ({len(graph['nodes'])} heads, "
             f"{len(graph['edges'])} edges)")

    def view(top_k):
        return len(json.dumps(circuits.circuits_view(bundle, top_k), default=_plotly_json))

    rows = []
    with app.server.app_context():
        for what, top_k, count in (("page open, 40 strongest edges [cold]", 40, 1),
                                   ("page open again", 40, repeat), ("10 strongest edges", 10, repeat),
                                   ("160 strongest edges", 160, repeat), ("every edge", 0, repeat)):
            seconds, size = timed(lambda top_k=top_k: view(top_k), count)
            rows.append((f"{label}: {what}", seconds, None, size))
    return rows


def routes_bundle(folder: Path) -> str:
    """A ~100-token SmolLM2 bundle (README text, raw) with the decomposition and the route of its last prediction
    at tau = 0.01 (a low threshold: thousands of edges, the heavy end of what the view draws)."""
    import workbench
    from workbench.analyses import routes

    words = (ROOT / "README.md").read_text().split()
    trace = workbench.trace("smollm2", " ".join(words[:60]), max_new_tokens=4, raw=True, decomposition=True)
    trace.save(folder / "smollm2-routes.wbtrace")
    saved = workbench.load(folder / "smollm2-routes.wbtrace")
    saved.add_result("routes", routes.analyse(saved, threshold=0.01, head_types=False).to_json())
    return "smollm2-routes"


def routes_view(folder: Path, names: dict, repeat: int) -> list[tuple]:
    """The Token view's route panel (read results/routes.json, keep the edges above the threshold, build the
    figure) and its JSON as Dash sends it, at several thresholds; then the Logit lens panel beside it, which
    reads one node per hover (final norm + unembedding of that node only)."""
    from plotly.io.json import to_json_plotly
    from workbench.app import create_app
    from workbench.app.pages import token

    import workbench

    bundle = names["routes"]
    app = create_app(folder, allow_trace=False)
    stored = workbench.load(folder / f"{bundle}.wbtrace")
    route = stored.results["routes"]["routes"][0]
    position = route["position"]
    label = (f"Route graph SmolLM2 {len(stored.tokens)} tokens, 30 x 9 ({len(route['graph']['nodes'])} nodes, "
             f"{len(route['graph']['edges'])} edges at tau 0.01)")

    def view(threshold):  # serialised as Dash does (numpy arrays as typed arrays)
        return len(to_json_plotly(token.route_view(bundle, position, threshold)))

    def panel(node=None):
        return len(to_json_plotly(token.lens_panel(bundle, position, node)))

    from workbench.app.pages.common import data

    rows = []
    with app.server.app_context():
        for what, threshold, count in (("page open, threshold 0.04 [cold: routes.json read]", 0.04, 1),
                                       ("page open again", 0.04, repeat),
                                       ("threshold 0.02 [first showing]", 0.02, 1),
                                       ("threshold 0.1", 0.1, repeat),
                                       ("every stored edge (0.01) [first showing]", 0.01, 1),
                                       ("every stored edge (0.01) again", 0.01, repeat)):
            seconds, size = timed(lambda threshold=threshold: view(threshold), count)
            rows.append((f"{label}: {what}", seconds, None, size))
        seconds, _ = timed(lambda: data().pool.get(stored.model["name"]))
        rows.append((f"{label}: the model's load for the lens [cold, once per server]", seconds, None, 0))
        seconds, size = timed(panel)  # what the page shows first: the prediction's own lens
        rows.append((f"{label}: Logit lens panel, the prediction [cold: first lens]", seconds, None, size))
        nodes = [node["id"] for node in route["graph"]["nodes"]]
        step = max(1, len(nodes) // (4 * repeat))
        fresh = iter(nodes[::step])  # a new node on every call: the uncached path
        seconds, size = timed(lambda: panel(next(fresh)), 4 * repeat)
        rows.append((f"{label}: Logit lens panel, hover a node not read before", seconds, None, size))
        seconds, size = timed(lambda: panel(nodes[0]), repeat)
        rows.append((f"{label}: Logit lens panel, hover a node read before", seconds, None, size))
    return rows


def compare_view(folder: Path, names: dict, repeat: int) -> list[tuple]:
    """The Compare view of two 30 x 9 x 2,048-token bundles: its layout and its three callbacks (per-head metric
    grids, token curves, one head's maps and difference), each serialised as Dash sends it; the page's server
    time is their sum (the browser sends the three callbacks at once)."""
    import json

    import plotly.io as pio
    from workbench.app import create_app
    from workbench.app.pages import compare

    a, b = names["pair"]
    app = create_app(folder, allow_trace=False, allow_recompute=False)

    def size(*parts) -> int:
        return sum(len(pio.to_json(p)) if hasattr(p, "to_plotly_json") and hasattr(p, "layout") else
                   len(json.dumps(p, default=_plotly_json)) for p in parts)

    def layout():
        return size(compare.layout(a=a, b=b, layer=5, head=0))

    def metric(name="sink"):
        return size(*compare.metric_view(a, b, name))

    def curves(scope="all", head=0):
        return size(*compare.curves_view(a, b, "received", scope, 5, head))

    def maps(head=0):
        return size(*compare.maps_view(a, b, 5, head))

    def page_open():
        return layout() + metric() + curves() + maps()

    rows = []
    label = "Compare view 2 x (30 x 9 x 2,048 tokens), layer 5 maps stored"
    with app.server.app_context():
        for what, action, count in (("page open: layout + metric grids + token curves + maps [cold]", page_open, 1),
                                    ("page open again (cached)", page_open, repeat),
                                    ("metric switch to entropy", lambda: metric("entropy"), repeat),
                                    ("token curves of one head [cold]", lambda: curves("head", 3), 1),
                                    ("switch head: both maps + difference [cold read]", lambda: maps(4), 1),
                                    ("same head again (cached maps)", lambda: maps(4), repeat)):
            seconds, kb = timed(action, count)
            rows.append((f"{label}: {what}", seconds, None, kb))
    return rows


def compare_browser(folder: Path, names: dict) -> list[tuple]:
    """Real Chromium: the Compare page of the two 2,048-token bundles, navigation to all three figures drawn."""
    import logging
    import threading

    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server
    from workbench.app import create_app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server("127.0.0.1", 0, create_app(folder).server, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
    drawn = ("() => ['compare-metric-grid', 'compare-curves', 'compare-maps'].every(id => { const gd = "
             "document.querySelector(`#${id} .js-plotly-plot`); return gd && gd._fullData && gd._fullData.length "
             "=== 3; })")
    a, b = names["pair"]
    rows = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=args)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            for state in ("cold", "warm"):
                start = time.perf_counter()
                page.goto(f"{url}/compare?a={a}&b={b}&layer=5")
                page.wait_for_function(drawn)
                rows.append((f"Browser: Compare view 2 x (30 x 9 x 2,048), page load to all three figures drawn "
                             f"[{state}]", time.perf_counter() - start, None, 0))
            browser.close()
    finally:
        server.shutdown()
    return rows


def _plotly_json(value):
    return value.to_plotly_json() if hasattr(value, "to_plotly_json") else str(value)


def server_side(folder: Path, names: dict, repeat: int) -> list[tuple]:
    import plotly.io as pio
    from workbench.app.data.maps import window
    from workbench.app.data.metrics import key_alpha, sink_keys
    from workbench.app.data.service import AppData
    from workbench.app.data.tensors import stat
    from workbench.app.figures import attention_map, head_grid, layer_curves, line_view
    from workbench.app.figures.head import head_statistics

    rows = []

    def model_view(store, bundle):
        metrics, _ = store.metrics(bundle)
        metric = metrics["sink"]
        figures = [head_grid(metric.values, label=metric.label), layer_curves({"sink": metric.values,
                                                                               "entropy": metrics["entropy"].values})]
        return sum(len(pio.to_json(f)) for f in figures)

    for key, label in (("smollm2", "30 x 9 (SmolLM2)"), ("llava7b", "32 x 32 (LLaVA-7B shape)")):
        if key not in names:
            continue
        store = AppData(folder)
        cold, size = timed(lambda store=store, key=key: model_view(store, names[key]))
        warm, _ = timed(lambda store=store, key=key: model_view(store, names[key]), repeat)
        rows.append((f"Model view {label}, first open", cold, None, size))
        rows.append((f"Model view {label}, again", warm, None, size))

    if "long" not in names:
        return rows
    store = AppData(folder)
    bundle = names["long"]
    trace = store.trace(bundle)
    texts, regions = [t.text for t in trace.tokens], [t.region for t in trace.tokens]

    def head_view(head, q=None, k=None, scale="linear"):
        values = store.head_map(bundle, "text", 5, head).values
        sinks = sink_keys(trace, "text", 5, head)
        fig = attention_map(window(values, q, k), texts=texts, regions=regions, sink_keys=sinks, scale=scale)
        return len(pio.to_json(fig))

    def side_panels(head, pos):
        values = store.head_map(bundle, "text", 5, head).values
        start = max(0, pos - 20)
        lines = line_view(values[start:start + 40, start:start + 40].numpy(), start=start, texts=texts,
                          regions=regions, selected_query=pos)
        stats = head_statistics(key_alpha(trace, "text", 5)[head], stat(trace, "text", 5, "entropy")[head].numpy(),
                                texts=texts, regions=regions)
        return len(pio.to_json(lines)) + len(pio.to_json(stats))

    naive_time, naive_size = timed(lambda: len(pio.to_json(attention_map(
        window(store.head_map(bundle, "text", 5, 0).values, max_cells=5000), texts=texts, regions=regions))))
    interactions = [
        ("open head 0 (overview, cold read)", lambda: head_view(0), 1),
        ("switch to head 1 (cold read)", lambda: head_view(1), 1),
        ("back to head 0 (cached)", lambda: head_view(0), repeat),
        ("log colour scale", lambda: head_view(0, scale="log"), repeat),
        ("zoom to 400 x 400 (full resolution)", lambda: head_view(0, (1000, 1399), (1000, 1399)), repeat),
        ("zoom to 64 x 64 (token text in hover)", lambda: head_view(0, (2000, 2063), (2000, 2063)), repeat),
        ("click: line view + head statistics", lambda: side_panels(0, 3000), repeat),
    ]
    for label, action, count in interactions:
        seconds, size = timed(action, count)
        rows.append((f"Head view 4,096 tokens: {label}" + (" [cold]" if count == 1 else ""), seconds,
                     naive_time, size))
    rows.append(("Head view 4,096 tokens: naive full-resolution map (baseline)", naive_time, naive_time, naive_size))

    if "real_long" in names:
        store = AppData(folder)
        real = names["real_long"]
        n = len(store.trace(real).tokens)
        seconds, _ = timed(lambda: store.head_map(real, "text", 12, 0))
        rows.append((f"Head view real SmolLM2 {n} tokens, stats only: recompute layer 12 [cold, one-off]", seconds,
                     None, 0))
        real_trace = store.trace(real)
        real_texts, real_regions = [t.text for t in real_trace.tokens], [t.region for t in real_trace.tokens]
        for head in (1, 2):
            seconds, size = timed(lambda head=head: len(pio.to_json(attention_map(
                window(store.head_map(real, "text", 12, head).values), texts=real_texts, regions=real_regions))))
            rows.append((f"Head view real SmolLM2 {n} tokens: switch to head {head} (layer recomputed)", seconds,
                         None, size))
    return rows


def browser_side(folder: Path, names: dict, repeat: int) -> list[tuple]:
    import logging
    import threading

    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server
    from workbench.app import create_app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server("127.0.0.1", 0, create_app(folder).server, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows = []
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
    figure = "document.querySelector('#{0} .js-plotly-plot')"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=args)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)

            def drawn(graph_id: str, predicate: str) -> None:
                page.wait_for_function(f"() => {{ const gd = {figure.format(graph_id)}; return gd && gd._fullData && "
                                       f"gd._fullData.length && ({predicate}); }}")

            link = "[id='{{\"page\":\"{0}\",\"type\":\"wb-link\"}}']"
            for key, label, z in (("smollm2", "30 x 9", 30), ("llava7b", "32 x 32", 32)):
                page.goto(f"{url}/model?bundle={names[key]}")  # warms the server caches
                drawn("model-grid", f"gd._fullData[0].z.length === {z}")
                loads, switches = [], []
                for _ in range(repeat):
                    start = time.perf_counter()
                    page.goto(f"{url}/model?bundle={names[key]}")
                    drawn("model-grid", f"gd._fullData[0].z.length === {z}")
                    loads.append(time.perf_counter() - start)
                    page.click(link.format("Circuits"))
                    page.wait_for_selector("#circuits-body .wb-hint")
                    start = time.perf_counter()
                    page.click(link.format("Model"))
                    drawn("model-grid", f"gd._fullData[0].z.length === {z}")
                    switches.append(time.perf_counter() - start)
                rows.append((f"Browser: Model view {label}, full page load (JS boot) to drawn heatmap",
                             statistics.median(loads), None, 0))
                rows.append((f"Browser: Model view {label}, nav-bar click to drawn heatmap", statistics.median(switches),
                             None, 0))
            page.goto(f"{url}/head?bundle={names['long']}&layer=5&head=0&pos=3000")
            drawn("head-map", "gd.layout.title.text.startsWith('layer 5, head 0')")
            drawn("head-lines", "gd.layout.title.text.includes('query 3000')")
            drawn("head-stats", "true")

            def act(script: str, predicate: str) -> float:
                start = time.perf_counter()
                page.evaluate(script)
                drawn("head-map", predicate)
                return time.perf_counter() - start

            gd = figure.format("head-map")
            tests = [
                ("log colour scale", "() => document.querySelector('#head-scale label[data-option-index=\"1\"]').click()",
                 "gd._fullData[0].zmin === -6"),
                ("linear colour scale", "() => document.querySelector('#head-scale label[data-option-index=\"0\"]').click()",
                 "gd._fullData[0].zmin === 0"),
                ("zoom to 400 x 400", (f"() => Plotly.relayout({gd}, {{'xaxis.range': [999.5, 1399.5], "
                                       "'yaxis.range': [1399.5, 999.5]})"),
                 "!gd.layout.title.text.includes('max-pooled') && gd._fullData[0].z.length === 400"),
                ("zoom back out (reset)", (f"() => Plotly.relayout({gd}, {{'xaxis.autorange': true, "
                                           "'yaxis.autorange': true})"), "gd.layout.title.text.includes('max-pooled')"),
            ]
            for label, script, predicate in tests:
                seconds = act(script, predicate)
                rows.append((f"Browser: Head view 4,096 tokens, {label}", seconds, None, 0))
            browser.close()
    finally:
        server.shutdown()
    return rows


def heads_browser(folder: Path, names: dict) -> list[tuple]:
    """Real Chromium: the Heads view of the 2,048-token bundle, navigation to every thumbnail decoded."""
    import logging
    import threading

    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server
    from workbench.app import create_app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server("127.0.0.1", 0, create_app(folder).server, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
    rows = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=args)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(180_000)
            for label, path, grid, count in (
                    ("one layer", f"/heads?bundle={names['every']}&layer=5", "heads-layer-grid", 9),
                    ("all layers", f"/heads?bundle={names['every']}&scope=all", "heads-model-grid", 270)):
                drawn = (f"() => {{ const i = document.querySelectorAll('#{grid} img'); return i.length === {count} "
                         "&& Array.from(i).every(x => x.complete && x.naturalWidth > 0); }")
                for state in ("cold", "warm"):
                    start = time.perf_counter()
                    page.goto(url + path)
                    page.wait_for_function(drawn)
                    name = f"Browser: Heads view 30 x 9 x 2,048, {label}, page load to drawn thumbnails [{state}]"
                    rows.append((name, time.perf_counter() - start, None, 0))
            browser.close()
    finally:
        server.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--browser", action="store_true", help="also time real Chromium (needs /usr/bin/chromium)")
    parser.add_argument("--real-long", action="store_true", help="also trace and recompute a 4k-token SmolLM2 bundle")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--views", nargs="+", choices=["model", "head", "heads", "compare", "circuits", "routes"],
                        default=["model", "head", "heads", "compare", "circuits", "routes"],
                        help="which views to time (default: all)")
    parser.add_argument("--keep", type=Path, help="write the bundles here instead of a temporary folder")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="app-bench-") as temporary:
        folder = options.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        names = build_bundles(folder, options.real_long, options.views)
        print(f"bundles built in {time.perf_counter() - start:.1f} s under {folder}", file=sys.stderr)
        rows = server_side(folder, names, options.repeat) if {"model", "head"} & set(options.views) else []
        if "compare" in options.views:
            rows += compare_view(folder, names, options.repeat)
        if "circuits" in options.views:
            rows += circuits_view(folder, names, options.repeat)
        if "routes" in options.views:
            rows += routes_view(folder, names, options.repeat)
        if "heads" in options.views:
            rows += heads_view(folder, names, options.repeat)
        if options.browser and {"model", "head"} <= set(options.views):
            rows += browser_side(folder, names, options.repeat)
        if options.browser and "heads" in options.views:
            rows += heads_browser(folder, names)
        if options.browser and "compare" in options.views:
            rows += compare_browser(folder, names)
    width = max(len(r[0]) for r in rows)
    print(f"{'interaction':<{width}}  {'seconds':>8}  {'/ 1 s target':>12}  {'/ naive':>8}  {'JSON kB':>8}")
    for label, seconds, naive, size in rows:
        versus = f"{seconds / naive:8.3f}" if naive else f"{'':>8}"
        print(f"{label:<{width}}  {seconds:8.3f}  {seconds / TARGET:12.3f}  {versus}  "
              f"{(size / 1024 if size else 0):8.0f}")


if __name__ == "__main__":
    main()
