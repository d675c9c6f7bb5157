"""The re-trace command hints print: run as printed, it reproduces the bundle's tokens with the new option."""

from __future__ import annotations

import shlex

import pytest

import workbench
from tests.workbench.cli.cli_inprocess import run_cli
from workbench.analyses.decomposed import check_trace
from workbench.errors import InputError
from workbench.traces.retrace import retrace


@pytest.mark.parametrize("options", [
    {"raw": True},
    {"system": "You answer in one word.", "raw": False},
])
def test_the_printed_command_reproduces_the_tokens_with_decomposition(tmp_path, options):
    first = workbench.trace("tiny-llama", "The cat's \"mat\" is red", max_new_tokens=2, **options)
    bundle = first.save(tmp_path / "first.wbtrace")
    again = retrace(workbench.load(bundle).meta, bundle, ["--decomposition"])
    words = shlex.split(again.command)
    assert words[:2] == ["workbench", "trace"] and again.prompt_file is None
    code, _, err = run_cli(*words[1:])
    assert code == 0, err
    second = workbench.load(again.out)
    assert [t.id for t in second.tokens] == [t.id for t in first.tokens]
    assert second.has("layer_00.query") and not first.has("layer_00.query")


def test_a_multiline_prompt_goes_through_a_prompt_file(tmp_path):
    meta = {"model": {"source": "tiny-llama"}, "inputs": {"prompt": "line one\nline two"}}
    again = retrace(meta, tmp_path / "x.wbtrace", ["--decomposition"])
    assert "--prompt-file PROMPT.txt" in again.command and "PROMPT.txt" in again.describe()


def test_routes_on_a_bundle_without_decomposition_names_the_command(tmp_path):
    bundle = workbench.trace("tiny-llama", "Hello there", max_new_tokens=1, raw=True).save(tmp_path / "h.wbtrace")
    code, _, err = run_cli("routes", bundle)
    assert code == 2 and err.count("\n") <= 1
    assert f"-o {tmp_path / 'h-decomposition.wbtrace'}" in err and "--raw" in err and "--decomposition" in err
    with pytest.raises(InputError, match="then run `workbench circuits "):  # the check circuits shares
        check_trace(workbench.load(bundle), "circuits")
