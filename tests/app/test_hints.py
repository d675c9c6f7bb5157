"""What the pages say is missing, checked through the app's test client: the hint names what is missing, and a
command a hint prints runs as printed (re-trace with the missing flag, then the analysis)."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from workbench.app import create_app

import workbench
from tests.app.app_helpers import png_bytes
from tests.workbench.cli.cli_inprocess import run_cli
from workbench.analyses import sinks

BUNDLE = {"key": "bundle", "type": "wb-sel"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A text bundle traced without --decomposition, and a VLM bundle with a sinks result but no --hidden."""
    root = tmp_path_factory.mktemp("hints")
    workbench.trace("tiny-llama", "Anna's code is 4417.", max_new_tokens=2, raw=True).save(root / "plain.wbtrace")
    image = root / "picture.png"
    image.write_bytes(png_bytes())
    vlm = workbench.trace("tiny-llava", "Describe the picture", image=str(image), max_new_tokens=2)
    vlm.add_result("sinks", sinks.analyse(vlm).to_json())
    vlm.save(root / "vlm.wbtrace")
    return create_app(root)


def _call(app, outputs: list[tuple[str, str]], inputs: list[tuple[object, str, object]], state=()) -> dict:
    names = [f"{i}.{p}" for i, p in outputs]
    body = {"output": names[0] if len(names) == 1 else ".." + "...".join(names) + "..",
            "outputs": [{"id": i, "property": p} for i, p in outputs] if len(outputs) > 1 else
            {"id": outputs[0][0], "property": outputs[0][1]},
            "inputs": [{"id": i, "property": p, "value": v} for i, p, v in inputs],
            "state": [{"id": i, "property": p, "value": v} for i, p, v in state],
            "changedPropIds": [_prop_id(*inputs[0][:2])]}
    response = app.server.test_client().post("/_dash-update-component", json=body)
    assert response.status_code == 200, response.data[:300]
    return response.get_json()["response"]


def _prop_id(component, prop: str) -> str:
    return f"{json.dumps(component) if isinstance(component, dict) else component}.{prop}"


def _commands(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def test_token_page_route_hint_gives_a_retrace_command_that_works(app):
    out = _call(app, [("token-route", "children"), ("token-route-graph", "figure")],
                [(BUNDLE, "value", "plain"), ({"key": "pos", "type": "wb-sel"}, "value", 3),
                 ("token-route-threshold", "value", None)])
    text = json.dumps(out["token-route"]["children"])
    assert "--decomposition" in text and "--raw" in text
    trace_line, routes_line = [c for c in _commands(json.loads(text)["props"]["children"])
                               if c.startswith("workbench ")][:2]
    code, _, err = run_cli(*shlex.split(trace_line)[1:])
    assert code == 0, err
    code, out_text, err = run_cli(*shlex.split(routes_line)[1:])
    assert code == 0 and "predicts" in out_text, err


def test_circuits_page_hint_asks_for_the_decomposition(app):
    out = _call(app, [("circuits-body", "children")], [(BUNDLE, "value", "plain"), ("circuits-top", "value", 40)])
    text = json.dumps(out["circuits-body"]["children"])
    assert "workbench trace --model tiny-llama --raw" in text and "then run `workbench circuits " in text


def test_image_page_says_sinks_exist_but_visual_sinks_need_hidden(app):
    out = _call(app, [("image-overlay", "figure"), ("image-notes", "children")],
                [(BUNDLE, "value", "vlm"), ({"key": "stack", "type": "wb-sel"}, "value", "text"),
                 ("image-mode", "value", "received"), ("image-layer", "value", "mean"),
                 ("image-head", "value", "mean"), ({"key": "pos", "type": "wb-sel"}, "value", 0),
                 ("image-tile", "value", None)])
    text = json.dumps(out["image-notes"]["children"])
    assert "This bundle has no attention sinks" not in text
    assert "has attention sinks but no VAR visual sinks" in text and "--hidden" in text


def test_vhd_hint_only_for_bundles_with_an_image(app):
    from workbench.app.pages.hallucination import series_for

    def hints(name):
        with app.server.app_context():
            return json.dumps([n.to_plotly_json() for n in series_for(app.server.config["WORKBENCH_DATA"].trace(name))[1]],
                              default=str)

    assert "vision-aware head divergence" not in hints("plain")
    assert "vision-aware head divergence" in hints("vlm")


def test_trace_form_defaults_to_a_real_model_and_passes_the_prompt_format(app):
    from workbench.app.pages.runs import layout

    with app.server.test_request_context():
        page = json.dumps(layout().to_plotly_json(), default=lambda o: o.to_plotly_json())
    model = re.search(r'"id": "runs-model"[^}]*?"value": "([^"]+)"', page) or re.search(
        r'"value": "([^"]+)"[^{}]*"id": "runs-model"', page)
    assert model and model.group(1) == "smollm2"
    assert '"runs-raw"' in page

    store = app.server.config["WORKBENCH_DATA"]
    ids = {}
    for fmt in ("raw", "chat"):
        out = _call(app, [("runs-job", "data"), ("runs-interval", "disabled"), ("runs-form-message", "children"),
                          ("runs-progress-box", "style")], [("runs-submit", "n_clicks", 1)],
                    state=[("runs-model", "value", "tiny-llama"), ("runs-prompt", "value", "Hello there"),
                           ("runs-new-tokens", "value", 0), ("runs-maps", "value", None),
                           ("runs-name", "value", f"form-{fmt}"), ("runs-image", "data", None),
                           ("runs-raw", "value", fmt)])
        ids[fmt] = out["runs-job"]["data"]
    for fmt, job in ids.items():
        status = store.jobs.wait(job, timeout=120)
        assert status["state"] == "done", status
        manifest = workbench.load(store.root / f"{status['bundle_id']}.wbtrace").meta["inputs"]
        assert manifest["raw"] is (fmt == "raw")
        # the chat template wraps the prompt; plain text is the prompt alone
        assert (manifest["text"] == "Hello there") is (fmt == "raw")
