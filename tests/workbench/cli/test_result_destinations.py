"""Analysis commands end with one line saying where their result went, built from what was written: the bundle's
results file (absent with --no-store), the --json file, or nowhere. `routes --no-store` used to say "stored in
.../routes.json" while writing nothing."""

from __future__ import annotations

import pytest

import workbench
from tests.workbench.cli.cli_inprocess import run_cli


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("destinations") / "t.wbtrace"
    workbench.trace("tiny-llama", "the cat sat on the mat", max_new_tokens=2, raw=True, decomposition=True).save(path)
    return path


@pytest.mark.parametrize("command", ["routes", "circuits", "sinks"])
def test_no_store_says_nothing_was_stored(bundle, command):
    results = bundle / "results" / f"{command}.json"
    results.unlink(missing_ok=True)
    code, out, err = run_cli(command, bundle, "--no-store")
    assert code == 0, err
    assert not results.exists()
    assert "stored in" not in out
    assert out.rstrip().splitlines()[-1] == "not written anywhere (no results file in a bundle, no --json file)"


@pytest.mark.parametrize("command", ["routes", "circuits", "sinks"])
def test_the_line_names_every_file_written(bundle, command, tmp_path):
    results = bundle / "results" / f"{command}.json"
    results.unlink(missing_ok=True)
    exported = tmp_path / "out.json"
    code, out, err = run_cli(command, bundle, "--json", exported)
    assert code == 0, err
    assert results.is_file() and exported.is_file()
    assert out.rstrip().splitlines()[-1] == f"stored in {results}; JSON written to {exported}"
    code, out, err = run_cli(command, bundle, "--no-store", "--json", exported, "--force")
    assert code == 0, err
    assert out.rstrip().splitlines()[-1] == f"JSON written to {exported}"


def test_vhd_names_the_bundle_file_it_wrote(tmp_path):
    from workbench.models.registry import data_root

    path = tmp_path / "v.wbtrace"
    image = data_root() / "scenes" / "images" / "scene_0003.png"
    workbench.trace("tiny-llava", "Describe the picture", image=str(image), max_new_tokens=2).save(path)
    code, out, err = run_cli("vhd", "--bundle", path, "--model", "tiny-llava")
    assert code == 0, err
    assert (path / "results" / "vhd.json").is_file()
    assert out.rstrip().splitlines()[-1] == f"stored in {path / 'results' / 'vhd.json'}"
