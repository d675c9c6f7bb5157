"""What one app server may be made to do by bundles and forms it does not control: load only allowed models,
refuse huge map specs up front, and keep finished jobs and uploads bounded. Requests are sent as the browser
sends them (the Dash callback POSTs)."""

from __future__ import annotations

import base64
import json
import os
import re
import resource
import shutil
import time

import pytest
import torch

import workbench
from tests.app.app_helpers import png_bytes
from tests.helpers import eager_forward
from workbench.errors import InputError
from workbench.models.registry import data_root

PLANTED = data_root() / "models" / "planted" / "sink"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """allowed/sink (a model folder), outside/sink (the same model, not allowed), traces/ with a bundle of each
    and one naming a folder that does not exist."""
    root = tmp_path_factory.mktemp("limits")
    for where in ("allowed", "outside"):
        shutil.copytree(PLANTED, root / where / "sink")
    traces = root / "traces"
    traces.mkdir()
    torch.set_num_threads(1)
    for name, model in (("allowed", root / "allowed" / "sink"), ("outside", root / "outside" / "sink")):
        workbench.trace(str(model), "The cat sat. The dog ran.", max_new_tokens=0).save(traces / f"{name}.wbtrace")
    shutil.copytree(traces / "outside.wbtrace", traces / "missing.wbtrace")
    manifest = json.loads((traces / "missing.wbtrace" / "manifest.json").read_text())
    manifest["model"]["name"] = str(root / "outside" / "nothing-here")
    (traces / "missing.wbtrace" / "manifest.json").write_text(json.dumps(manifest))
    return root


def _head_map(client, bundle: str, layer: int = 1, head: int = 0, raw: bool = False):
    """The Head page's map callback, as the Dash client POSTs it; returns the text of its message panel (raw: the
    response)."""
    sel = lambda key, value: {"id": {"key": key, "type": "wb-sel"}, "property": "value", "value": value}
    body = {"output": "..head-map.figure...head-source.children..",
            "outputs": [{"id": "head-map", "property": "figure"}, {"id": "head-source", "property": "children"}],
            "inputs": [sel("bundle", bundle), sel("stack", "text"), sel("layer", layer), sel("head", head),
                       {"id": "head-scale", "property": "value", "value": "linear"},
                       {"id": "head-view", "property": "data", "value": None}, sel("pos", None)],
            "changedPropIds": ['{"key":"bundle","type":"wb-sel"}.value'], "state": []}
    response = client.post("/_dash-update-component", json=body)
    assert response.status_code == 200
    return response if raw else _strings(response.get_json()["response"]["head-source"])


def _strings(value) -> str:
    """Every text in a callback answer's component tree, joined (what the panel shows)."""
    if isinstance(value, dict):
        return "".join(_strings(item) for item in value.values())
    if isinstance(value, list):
        return "".join(_strings(item) for item in value)
    return value if isinstance(value, str) else ""


def test_recompute_loads_only_registry_models_and_allowed_folders(folders):
    from workbench.app import create_app

    app = create_app(folders / "traces", allow_trace=False)
    client, pool = app.server.test_client(), app.server.config["WORKBENCH_DATA"].pool
    outside = _head_map(client, "outside")
    missing = _head_map(client, "missing")
    assert "does not load the model" in outside and "--allow-model-dir" in outside
    # The same answer whether the named folder exists or not (only the name, echoed from the bundle, differs).
    echoed = lambda text: re.sub(r"model '[^']*'", "model NAME", text)
    assert echoed(outside) == echoed(missing) and "NAME" in echoed(outside)
    assert not pool._models  # nothing was loaded

    allowed = create_app(folders / "traces", allow_trace=False, allow_model_dirs=[folders / "allowed"])
    text = _head_map(allowed.server.test_client(), "allowed")
    assert "recomputed on the server" in text and "does not load" not in text
    assert "does not load the model" in _head_map(allowed.server.test_client(), "outside")


def test_recomputed_maps_from_an_allowed_folder_equal_hf_eager(folders):
    from workbench.app.data.service import AppData

    store = AppData(folders / "traces", allow_model_dirs=[folders / "allowed"])
    trace = store.trace("allowed")
    loaded = workbench.load_model(str(folders / "allowed" / "sink"))
    reference = eager_forward(loaded.model, input_ids=torch.tensor([[t.id for t in trace.tokens]])).attentions
    for layer in range(trace.n_layers()):
        for head in range(trace.n_heads()):
            got = store.head_map("allowed", "text", layer, head)
            assert got.source == "recomputed"
            torch.testing.assert_close(got.values, reference[layer][0, head].float(), atol=2e-3, rtol=0)


def test_model_access_resolves_before_checking(folders, tmp_path):
    from workbench.app.data.model_access import ModelAccess

    access = ModelAccess([folders / "allowed"])
    assert access.check("tiny-llama") == "tiny-llama"
    assert access.check(str(folders / "allowed" / "sink")) == str((folders / "allowed" / "sink").resolve())
    os.symlink(folders / "outside" / "sink", folders / "allowed" / "link")  # a link out of the allowed folder
    try:
        for name in (str(folders / "allowed" / ".." / "outside" / "sink"), str(folders / "allowed" / "link"),
                     "openai-community/gpt2", "/etc", "", "x\x00y", 12, None):
            with pytest.raises(InputError, match="does not load the model"):
                access.check(name)
    finally:
        (folders / "allowed" / "link").unlink()
    assert [p.name for p in access.folders()] == ["sink"]
    with pytest.raises(InputError, match="not on this server"):
        ModelAccess().check("llama-3.1-8b")  # a hub registry model: only from the local cache, never downloaded


# ------------------------------------------------------------------------------------------------ trace form
def _submit(client, maps: str, model: str = "tiny-llama"):
    state = lambda id_, value: {"id": id_, "property": "value", "value": value}
    body = {"output": "..runs-job.data...runs-interval.disabled...runs-form-message.children..."
                      "runs-progress-box.style..",
            "outputs": [{"id": "runs-job", "property": "data"}, {"id": "runs-interval", "property": "disabled"},
                        {"id": "runs-form-message", "property": "children"},
                        {"id": "runs-progress-box", "property": "style"}],
            "inputs": [{"id": "runs-submit", "property": "n_clicks", "value": 1}],
            "state": [state("runs-model", model), state("runs-prompt", "Hello"), state("runs-new-tokens", 1),
                      state("runs-maps", maps), state("runs-name", None),
                      {"id": "runs-image", "property": "data", "value": None}, state("runs-raw", "raw")],
            "changedPropIds": ["runs-submit.n_clicks"]}
    return client.post("/_dash-update-component", json=body)


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.parametrize("maps", ["0-30000000", "0:0-2000000", "0-99999999999999999999999999", "9" * 5000,
                                  "all:" + "1," * 600])
def test_huge_map_specs_are_refused_up_front_in_bounded_time_and_memory(tmp_path, maps):
    from workbench.app import create_app

    app = create_app(tmp_path)
    client, jobs = app.server.test_client(), app.server.config["WORKBENCH_DATA"].jobs
    before, peak_before = _rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    answer = _submit(client, maps)
    elapsed = time.perf_counter() - started
    text = answer.get_data(as_text=True)
    panel = json.loads(text)["response"]["runs-form-message"]["children"]
    assert "wb-error" in text and len(json.dumps(panel)) < 600, panel
    assert len(jobs) == 0 and not any(tmp_path.iterdir())  # nothing queued, nothing written
    assert elapsed < 2.0 and _rss_mb() - before < 100
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100 * 1024  # kB


def test_form_maps_past_the_models_layers_fail_in_the_job_without_a_bundle(tmp_path):
    from workbench.app.data.jobs import TraceJobs, validate
    from workbench.app.data.recompute import ModelPool

    jobs = TraceJobs(tmp_path, ModelPool())
    failed = jobs.wait(jobs.submit(validate("tiny-llama", "Hi", 1, maps="40000:all")), timeout=120)
    assert failed["state"] == "error" and "layers 0..2" in failed["message"] and not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ jobs and uploads
def test_finished_jobs_are_forgotten_by_count_and_by_age(tmp_path):
    from workbench.app.data.jobs import TraceJobs, validate
    from workbench.app.data.recompute import ModelPool

    jobs = TraceJobs(tmp_path, ModelPool(), max_finished=2)
    ids = [jobs.submit(validate("tiny-gpt2", f"number {i}", 0)) for i in range(5)]
    jobs.wait(ids[-1], timeout=120)
    for job_id in ids[:-1]:
        jobs.wait(job_id, timeout=5)  # the last one finishing means all did (one worker, in order)
    assert len(jobs) == 2 and [jobs.status(i) is not None for i in ids] == [False, False, False, True, True]
    assert len(list(tmp_path.glob("*.wbtrace"))) == 5  # forgetting a job never touches its bundle
    jobs.finished_ttl = 0.0
    time.sleep(0.01)
    assert jobs.status(ids[-1]) is None and len(jobs) == 0


def test_uploads_are_bounded_by_size_and_age_and_only_uploads_are_deleted(tmp_path):
    from workbench.app.data.uploads import Uploads

    sizes = {seed: len(png_bytes(seed)) for seed in range(6)}
    keep: set = set()
    uploads = Uploads(tmp_path, max_bytes=3 * max(sizes.values()), in_use=lambda: keep)
    (tmp_path / ".uploads").mkdir()
    (tmp_path / ".uploads" / "notes.txt").write_text("not an upload")
    stored = []
    for seed in range(6):
        stored.append(uploads.store(png_bytes(seed), ".png"))
        os.utime(stored[-1], (time.time() - 100 + seed, time.time() - 100 + seed))  # distinct ages, oldest first
        if seed == 0:
            keep.add(stored[0])  # a queued job still needs the first one
    present = {p.name for p in (tmp_path / ".uploads").iterdir()}
    total = sum(p.stat().st_size for p in stored if p.name in present)
    assert stored[0].name in present and stored[-1].name in present and "notes.txt" in present
    assert total <= 3 * max(sizes.values()) + sizes[0]
    assert {stored[1].name, stored[2].name} & present == set()  # the oldest unprotected went first
    uploads.max_age = 1.0
    keep.clear()
    os.utime(stored[-1], (time.time() - 10, time.time() - 10))
    uploads.prune()
    assert {p.name for p in (tmp_path / ".uploads").iterdir()} == {"notes.txt"}
    assert uploads.get("../notes.txt") is None and uploads.get(stored[0].name) is None


def test_an_upload_is_checked_without_decoding_its_pixels(monkeypatch):
    """An upload is accepted from its header and checksums (a 6000 x 6000 PNG would decode to 108 MB of RGB in a
    request thread); the trace job decodes it once, later."""
    from PIL import ImageFile
    from workbench.app.data.images import decode_upload

    def no_decoding(self):
        raise AssertionError("pixels decoded while checking an upload")

    contents = "data:image/png;base64," + base64.b64encode(png_bytes(seed=5)).decode()
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert decode_upload(contents, "photo.png")[1] == ".png"


def test_the_form_traces_allowed_folders_and_refuses_others_alike(folders, tmp_path):
    from workbench.app.data.jobs import TraceJobs, validate
    from workbench.app.data.model_access import ModelAccess
    from workbench.app.data.recompute import ModelPool

    access = ModelAccess([folders / "allowed"])
    jobs = TraceJobs(tmp_path, ModelPool(access=access))
    done = jobs.wait(jobs.submit(validate(str(folders / "allowed" / "sink"), "The cat sat.", 2, access=access)),
                     timeout=120)
    assert done["state"] == "done" and done["bundle_id"].startswith("sink-")
    assert workbench.load(tmp_path / f"{done['bundle_id']}.wbtrace").model["name"] == str(folders / "allowed" / "sink")
    messages = set()
    for name in (str(folders / "outside" / "sink"), str(folders / "outside" / "nothing-here"), "/etc"):
        with pytest.raises(InputError) as raised:
            validate(name, "The cat sat.", 2, access=access)
        messages.add(str(raised.value))
    assert len(messages) == 1 and "choose a model from the list" in messages.pop()
