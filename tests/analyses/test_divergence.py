"""VHD against ground truth the workbench did not produce: the planted LLaVA's vision-aware and text-only heads
(ground_truth.json), and head outputs recomputed from full HF eager forwards without any KV cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import workbench
from workbench.analyses import divergence
from workbench.capture.inputs import prepare_input
from workbench.errors import InputError
from workbench.models.registry import data_root

PLANTED = data_root() / "models" / "planted"
SCENES = data_root() / "scenes"


def truth(name: str) -> dict:
    path = PLANTED / name / "ground_truth.json"
    if not path.exists():
        pytest.skip(f"{path} is missing: build it with python data/models/planted/build.py")
    return json.loads(path.read_text())


def reference_head_outputs(loaded, input_ids, pixel_values=None) -> torch.Tensor:
    """[layer, head, d_model]: each head's contribution at the last row, from one eager forward (no cache): the
    input of each o_proj split per head, times that head's slice of W_O."""
    layers = loaded.model.model.language_model.layers
    captured = {}
    handles = [layer.self_attn.o_proj.register_forward_pre_hook(
        lambda module, args, index=index: captured.__setitem__(index, args[0][0, -1].detach()))
        for index, layer in enumerate(layers)]
    previous = loaded.model.config._attn_implementation
    loaded.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            loaded.model(input_ids=input_ids, **({"pixel_values": pixel_values} if pixel_values is not None else {}))
    finally:
        loaded.model.set_attn_implementation(previous)
        for handle in handles:
            handle.remove()
    outputs = []
    for index, layer in enumerate(layers):
        weight = layer.self_attn.o_proj.weight.detach()  # [d_model, head * d_head]
        heads = loaded.model.config.text_config.num_attention_heads
        per_head = captured[index].reshape(heads, -1)
        outputs.append(torch.einsum("hd,mhd->hm", per_head, weight.reshape(weight.shape[0], heads, -1)))
    return torch.stack(outputs)


@pytest.mark.parametrize("name", ["planted-llava", "tiny-llava"])
def test_vhd_equals_recomputation_from_full_eager_forwards(models, name):
    loaded = models(name)
    prompt, image = "What is in the picture?", SCENES / "images" / "scene_0002.png"
    result = divergence.vhd(loaded, prompt, image, max_new_tokens=3)
    prepared = prepare_input(loaded, prompt, image)
    ids = prepared.input_ids
    generated = [t["id"] for t in result.tokens]
    image_id = loaded.model.config.image_token_id
    for step in range(len(generated)):
        with_ids = torch.cat([ids, torch.tensor([generated[:step]], dtype=ids.dtype)], 1)
        without_ids = with_ids[:, with_ids[0] != image_id]  # image tokens removed, not blanked
        with_image = reference_head_outputs(loaded, with_ids, prepared.model_inputs["pixel_values"])
        without = reference_head_outputs(loaded, without_ids)
        cosine = torch.nn.functional.cosine_similarity(with_image.double(), without.double(), dim=-1)
        assert (result.vhd[step].double() - (1 - cosine)).abs().max() < 1e-4
        l2 = divergence.head_distance(with_image, without, "l2")
        top = l2.flatten().topk(3).values.mean()
        assert float(divergence.t_vhd(l2[None], 3)[0]) == pytest.approx(float(top), rel=1e-6)


def test_planted_vision_aware_head_ranks_first_and_text_only_head_is_zero(models):
    gt = truth("llava")
    loaded = models("planted-llava")
    images = sorted((SCENES / "images").glob("scene_000*.png"))[:3]
    results = [divergence.vhd(loaded, gt["probe"]["prompt"], image, max_new_tokens=3) for image in images]
    ranking = divergence.rank_heads(results)["ranking"]
    aware, text_only = gt["vision_aware_head"], gt["text_only_head"]
    assert (ranking[0]["layer"], ranking[0]["head"]) == (aware["layer"], aware["head"])
    for result in results:
        assert float(result.vhd[:, text_only["layer"], text_only["head"]].max()) < 1e-4
        assert float(result.vhd[:, aware["layer"], aware["head"]].min()) > 0.5
        assert result.cost["forwards"] == 2 * len(result.tokens)


def test_analyse_a_traced_generation(models, tmp_path):
    gt = truth("llava")
    loaded = models("planted-llava")
    image = SCENES / "images" / "scene_0001.png"
    trace = workbench.trace(loaded, gt["probe"]["prompt"], image, max_new_tokens=3)
    result = divergence.analyse(trace, tracer=loaded)
    assert [t["id"] for t in result.tokens] == [t.id for t in trace.tokens[trace.generation["start"]:]]
    assert result.options["teacher_forced"] and len(result.vhd) == 3
    with pytest.raises(InputError, match="not the image"):
        divergence.analyse(trace, tracer=loaded, image=SCENES / "images" / "scene_0002.png")
    with pytest.raises(InputError, match="takes no image"):
        divergence.vhd(models("tiny-llama"), "hi", image)


def test_vhr_reinforces_the_heads_its_rule_selects(models):
    loaded = models("tiny-llava")
    prompt, image = "Describe it", SCENES / "images" / "scene_0004.png"
    plain = divergence.vhd(loaded, prompt, image, max_new_tokens=2)
    same = divergence.vhd(loaded, prompt, image, max_new_tokens=2, vhr=divergence.VHR(alpha=1.0))
    assert torch.allclose(plain.vhd, same.vhd, atol=1e-6) and plain.text == same.text
    reinforced = divergence.vhd(loaded, prompt, image, max_new_tokens=2, vhr=divergence.VHR(alpha=3.0))
    # Layer 0 sees no reinforced layer below it, so its choice follows the rule on the plain VHD.
    scores = plain.vhd[0, 0]
    inliers = scores <= scores.mean() + scores.std(unbiased=False)
    expected = ((scores > scores.median()) & inliers).nonzero().flatten().tolist()
    assert reinforced.vhr["selected"][0]["0"] == expected
    assert not torch.allclose(plain.vhd[0, 1:], reinforced.vhd[0, 1:])  # later layers see the change


def test_cli_vhd(tmp_path):
    gt = truth("llava")
    out = tmp_path / "vhd.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = [sys.executable, "-m", "workbench.cli.main", "vhd", "--model", "planted-llava"]
    done = subprocess.run(run + ["--image", str(SCENES / "images" / "scene_0000.png"), "--prompt",
                                 gt["probe"]["prompt"], "-n", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["analysis"] == "vhd" and len(data["t_vhd"]) == 2
    bad = subprocess.run(run + ["--prompt", "x"], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == \
        "error: --prompt needs --image: VHD compares the run with the image to the run without it"


@pytest.mark.slow
def test_llava_scenes_vhd_runs_on_heldout_questions(models):
    """Findings (AUROC, VHR effect) are reported in docs/analyses/vhd.md; here only that the pipeline runs."""
    if not (data_root() / "models" / "llava_scenes" / "config.json").exists():
        pytest.skip("llava-scenes is not trained yet (data/models/llava_scenes/train.py)")
    from workbench.cli import vhd_scenes

    questions = vhd_scenes.load_questions(SCENES, limit=12)
    data = vhd_scenes.evaluate(models("llava-scenes"), SCENES, questions, vhr=divergence.VHR())
    assert data["questions"] == 12 and set(data["rates"]) >= {"plain", "vhr"}
    score = data["scores"]["t_vhd_first"]["auroc_incorrect_vs_correct"]
    assert score is None or 0.0 <= score <= 1.0
    # short answers: the answer word is the first token, so the answer-word T-VHD is the first token's, and the
    # sentence-sized budget lets every answer reach its end of turn (one word and <|im_end|>)
    assert data["unfinished"] == 0 and data["max_new_tokens"] > 2
    for row in data["rows"]:
        assert row["answer_steps"] == [0] and row["t_vhd_answer"] == row["t_vhd_first"]


@pytest.mark.slow  # two in-process CLI runs with VHD on planted-llava
def test_cli_vhd_scenes_budget(tmp_path):
    """--scenes honours an explicit --max-new-tokens (it was capped at 6), and by default sizes the budget to the
    longest sentence answer of the sampled questions with the model's tokenizer."""
    from tests.workbench.cli.cli_inprocess import run_cli
    from workbench.cli import vhd_scenes
    from workbench.datasets.scene_answers import answer_token_budget
    from workbench.models import load_model

    out = tmp_path / "scenes.json"
    code, _, err = run_cli("vhd", "--model", "planted-llava", "--scenes", SCENES, "--limit", "2", "-n", "9",
                           "--threads", "1", "--json", out)
    assert code == 0, err
    assert json.loads(out.read_text())["max_new_tokens"] == 9
    code, _, err = run_cli("vhd", "--model", "planted-llava", "--scenes", SCENES, "--limit", "2", "--threads", "1",
                           "--json", out, "--force")
    assert code == 0, err
    questions = vhd_scenes.load_questions(SCENES, 2)
    budget = answer_token_budget(load_model("planted-llava").tokenizer, questions)
    data = json.loads(out.read_text())
    assert data["max_new_tokens"] == budget > 6 and data["questions"] == 2
