"""`smol-llava` as shipped: its model card's numbers are eval.json's and training_log.json's (recomputed here from
the held-out questions' truth), the digests are the shipped files' (hashlib, here), the issue's accuracy target
is reported as measured, and the real model (packaged bases + trained files) loads the shipped projector and
adapters, answers held-out scene questions, and traces from the CLI command its README documents."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import workbench
from tests.helpers import assert_close
from workbench.models import packaged
from workbench.models.registry import data_root

MODEL_DIR = data_root() / "models" / "smol_llava"
SCENES = data_root() / "scenes"
TRAINED = ("projector.safetensors", "adapters.safetensors", "adapters.json")  # the digest's order
TARGET = 0.85  # issue 22: presence questions whose answer agrees with the prior

needs_trained_files = pytest.mark.skipif(not all((MODEL_DIR / name).exists() for name in TRAINED),
                                         reason="smol-llava's trained files are not in this checkout")
needs_evaluation = pytest.mark.skipif(not (MODEL_DIR / "eval.json").exists(),
                                      reason="smol-llava has no eval.json in this checkout (run its evaluate.py)")


def _eval() -> dict:
    return json.loads((MODEL_DIR / "eval.json").read_text())


def _measured() -> str:
    text = (MODEL_DIR / "MODEL_CARD.md").read_text()
    return text.split("<!-- measured:start -->")[1].split("<!-- measured:end -->")[0]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _presence_accuracy(result: dict, conflicts: bool) -> tuple[float, int]:
    """Pooled accuracy of the presence subtypes whose held-out questions agree (or conflict) with the prior,
    read off questions.jsonl's own `conflicts` flags."""
    rows = [json.loads(line) for line in (SCENES / "questions.jsonl").read_text().splitlines()]
    subtypes = {r["subtype"] for r in rows if r["type"] == "presence" and r["conflicts"] == conflicts}
    cells = [v for k, v in result["accuracy_by_subtype"].items() if k.split("/")[-1] in subtypes
             and k.startswith("presence/")]
    n = sum(c["n"] for c in cells)
    return sum(round(c["accuracy"] * c["n"]) for c in cells) / n, n


@needs_evaluation
def test_card_reports_the_measured_numbers():
    result, card = _eval(), _measured()
    for conflicts, label in ((False, "agree with the prior"), (True, "conflict with the prior")):
        rate, n = _presence_accuracy(result, conflicts)
        assert f"| {label} | {n} | {rate:.3f} |" in card
    for key, cell in result["accuracy_by_subtype"].items():
        assert f"| {key} | {cell['n']} | {cell['accuracy']:.3f} |" in card
    for subtype, cell in result["hallucination_rate"].items():
        assert f"| presence, {subtype}: answered yes | {cell['n']} | {cell['rate']:.3f} |" in card
    unanswerable = result["accuracy_by_subtype"]["unanswerable"]
    assert f"| {unanswerable['n']} | {result['unanswerable_hallucination_rate']:.3f} |" in card
    assert abs(result["unanswerable_hallucination_rate"] - (1 - unanswerable["accuracy"])) < 1e-3
    assert f"{result['questions']} questions" in card
    sampled = result["questions"] - unanswerable["n"]
    assert f"evaluate.py --limit {sampled}`" in card


@needs_evaluation
def test_digests_are_the_shipped_files():
    """Each file's sha256 in the card, and eval.json's digest (sha256 over the three sha256 digests) is the
    shipped files': the evaluation measured what ships."""
    digests = {name: _sha256(MODEL_DIR / name) for name in TRAINED}
    card = _measured()
    for name, digest in digests.items():
        assert f"| `{name}` | `{digest}` |" in card
    combined = hashlib.sha256(b"".join(bytes.fromhex(digests[name]) for name in TRAINED)).hexdigest()[:16]
    assert _eval()["trained_files_sha256"] == combined
    assert f"`{combined}`" in card


@needs_evaluation
def test_learning_curve_and_recipe_are_the_training_log():
    log = json.loads((MODEL_DIR / "training_log.json").read_text())
    card_text, card = (MODEL_DIR / "MODEL_CARD.md").read_text(), _measured()
    for stage, windows in log["loss_every_25"].items():
        means = [sum(windows[i:i + 4]) / len(windows[i:i + 4]) for i in range(0, len(windows), 4)]
        steps = log["config"][f"stage{stage}_steps"]
        assert len(windows) == -(-steps // 25)  # one mean per 25 steps, every step logged
        assert f"| {stage} | {steps} | " + " / ".join(f"{m:.3f}" for m in means) + " |" in card
    config = log["config"]
    assert f"{config['stage1_steps']} steps x batch {config['batch']}" in card_text
    assert f"{config['stage2_steps']:,} steps x batch {config['batch']}" in card_text
    assert f"{config['scenes']:,} training" in card_text and f"Seed {config['seed']}" in card_text
    assert f"rank {config['rank']}, alpha {config['alpha']}" in card_text
    assert "python data/models/smol_llava/train.py" in card_text


@needs_evaluation
def test_accuracy_target_reported_as_measured():
    """Issue 22's target: >= 0.85 on prior-agreeing presence questions; the card states whether it was met,
    and the prior-conflicting questions must hold both grounded and hallucinated answers for the probes."""
    result = _eval()
    agreeing, n = _presence_accuracy(result, conflicts=False)
    conflicting, _ = _presence_accuracy(result, conflicts=True)
    verdict = "met" if agreeing >= TARGET else "not met"
    assert f"accuracy >= {TARGET}: **{agreeing:.3f}** (n={n}), {verdict}." in _measured()
    assert n >= 100
    assert 0 < conflicting < 1
    if agreeing < TARGET:  # then the card says why and what next, quoting the evaluation as it stands
        text = (MODEL_DIR / "MODEL_CARD.md").read_text()
        assert "## What it would take" in text
        why = text.split("## What it would take")[1].split("\n## ")[0]
        colour = result["accuracy_by_subtype"]
        for quoted in (agreeing, conflicting, colour["colour/typical"]["accuracy"], colour["colour/atypical"]["accuracy"]):
            assert f"{quoted:.3f}" in why, f"'What it would take' does not quote {quoted:.3f} from eval.json"


def test_card_script_refuses_an_evaluation_of_other_files(tmp_path):
    """card.py must not copy numbers measured on other trained files into a card: one line, exit 2."""
    for name in (*TRAINED, "training_log.json", "MODEL_CARD.md"):
        (tmp_path / name).write_bytes((MODEL_DIR / name).read_bytes())
    (tmp_path / "eval.json").write_text(json.dumps({"trained_files_sha256": "0" * 16}))
    result = subprocess.run([sys.executable, str(MODEL_DIR / "card.py"), "--dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "measured other trained files" in result.stderr
    assert (tmp_path / "MODEL_CARD.md").read_bytes() == (MODEL_DIR / "MODEL_CARD.md").read_bytes()


@pytest.fixture(scope="module")
def real():
    return workbench.load_model("smol-llava")


@pytest.mark.slow
@needs_trained_files
def test_real_model_carries_the_shipped_projector_and_adapters(real):
    """The registry's model holds projector.safetensors as is, and every adapted projection equals SmolLM2's own
    weight (read from the converted base file) plus (alpha / rank) B A from adapters.safetensors."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    shipped_projector = load_file(str(MODEL_DIR / "projector.safetensors"))
    for key, value in real.model.model.multi_modal_projector.state_dict().items():
        assert torch.equal(value, shipped_projector[key]), key
    config = json.loads((MODEL_DIR / "adapters.json").read_text())
    adapters = load_file(str(MODEL_DIR / "adapters.safetensors"))
    layers = real.model.model.language_model.layers
    assert len(adapters) == 2 * len(config["targets"]) * len(layers)
    with safe_open(str(packaged.smollm2_dir() / "model.safetensors"), "pt") as base:
        for index in (0, len(layers) // 2, len(layers) - 1):
            for target in config["targets"]:
                path = f"model.language_model.layers.{index}.self_attn.{target}"
                a, b = adapters[f"{path}.lora_A"].double(), adapters[f"{path}.lora_B"].double()
                update = config["alpha"] / config["rank"] * b @ a
                assert update.abs().max() > 1e-3  # trained: merged and unmerged weights differ beyond tolerance
                expected = base.get_tensor(f"model.layers.{index}.self_attn.{target}.weight").double() + update
                assert_close(getattr(layers[index].self_attn, target).weight.double(), expected, what=path)
            k_proj = base.get_tensor(f"model.layers.{index}.self_attn.k_proj.weight")
            assert torch.equal(layers[index].self_attn.k_proj.weight, k_proj)  # not adapted


@pytest.mark.slow
@needs_trained_files
def test_real_model_answers_held_out_scene_questions(real):
    """The shipped model on held-out presence questions whose answer agrees with the prior; most must be right
    (the rates live in eval.json). Image tokens sit on their 6 x 6 patches."""
    from workbench.datasets import scenes

    rows = [json.loads(line) for line in (SCENES / "questions.jsonl").read_text().splitlines()]
    picked = [r for r in rows if r["type"] == "presence" and r["subtype"] in ("present-typical", "absent")][:8]
    right = 0
    for row in picked:
        trace = workbench.trace(real, row["question"], image=SCENES / row["image"], max_new_tokens=12)
        image_tokens = [t for t in trace.tokens if t.region == "image"]
        assert [t.patch for t in image_tokens] == [(k // 6, k % 6) for k in range(36)]
        right += scenes.is_correct(row, trace.generation["text"])
    assert right >= 6, f"{right} of {len(picked)} held-out presence questions answered correctly"


@pytest.mark.slow
@needs_trained_files
def test_the_readme_trace_command_works(tmp_path):
    """The command the README documents, run as written (plus an output path) through the CLI entry point."""
    from tests.workbench.cli.cli_inprocess import run_cli

    readme = (MODEL_DIR / "README.md").read_text()
    command = re.search(r"```bash\n(workbench trace .*?)\n```", readme, re.DOTALL).group(1).replace("\\\n", " ")
    args = shlex.split(command)[1:]
    code, _, err = run_cli(*args, "--out", tmp_path / "readme.wbtrace")
    assert code == 0, err[-2000:]
    trace = workbench.load(tmp_path / "readme.wbtrace")
    assert trace.model["name"] == "smol-llava"
    assert [t.patch for t in trace.tokens if t.region == "image"] == [(k // 6, k % 6) for k in range(36)]
    assert trace.generation["text"].strip()
