"""Write one view of the app to a file from headless Chromium: the app is served in this process on a free
loopback port, the view opened, and once every figure has drawn, the page's own export script writes the HTML
(the same file the Export control saves) or Chromium screenshots the page's `<main>` for a PNG.

The browser may reach only that loopback server: every other request is aborted, so an export never touches the
network. The caller checks its inputs first (workbench/cli/export_command.py); this module only drives Chromium.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import InputError, ResourceError

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MARK = b"Software\x00attention-workbench export"  # a tEXt chunk that marks a PNG as ours (--force)

# The page has drawn when it has content, no Dash callback is pending and no figure still shows its placeholder.
DRAWN = """() => {
    const main = document.querySelector('main');
    if (!main || !main.querySelector('h2, .wb-error, .wb-hint') || !window.workbenchExport) { return false; }
    if (document.querySelector('[data-dash-is-loading="true"]')) { return false; }
    return Array.from(main.querySelectorAll('.dash-graph')).every(function (holder) {
        const gd = holder.querySelector('.js-plotly-plot');
        if (!gd || !gd._fullLayout || !gd.data) { return false; }
        return !(gd.layout.annotations || []).some(function (a) { return String(a.text).indexOf('loading') === 0; });
    });
}"""
SIGNATURE = """() => { const main = document.querySelector('main');
    return main.innerHTML.length + ':' + Array.from(main.querySelectorAll('.js-plotly-plot'))
        .map(function (gd) { return (gd.data || []).length; }).join(','); }"""


@dataclass(frozen=True)
class Exported:
    path: Path
    figures: int  # plotly figures on the page
    seconds: float


class _Server:
    """The app on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app):
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args, **kwargs):  # one line per request would bury the command's output
                pass

        self._server = make_server("127.0.0.1", 0, app.server, threaded=True, request_handler=Quiet)
        self.origin = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)


def mark_png(data: bytes) -> bytes:
    """`data` with a tEXt chunk naming the workbench after the header chunk (how --force recognises its PNGs)."""
    if not data.startswith(PNG_SIGNATURE):
        raise ResourceError("Chromium returned something that is not a PNG")
    header_end = len(PNG_SIGNATURE) + 8 + int.from_bytes(data[8:12], "big") + 4
    chunk = len(PNG_MARK).to_bytes(4, "big") + b"tEXt" + PNG_MARK
    chunk += zlib.crc32(b"tEXt" + PNG_MARK).to_bytes(4, "big")
    return data[:header_end] + chunk + data[header_end:]


def is_our_png(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as handle:
        head = handle.read(256)
    return head.startswith(PNG_SIGNATURE) and PNG_MARK in head


def is_our_html(path: Path) -> bool:
    from workbench.app.export_view import GENERATOR

    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as handle:
        head = handle.read(512)
    return head.startswith(b"<!DOCTYPE html>") and f'content="{GENERATOR}"'.encode() in head


def _write_atomic(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.resolve().parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _wait_drawn(page, timeout_s: float) -> None:
    """Until the page has drawn and stayed unchanged for three polls in a row (late callbacks redraw figures)."""
    deadline = time.monotonic() + timeout_s
    page.wait_for_function(DRAWN, timeout=timeout_s * 1000)
    seen, steady = None, 0
    while steady < 3:
        if time.monotonic() > deadline:
            raise ResourceError(f"the view did not finish drawing within {timeout_s:.0f} s; pass a longer --timeout")
        page.wait_for_timeout(250)
        now = page.evaluate(SIGNATURE) if page.evaluate(DRAWN) else None
        steady = steady + 1 if now is not None and now == seen else 0
        seen = now


def export_view(app, url_path: str, out: Path, *, kind: str, chromium: str, width: int = 1400, scale: float = 2,
                timeout_s: float = 120) -> Exported:
    """Open `url_path` (e.g. `/head?bundle=x&layer=2`) of `app` in headless Chromium and write `out`: kind "html"
    (self-contained file) or "png" (screenshot of the page's <main>, `scale` pixels per CSS pixel)."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    server = _Server(app)
    try:
        with sync_playwright() as playwright:
            try:
                browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            except PlaywrightError as error:
                raise ResourceError(f"cannot start Chromium at {chromium}: {str(error).splitlines()[0]}") from None
            try:
                context = browser.new_context(viewport={"width": width, "height": 1000}, device_scale_factor=scale,
                                              accept_downloads=False)
                context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
                    server.origin + "/") else route.abort())
                page = context.new_page()
                page.goto(server.origin + url_path)
                try:
                    _wait_drawn(page, timeout_s)
                except PlaywrightError:
                    raise ResourceError(f"the view did not finish drawing within {timeout_s:.0f} s; pass a longer "
                                        "--timeout") from None
                problem = page.evaluate("() => { const e = document.querySelector('main .wb-error'); "
                                        "return e ? e.innerText : null; }")
                if problem:
                    raise InputError(f"the view shows an error, nothing written: {' '.join(problem.split())}")
                figures = page.evaluate("() => document.querySelectorAll('main .js-plotly-plot').length")
                if kind == "html":
                    _write_atomic(out, page.evaluate("() => window.workbenchExport.html()").encode("utf-8"))
                else:
                    page.add_style_tag(content="main { background: #fafafa; }")
                    _write_atomic(out, mark_png(page.locator("main").screenshot(type="png", animations="disabled")))
            finally:
                browser.close()
    finally:
        server.close()
    return Exported(path=out, figures=figures, seconds=time.monotonic() - started)
