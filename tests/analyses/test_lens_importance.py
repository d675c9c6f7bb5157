"""Logit lens, direct logit attribution and head importance against independent computations: the HF model's own
hidden states, final norm, unembedding and logits; the planted induction model's ground truth; and a finite
difference of the loss with a head's slice of W_O scaled in a float64 copy of the model (no workbench code)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from tests.workbench.cli.cli_inprocess import run_cli
from workbench.analyses import importance, lens
from workbench.analyses.readout import readout
from workbench.analyses.registry import read_result
from workbench.capture import Tracer
from workbench.errors import InputError
from workbench.models.registry import data_root

TRUTH = json.loads((data_root() / "models" / "planted" / "induction" / "ground_truth.json").read_text())
PLANTED = [(TRUTH["heads_planted"][k]["layer"], TRUTH["heads_planted"][k]["head"])
           for k in ("previous_token", "induction")]
LETTER_PROMPTS = [json.loads(line)["prompt"]
                  for line in (data_root() / "prompts" / "induction_letters.jsonl").read_text().splitlines()]
PROMPT = "The quick brown fox jumps over the lazy dog"


def _hf_forward(loaded, text):
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = loaded.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    return ids, out


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_logit_lens_equals_hf_hidden_states_through_the_models_readout(models, name, one_torch_thread):
    loaded = models(name)
    _, out = _hf_forward(loaded, PROMPT)
    position, target = 4, 7
    result = lens.analyse(Tracer.open(loaded), PROMPT, position=position, target=target, top=5)
    norm, unembedding = loaded.model.get_decoder().norm if name == "tiny-llama" else loaded.model.transformer.ln_f, \
        loaded.model.lm_head
    n_layers = loaded.model.config.num_hidden_layers
    assert len(result.layers) == n_layers + 1
    with torch.inference_mode():
        for layer in range(n_layers):  # hidden_states[l] is the residual entering layer l
            expected = unembedding(norm(out.hidden_states[layer][0, position])).double()
            row = result.layers[layer]
            assert row["target_logit"] == pytest.approx(float(expected[target]), abs=1e-4)
            assert row["target_rank"] == int((expected > expected[target]).sum()) + 1
            top = expected.softmax(-1).topk(5)
            assert [p for _, p in row["top"]] == pytest.approx(top.values.tolist(), abs=1e-5)
    model_logits = out.logits[0, position].double()  # the last lens row is the model's own prediction
    assert result.layers[-1]["target_logit"] == pytest.approx(float(model_logits[target]), abs=1e-4)
    assert result.logit == pytest.approx(float(model_logits[target]), abs=1e-4)
    assert result.layers[-1]["target_probability"] == pytest.approx(float(model_logits.softmax(-1)[target]), abs=1e-6)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "planted-induction"])
def test_direct_logit_attribution_sums_to_the_logit_minus_the_norm_offset(models, name, one_torch_thread):
    loaded = models(name)
    text = LETTER_PROMPTS[0] if name == "planted-induction" else PROMPT
    ids, out = _hf_forward(loaded, text)
    position = ids.shape[1] - 3
    target = int(out.logits[0, position].argmax())
    result = lens.analyse(Tracer.open(loaded), text, position=position)
    assert result.target["id"] == target
    norm, unembedding = readout(loaded.model)
    bias = getattr(norm, "bias", None)
    offset = 0.0 if bias is None else float(bias.detach().double() @ unembedding.weight[target].detach().double())
    if getattr(unembedding, "bias", None) is not None:
        offset += float(unembedding.bias[target])
    direct = result.heads.sum() + result.mlp.sum() + result.attn_bias.sum() + result.embed
    assert direct == pytest.approx(float(out.logits[0, position, target]) - offset, abs=1e-4)
    assert result.offset == pytest.approx(offset, abs=1e-6)
    assert result.residual_error < 1e-4


def test_direct_logit_of_each_head_equals_a_hand_written_gpt2_head(models, one_torch_thread):
    """Per head, not only the sum: each GPT-2 head's output rebuilt by hand from HF's eager attention weights and
    the values of c_attn on ln_1 of the layer input, through its rows of c_proj, then the frozen final LayerNorm."""
    loaded = models("tiny-gpt2")
    hf = copy.deepcopy(loaded.model).eval()
    hf.set_attn_implementation("eager")
    ids = loaded.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    position, target = 5, 11
    captured = {}

    def keep(module, args, output):
        captured["out"] = output[0] if isinstance(output, tuple) else output
    hook = hf.transformer.h[-1].register_forward_hook(keep)
    with torch.no_grad():
        out = hf(input_ids=ids, output_hidden_states=True, output_attentions=True, use_cache=False)
        hook.remove()
        n_heads, d_model = hf.config.n_head, hf.config.n_embd
        d_head = d_model // n_heads
        before_norm = captured["out"][0, position].double()  # the last block's output: the final norm's input
        assert torch.allclose(hf.lm_head(hf.transformer.ln_f(before_norm.float())), out.logits[0, position], atol=1e-4)
        scale = torch.sqrt(before_norm.var(unbiased=False) + hf.transformer.ln_f.eps)
        direction = hf.transformer.ln_f.weight.double() * hf.lm_head.weight[target].double()
        expected = np.zeros((hf.config.n_layer, n_heads))
        for layer, block in enumerate(hf.transformer.h):
            values = block.attn.c_attn(block.ln_1(out.hidden_states[layer]))[0, :, 2 * d_model:]  # [key_pos, d]
            for head in range(n_heads):
                weights = out.attentions[layer][0, head, position]  # [key_pos]
                o = weights @ values[:, head * d_head:(head + 1) * d_head]
                vector = (o @ block.attn.c_proj.weight[head * d_head:(head + 1) * d_head]).double()
                expected[layer, head] = float(((vector - vector.mean()) / scale) @ direction)
    result = lens.analyse(Tracer.open(loaded), PROMPT, position=position, target=target)
    assert np.abs(result.heads - expected).max() < 1e-4
    assert np.abs(expected).max() > 1e-2  # the heads do write something here


def test_direct_logit_attribution_on_planted_heads(models, one_torch_thread):
    """Only the induction head writes OUT, which the unembedding reads: it carries the whole logit; the heads
    planted with zero weights contribute exactly nothing."""
    result = lens.analyse(Tracer.open(models("planted-induction")), LETTER_PROMPTS[1], position=-2)
    induction = TRUTH["heads_planted"]["induction"]
    assert result.heads[induction["layer"], induction["head"]] == pytest.approx(result.logit, rel=1e-3)
    for layer, head in TRUTH["heads_planted"]["zero_heads"]:
        assert result.heads[layer, head] == 0.0
    # the alternative convention: each component through the norm on its own statistics (does not sum to the logit)
    alone = lens.analyse(Tracer.open(models("planted-induction")), LETTER_PROMPTS[1], position=-2, scale="recompute")
    assert alone.options["scale"] == "recompute" and abs(alone.total - alone.logit) > 1.0


def test_lens_result_round_trips_and_refuses_bad_input(models, one_torch_thread):
    tracer = Tracer.open(models("planted-induction"))
    result = lens.analyse(tracer, "a b c a b", target="c")
    again = read_result("lens", json.loads(json.dumps(result.to_json())))
    assert isinstance(again, lens.LensResult) and np.array_equal(again.heads, result.heads.round(8))
    assert again.head_metrics()["direct_logit"].values.shape == (2, 4)
    for kwargs, message in [({"position": 9}, "outside"), ({"target": "ab"}, "vocabulary"),
                            ({"target": "a b"}, "2 tokens"), ({"scale": "each"}, "scale")]:
        with pytest.raises(InputError, match=message):
            lens.analyse(tracer, "a b c a b", **kwargs)


# ------------------------------------------------------------------------------------------------ importance
def test_importance_ranks_the_planted_heads_first(models, one_torch_thread):
    result = importance.analyse(Tracer.open(models("planted-induction")), LETTER_PROMPTS, curve=True)
    assert set(result.ranking[:2]) == set(PLANTED)
    assert result.options["normalise"] == "layer"
    assert np.allclose(np.linalg.norm(result.scores, axis=-1), 1.0)
    # least important first: the curve stays flat until a planted head goes, then the copy breaks
    clean = result.curve[0]
    assert clean["accuracy"] > 0.4
    for point in result.curve[:-2]:
        assert point["loss"] == pytest.approx(clean["loss"], abs=1e-2)
    assert result.curve[-2]["loss"] > clean["loss"] + 1.0 and result.curve[-2]["accuracy"] == 0.0
    again = read_result("importance", json.loads(json.dumps(result.to_json())))
    assert again.ranking == result.ranking and again.curve == result.curve


def _float64_copy(hf_model):
    """The model in float64 throughout: transformers' RMSNorm computes in float32 even in a float64 model, whose
    rounding would drown a finite difference, so its norms are replaced by the float64 formula."""
    reference = copy.deepcopy(hf_model).double().eval()
    for module in reference.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = lambda x, m=module: m.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)
                                                                             + m.variance_epsilon))
    return reference


def _loss_with_head_scaled(hf_model, ids, layer, head, factor) -> float:
    """The mean next-token cross-entropy (float64; HF's own loss would round to float32) of the model's logits with
    head `head` of `layer` scaled by `factor` in W_O's input columns."""
    block = hf_model.transformer.h[layer] if hasattr(hf_model, "transformer") else hf_model.model.layers[layer]
    if hasattr(block, "attn"):  # GPT-2 Conv1D: y = x @ W, W [head * d_head, d_model]
        weight, d_head = block.attn.c_proj.weight, hf_model.config.n_embd // hf_model.config.n_head
        rows = (slice(head * d_head, (head + 1) * d_head), slice(None))
    else:  # Linear: y = x @ W^T, W [d_model, head * d_head]
        weight, d_head = block.self_attn.o_proj.weight, block.self_attn.head_dim
        rows = (slice(None), slice(head * d_head, (head + 1) * d_head))
    saved = weight.data[rows].clone()
    weight.data[rows] *= factor
    try:
        with torch.no_grad():
            logits = hf_model(input_ids=ids, use_cache=False).logits[0, :-1].double()
            return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))
    finally:
        weight.data[rows] = saved


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_importance_gradient_equals_a_finite_difference(models, name, one_torch_thread):
    loaded = models(name)
    result = importance.analyse(Tracer.open(loaded), [PROMPT], normalise="none")
    reference = _float64_copy(loaded.model)
    ids = loaded.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    eps = 1e-4
    n_layers, n_heads = result.raw.shape
    for layer in range(n_layers):
        for head in range(n_heads):
            up = _loss_with_head_scaled(reference, ids, layer, head, 1 + eps)
            down = _loss_with_head_scaled(reference, ids, layer, head, 1 - eps)
            difference = (up - down) / (2 * eps)
            assert result.gradient[layer, head] == pytest.approx(difference, rel=1e-3, abs=1e-6)
            assert result.raw[layer, head] == pytest.approx(abs(difference), rel=1e-3, abs=1e-6)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_lens_on_a_bundle_and_importance(models, tmp_path):
    import workbench

    bundle = workbench.trace(models("planted-induction"), "a b c d a b c", raw=True).save(tmp_path / "p.wbtrace")
    code, out, err = run_cli("lens", bundle, "--pos", "-1", "--json", "-")
    assert code == 0, err
    data = json.loads(out)
    assert data["analysis"] == "lens" and data["target"]["text"] == "d"
    assert (bundle / "results" / "lens.json").is_file()
    prompts = data_root() / "prompts" / "induction_letters.jsonl"
    code, out, err = run_cli("importance", "--model", "planted-induction", "--prompts", prompts, "--limit", "2",
                             "--json", tmp_path / "i.json", "--store", bundle)
    assert code == 0, err
    written = json.loads((tmp_path / "i.json").read_text())
    assert written["analysis"] == "importance"
    assert json.loads((bundle / "results" / "importance.json").read_text()) == written  # the app reads this one


@pytest.mark.parametrize("args, message", [
    (("lens",), "give a bundle"),
    (("lens", "--model", "no-such-model-anywhere"), "--prompt"),
    (("lens", "--model", "no-such-model-anywhere", "--prompt", "x", "--scale", "each"), "--scale"),
    (("lens", "--model", "no-such-model-anywhere", "--prompt", "x", "--top", "0"), "--top"),
    (("lens", "--model", "no-such-model-anywhere", "--prompt", " "), "empty"),
    (("lens", "no-such.wbtrace"), "no such bundle"),
    (("importance", "--model", "no-such-model-anywhere", "--prompts", "no-such.jsonl"), "does not exist"),
    (("importance", "--model", "no-such-model-anywhere", "--prompts", "x.jsonl", "--normalise", "l1"), "--normalise"),
    (("importance", "--model", "no-such-model-anywhere", "--prompts", "x.jsonl", "--order", "random"), "--order"),
    (("importance", "--model", "no-such-model-anywhere", "--prompts", str(data_root() / "prompts" /
      "induction_letters.jsonl"), "--store", "no-such.wbtrace"), "no such bundle"),
])
def test_cli_mistakes_are_one_line_before_the_model_loads(args, message):
    code, _, err = run_cli(*args)
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.slow
def test_smollm2_lens_and_attribution_against_hf(models):
    loaded = models("smollm2")
    text = "The capital of France is"
    _, out = _hf_forward(loaded, text)
    target = loaded.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    result = lens.analyse(Tracer.open(loaded), text, target=" Paris")
    logit = float(out.logits[0, -1, target])
    assert result.layers[-1]["target_logit"] == pytest.approx(logit, abs=1e-3)
    assert result.layers[-1]["target_rank"] == 1  # SmolLM2 continues with " Paris"
    norm, unembedding = readout(loaded.model)
    with torch.inference_mode():
        middle = unembedding(norm(out.hidden_states[15][0, -1])).double()
    assert result.layers[15]["target_logit"] == pytest.approx(float(middle[target]), abs=1e-3)
    assert result.total == pytest.approx(logit, abs=1e-3)  # RMSNorm, no biases: the offset is 0
    assert result.offset == 0.0
