"""`workbench patch` / `workbench ablate`: results on the planted induction model, and every user mistake as one
line and exit 2 before the model loads (an unknown model name would fail later, at loading: these fail first)."""

from __future__ import annotations

import json

import pytest

from tests.workbench.cli.cli_inprocess import run_cli

CLEAN = "f x r c e l s k h b p t f x r c e l s k"
CORRUPTED = "f x r c e l s a h b p t f x r c e l s k"
PAIR = ["--clean", CLEAN, "--corrupted", CORRUPTED, "--answer", "h", "--distractor", "a"]


def test_patch_writes_json_and_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "patch.json"
    code, stdout, stderr = run_cli("patch", "-m", "planted-induction", *PAIR, "--json", out, "--threads", "1")
    assert code == 0, stderr
    data = json.loads(out.read_text())
    assert data["analysis"] == "patching" and len(data["effect"]) == 2
    assert {(r["layer"], r["head"]) for r in data["ranking"][:2]} == {(0, 3), (1, 2)}  # the planted heads
    assert "largest effects: " in stdout
    code, _, stderr = run_cli("patch", "-m", "planted-induction", *PAIR, "--json", out)
    assert code == 2 and stderr.startswith("error: ") and "--force" in stderr
    assert run_cli("patch", "-m", "planted-induction", *PAIR, "--json", out, "--force")[0] == 0


def test_ablate_to_stdout():
    code, stdout, stderr = run_cli("ablate", "-m", "planted-induction", "--prompt", CLEAN, "--answer", "h",
                                   "--metric", "logprob", "--heads", "1.2,0.0", "--json", "-")
    assert code == 0, stderr
    data = json.loads(stdout[stdout.index("{"):])
    assert data["runs"] == [[[0, 0]], [[1, 2]]] and data["change"][1] < -3 and abs(data["change"][0]) < 1e-3


@pytest.mark.parametrize("args, message", [
    (["patch", *PAIR, "--metric", "kl"], "--metric takes"),
    (["patch", *PAIR, "--what", "mlp"], "what must be one of"),
    (["patch", *PAIR, "--direction", "up"], "direction must be"),
    (["patch", *PAIR, "--positions", "last"], "cannot read --positions"),
    (["patch", *PAIR, "--layers", "3-1"], "cannot read --layers"),
    (["patch", *PAIR, "--what", "resid", "--heads", "0"], "--heads applies to --what heads only"),
    (["patch", *PAIR, "--batch-size", "0"], "--batch-size must be between"),
    (["patch", "--clean", CLEAN, "--answer", "h", "--distractor", "a"], "needs a corrupted prompt"),
    (["patch", "--clean", CLEAN, "--corrupted", CORRUPTED, "--answer", "h"], "needs a distractor"),
    (["patch", "--pairs", "no/such.jsonl", "--answer", "h", "--distractor", "a"], "does not exist"),
    (["patch", *PAIR, "--pairs", "data/prompts/ioi.jsonl"], "either a prompt"),
    (["patch", *PAIR, "--json", "no/such/folder/x.json"], "does not exist"),
    (["ablate", "--prompt", CLEAN, "--answer", "h", "--metric", "logprob", "--method", "mean"], "needs --reference"),
    (["ablate", "--prompt", CLEAN, "--answer", "h", "--metric", "logprob", "--method", "resample"],
     "pass --corrupted"),
    (["ablate", "--prompt", CLEAN, "--answer", "h", "--metric", "logprob", "--heads", "1:2"], "cannot read --heads"),
    (["ablate", "--prompt", CLEAN, "--answer", "h", "--metric", "logprob", "--positions", "each"],
     "cannot read --positions"),
])
def test_user_mistakes_end_in_one_line_before_loading(args, message):
    code, _, stderr = run_cli(args[0], "-m", "no-such-model", *args[1:])
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and message in stderr, stderr


def test_bounds_are_checked_against_the_config_before_loading():
    code, _, stderr = run_cli("patch", "-m", "planted-induction", *PAIR, "--layers", "0-7")
    assert code == 2 and "layer 2 does not exist" in stderr
    code, _, stderr = run_cli("ablate", "-m", "planted-induction", "--prompt", CLEAN, "--answer", "h",
                              "--metric", "logprob", "--heads", "0.4")
    assert code == 2 and "head 4 does not exist" in stderr


def test_store_puts_the_result_into_a_bundle_that_reads_it_back(tmp_path):
    from workbench.analyses.registry import read_result

    bundle = tmp_path / "clean.wbtrace"
    assert run_cli("trace", "-m", "planted-induction", "--raw", "-n", "0", "-p", CLEAN, "-o", bundle)[0] == 0
    code, _, stderr = run_cli("patch", "-m", "planted-induction", *PAIR, "--store", bundle)
    assert code == 0, stderr
    result = read_result("patching", json.loads((bundle / "results" / "patching.json").read_text()))
    assert result.effect[1, 2, 0] > 0.9 and abs(result.effect[1, 0, 0]) < 0.05
    code, _, stderr = run_cli("patch", "-m", "no-such-model", *PAIR, "--store", tmp_path / "none.wbtrace")
    assert code == 2 and "no such bundle" in stderr
