"""Hostile requests over HTTP, exactly as a browser (or an attacker) sends them to the running app: path
traversal in page URLs, bundle ids and static routes; oversized and malicious uploads. A sentinel outside the
traces folder (a valid bundle and a secret file) must never show up in any response."""

from __future__ import annotations

import base64
import io
import json
import shutil

import pytest

from tests.app.app_helpers import png_bytes

SECRET = "sentinel-7d41-outside-the-traces-folder"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, traces_dir):
    """The app over a copy of the test traces, beside an outside folder holding a valid bundle and a secret."""
    from workbench.app import create_app

    root = tmp_path_factory.mktemp("security")
    traces = root / "traces"
    shutil.copytree(traces_dir / "vlm", traces / "vlm")
    outside = root / "outside"
    outside.mkdir()
    shutil.copytree(traces_dir / "llama-stats.wbtrace", outside / "secret.wbtrace")
    manifest = json.loads((outside / "secret.wbtrace" / "manifest.json").read_text())
    manifest["inputs"]["prompt"] = SECRET
    (outside / "secret.wbtrace" / "manifest.json").write_text(json.dumps(manifest))
    (outside / "secret.txt").write_text(SECRET)
    app = create_app(traces)
    return app.server.test_client(), root


def _page(client, pathname: str, search: str):
    """The callback the Dash client POSTs to render a page from its URL."""
    body = {"output": ".._pages_content.children..._pages_store.data..",
            "outputs": [{"id": "_pages_content", "property": "children"}, {"id": "_pages_store", "property": "data"}],
            "inputs": [{"id": "_pages_location", "property": "pathname", "value": pathname},
                       {"id": "_pages_location", "property": "search", "value": search}],
            "changedPropIds": ["_pages_location.pathname"], "state": []}
    return client.post("/_dash-update-component", json=body)


TRAVERSALS = ["../outside/secret", "../../outside/secret", "/etc/passwd", "%2e%2e/outside/secret",
              "..%2Foutside%2Fsecret", "vlm/../../outside/secret", "....//outside/secret", "\\..\\outside\\secret",
              "secret\x00", "C:\\Windows\\win.ini", "vlm/llava/../../../outside/secret"]


@pytest.mark.parametrize("pathname", ["/model", "/head", "/token", "/image", "/circuits", "/hallucination"])
def test_bundle_ids_in_page_urls_cannot_leave_the_traces_folder(hostile, pathname):
    client, _ = hostile
    for bundle in TRAVERSALS:
        for search in (f"?bundle={bundle}", f"?bundle={bundle}&layer=../1&head=/etc&pos=..%2F"):
            response = _page(client, pathname, search)
            assert response.status_code == 200, (pathname, search)
            text = response.get_data(as_text=True)
            assert SECRET not in text and "Traceback" not in text, (pathname, search)


def test_callbacks_refuse_ids_outside_the_folder(hostile):
    client, _ = hostile
    body = {"output": "..model-grid.figure...model-curves.figure...model-message.children..",
            "outputs": [{"id": "model-grid", "property": "figure"}, {"id": "model-curves", "property": "figure"},
                        {"id": "model-message", "property": "children"}],
            "inputs": [{"id": {"key": "bundle", "type": "wb-sel"}, "property": "value", "value": None},
                       {"id": {"key": "stack", "type": "wb-sel"}, "property": "value", "value": "text"},
                       {"id": "model-metric", "property": "value", "value": "entropy"}],
            "state": [{"id": "model-selected", "property": "data", "value": [0, 0]}],
            "changedPropIds": ["model-metric.value"]}
    for bundle in TRAVERSALS + [{"$ne": 1}, ["vlm/llava"], 12]:
        body["inputs"][0]["value"] = bundle
        response = client.post("/_dash-update-component", json=body)
        assert response.status_code == 200
        text = response.get_data(as_text=True)
        assert SECRET not in text and "no bundle" in text, bundle


@pytest.mark.parametrize("path", ["/assets/../outside/secret.txt", "/assets/..%2f..%2foutside%2fsecret.txt",
                                  "/_dash-component-suites/dash/../../../outside/secret.txt",
                                  "/_dash-component-suites/..%2f..%2f..%2foutside/secret.txt",
                                  "/../outside/secret.txt", "/%2e%2e/%2e%2e/outside/secret.txt",
                                  "/_dash-component-suites/dash/deps/..%5c..%5c..%5coutside%5csecret.txt"])
def test_static_routes_do_not_serve_files_outside(hostile, path):
    client, _ = hostile
    response = client.get(path)
    assert SECRET not in response.get_data(as_text=True)
    assert response.status_code in (200, 400, 403, 404)  # 200: the app shell for an unknown page, no file


def _upload(client, contents: str | None, filename: str):
    body = {"output": "..runs-image.data...runs-upload-status.children..",
            "outputs": [{"id": "runs-image", "property": "data"}, {"id": "runs-upload-status", "property": "children"}],
            "inputs": [{"id": "runs-upload", "property": "contents", "value": contents}],
            "state": [{"id": "runs-upload", "property": "filename", "value": filename}],
            "changedPropIds": ["runs-upload.contents"]}
    return client.post("/_dash-update-component", json=body)


def _png_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_uploads_are_size_checked_content_addressed_and_never_named_by_the_client(hostile):
    from PIL import Image
    from workbench.app.data.images import MAX_UPLOAD_BYTES

    client, root = hostile
    images = root / "traces" / ".uploads"
    good = _upload(client, _png_url(png_bytes(seed=3)), "../../outside/evil.png")
    stored = good.get_json()["response"]["runs-image"]["data"]
    assert (images / stored).is_file() and not (root / "outside" / "evil.png").exists() and ".." not in stored
    # Over the app's image limit but under the HTTP limit: refused with the limit in the message, nothing stored.
    before = set(images.iterdir())
    big = _upload(client, _png_url(b"\x89PNG" + b"\0" * (MAX_UPLOAD_BYTES + 1024)), "big.png")
    assert big.status_code == 200 and f"larger than {MAX_UPLOAD_BYTES // 2**20} MB" in big.get_data(as_text=True)
    # Over the HTTP limit: Flask refuses the request before it is read.
    huge = client.post("/_dash-update-component", data=b"x" * (MAX_UPLOAD_BYTES * 2), content_type="application/json")
    assert huge.status_code == 413
    # A decompression bomb: tiny file, 30,000 x 30,000 pixels.
    buffer = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(buffer, format="PNG")
    bomb = _upload(client, _png_url(buffer.getvalue()), "bomb.png")
    assert "more than the 40,000,000" in bomb.get_data(as_text=True)
    for junk in ("data:text/html;base64," + base64.b64encode(b"<script>alert(1)</script>").decode(),
                 "data:image/png;base64,!!!notbase64", "javascript:alert(1)", "file:///etc/passwd"):
        text = _upload(client, junk, "x.png").get_data(as_text=True)
        assert "wb-error" in text and "<script>" not in text, junk
    assert set(images.iterdir()) == before
