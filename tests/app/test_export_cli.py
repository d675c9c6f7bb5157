"""`workbench export`: every user mistake is one line and exit 2, found before Chromium starts, with nothing written.

Chromium here is a stand-in script that leaves a marker file when it runs, so a check that came too late shows."""

from __future__ import annotations

import shutil
import sys

import pytest


@pytest.fixture()
def setup(traces_dir, tmp_path):
    chromium = tmp_path / "fake-chromium"
    marker = tmp_path / "chromium-started"
    chromium.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    chromium.chmod(0o755)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    return {"bundle": traces_dir / "llama-maps.wbtrace", "chromium": chromium, "marker": marker, "out": out_dir,
            "tmp": tmp_path}


def refused(capsys, setup, *args) -> str:
    from workbench.cli.main import main

    before = sorted(p.name for p in setup["out"].iterdir())
    old = sys.argv
    sys.argv = ["workbench", "export", *map(str, args), "--chromium", str(setup["chromium"])]
    try:
        with pytest.raises(SystemExit) as stopped:
            main()
    finally:
        sys.argv = old
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not setup["marker"].exists(), "Chromium started before the mistake was found"
    assert sorted(p.name for p in setup["out"].iterdir()) == before, "something was written"
    return err


def test_unknown_view_wrong_extension_and_bad_options(capsys, setup):
    bundle, out = setup["bundle"], setup["out"] / "view.html"
    assert "is not a view" in refused(capsys, setup, bundle, "--view", "nope", "--out", out)
    assert "model" in refused(capsys, setup, bundle, "--view", "runs", "--out", out)  # lists folders, not a view
    assert ".html or .png" in refused(capsys, setup, bundle, "--view", "model", "--out", setup["out"] / "v.pdf")
    assert "--width" in refused(capsys, setup, bundle, "--view", "model", "--out", out, "--width", "10")
    assert "--scale" in refused(capsys, setup, bundle, "--view", "model", "--out", out, "--scale", "9")
    assert "KEY=VALUE" in refused(capsys, setup, bundle, "--view", "model", "--out", out, "--param", "metric")
    assert "--layer" in refused(capsys, setup, bundle, "--view", "model", "--out", out, "--param", "layer=1")
    assert "--head" in refused(capsys, setup, bundle, "--view", "head", "--out", out, "--head", "-1")
    assert "--images" in refused(capsys, setup, bundle, "--view", "image", "--out", out, "--images",
                                 setup["tmp"] / "nope")


def test_selection_out_of_the_bundle(capsys, setup):
    bundle, out = setup["bundle"], setup["out"] / "view.html"
    assert "--layer 3 is out of range" in refused(capsys, setup, bundle, "--view", "head", "--layer", "3",
                                                  "--out", out)  # tiny-llama has 3 layers
    assert "--head 6 is out of range" in refused(capsys, setup, bundle, "--view", "head", "--head", "6", "--out", out)
    assert "--pos 69 is out of range" in refused(capsys, setup, bundle, "--view", "token", "--pos", "69", "--out", out)
    assert "--stack vision" in refused(capsys, setup, bundle, "--view", "image", "--stack", "vision", "--out", out)


def test_bad_bundles(capsys, setup, traces_dir):
    out = setup["out"] / "view.html"
    assert "not a trace bundle folder" in refused(capsys, setup, setup["tmp"] / "missing.wbtrace", "--view", "model",
                                                  "--out", out)
    plain = setup["tmp"] / "plain"
    shutil.copytree(setup["bundle"], plain)
    assert "NAME.wbtrace" in refused(capsys, setup, plain, "--view", "model", "--out", out)
    assert "manifest.json" in refused(capsys, setup, traces_dir / "broken.wbtrace", "--view", "model", "--out", out)
    empty = setup["tmp"] / "empty.wbtrace"
    empty.mkdir()
    refused(capsys, setup, empty, "--view", "model", "--out", out)


def test_output_paths_follow_the_rules(capsys, setup):
    bundle = setup["bundle"]
    notes = setup["out"] / "notes.html"
    notes.write_text("<p>my own notes</p>")
    assert "already exists" in refused(capsys, setup, bundle, "--view", "model", "--out", notes)
    assert "is not an export of the workbench" in refused(capsys, setup, bundle, "--view", "model", "--out", notes,
                                                          "--force")
    assert notes.read_text() == "<p>my own notes</p>"
    picture = setup["out"] / "picture.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # a PNG, but not one we wrote
    assert "is not an export" in refused(capsys, setup, bundle, "--view", "model", "--out", picture, "--force")
    assert "does not exist" in refused(capsys, setup, bundle, "--view", "model", "--out",
                                       setup["out"] / "no-such-folder" / "view.html")


def test_missing_chromium(capsys, setup):
    setup["chromium"] = setup["tmp"] / "no-chromium-here"
    assert "--chromium" in refused(capsys, setup, setup["bundle"], "--view", "model", "--out",
                                   setup["out"] / "view.png")


def test_ours_is_recognised_only_by_its_mark(tmp_path):
    from workbench.app.export_capture import is_our_html, is_our_png, mark_png

    png = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + b"\0" * 13 + b"\0\0\0\0" + b"rest"
    marked = tmp_path / "ours.png"
    marked.write_bytes(mark_png(png))
    plain = tmp_path / "theirs.png"
    plain.write_bytes(png)
    assert is_our_png(marked) and not is_our_png(plain)
    assert marked.read_bytes().startswith(png[:33]) and marked.read_bytes().endswith(b"rest")
    page = tmp_path / "page.html"
    page.write_text('<!DOCTYPE html>\n<html>\n<head>\n<meta name="generator" content="attention-workbench export">')
    other = tmp_path / "other.html"
    other.write_text("<!DOCTYPE html>\n<html><body>hello</body></html>")
    assert is_our_html(page) and not is_our_html(other)


def test_the_app_serves_the_export_script_and_the_installed_plotly(traces_dir):
    """Every page loads the export script; the plotly.js it inlines is the installed plotly package's file."""
    from pathlib import Path

    import plotly
    from workbench.app import create_app

    client = create_app(traces_dir, allow_trace=False).server.test_client()
    page = client.get("/model?bundle=llama-maps")
    assert page.status_code == 200 and b'src="/_workbench/export/export.js"' in page.data
    script = client.get("/_workbench/export/export.js")
    assert script.status_code == 200 and b"window.workbenchExport" in script.data
    served = client.get("/_workbench/export/plotly.min.js")
    shipped = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    assert served.status_code == 200 and served.data == shipped and len(shipped) > 1_000_000
    layout = client.get("/_dash-layout").get_json()
    assert "wb-export-html" in str(layout) and "wb-export-png" in str(layout)
