"""Help texts render in full (a "[default: ...]" inside one used to vanish as rich markup, leaving "greedily ."),
and `vhd --scenes` prints its rates as sentences, not Python dicts."""

from __future__ import annotations

import re

import pytest

from tests.workbench.cli.cli_inprocess import run_cli
from workbench.cli.vhd_scenes import rate_lines

COMMANDS = [["trace"], ["sinks"], ["routes"], ["circuits"], ["vhd"], ["patch"], ["ablate"], ["lens"], ["importance"], ["opera"], ["blind"], ["info"], ["sweep"], ["app"],
            ["probe", "build"], ["probe", "train"], ["probe", "eval"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_has_no_stray_space_before_punctuation(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    code, out, _ = run_cli(*command, "--help")
    assert code == 0
    stray = [line.strip() for line in out.splitlines() if re.search(r"\w \.(\s|│|$)", line)]
    assert not stray, stray


def test_defaults_written_in_help_texts_are_shown(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    out = run_cli("trace", "--help")[1]
    assert "Tokens to generate greedily [default: 16; 0 for encoders]." in out
    assert "\\[" not in out


def test_scene_rates_print_as_sentences():
    rates = {"plain": {"accuracy": {"n": 8, "rate": 0.625}, "absent_object_yes": {"n": 4, "rate": 0.25},
                       "prior_answer_on_conflicting": {"n": 0, "rate": None}, "incorrect": {"n": 8, "rate": 0.375}},
             "answers_changed": 3}
    lines = rate_lines(rates)
    assert lines[0] == ("plain: accuracy 62.5% (5/8); 'yes' with the object absent 25.0% (1/4); prior answer on "
                        "conflicting questions n/a (no such question); incorrect 37.5% (3/8)")
    assert lines[1] == "answers changed by VHR: 3"
    assert not any("{" in line for line in lines)
