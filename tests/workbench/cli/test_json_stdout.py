"""`--json -` makes standard output a data stream: whatever a command reports for people goes to standard error,
so a pipe reads one JSON document and nothing else (`workbench blind B --json - | jq` used to read the answers
printed before it)."""

from __future__ import annotations

import json

import pytest

import workbench
from tests.workbench.cli.cli_inprocess import run_cli

IMAGE = "data/scenes/images/scene_0001.png"
COMMANDS = [["sinks"], ["opera"], ["blind"], ["funnel"], ["rollout", "--pos", "-1"]]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("json") / "v.wbtrace"
    workbench.trace("tiny-llava", "Describe the picture", image=IMAGE, max_new_tokens=3).save(path)
    return path


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_standard_output_holds_the_json_alone(bundle, command):
    code, out, err = run_cli(command[0], str(bundle), *command[1:], "--json", "-")
    assert code == 0, err
    json.loads(out)  # one document, nothing printed around it


def test_the_next_command_reports_on_standard_output_again(bundle):
    run_cli("sinks", str(bundle), "--json", "-")
    code, out, err = run_cli("sinks", str(bundle))
    assert code == 0 and out.strip(), err
