"""Planted-circuit models: every mechanism in ground_truth.json, checked through the workbench's own capture."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from PIL import Image

import workbench
from workbench.models.registry import data_root

PLANTED = data_root() / "models" / "planted"


def truth(name: str) -> dict:
    return json.loads((PLANTED / name / "ground_truth.json").read_text())


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = workbench.load_model(name)
        return cache[name]

    return get


# -- planted-sink ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sink_trace(models):
    gt = truth("sink")
    return workbench.trace(models("planted-sink"), gt["probe"]["prompt"], maps="all", map_dtype="float32",
                           hidden_states=True), gt


def test_sink_model_is_a_plain_llama_with_gqa(models):
    loaded = models("planted-sink")
    gt = truth("sink")
    assert type(loaded.model).__name__ == gt["architecture"] == "LlamaForCausalLM"
    config = loaded.model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == \
        (gt["layers"], gt["heads"], gt["kv_heads"])


def test_bos_sink_head(sink_trace):
    trace, gt = sink_trace
    for head in gt["sink_heads"]:
        stats = trace.layer(head["layer"])
        alpha = stats["key_mass"][head["head"], 0] / stats["key_count"][0]  # Gu et al.'s alpha_0
        assert alpha >= head["min_mass"]
        assert stats["maps"][head["head"], :, 0].min() >= head["min_mass"]  # every query row


def test_hidden_sink_head(sink_trace):
    trace, gt = sink_trace
    period_positions = [t.i for t in trace.tokens if t.text == "."]
    assert period_positions == gt["probe"]["period_positions"]
    p = period_positions[0]
    for head in gt["hidden_sink_heads"]:
        maps = trace.layer(head["layer"])["maps"][head["head"]]
        assert maps[p:, p].min() >= head["min_mass"]
        assert maps[:p, 0].min() >= head["min_mass"]  # before the first '.', the head rests on BOS
        stats = trace.layer(head["layer"])
        assert stats["key_mass"][head["head"], p] / stats["key_count"][p] >= head["min_mass"]


def test_other_heads_are_not_sinks(sink_trace):
    trace, gt = sink_trace
    planted = {(h["layer"], h["head"]) for h in gt["sink_heads"] + gt["hidden_sink_heads"]}
    p = gt["probe"]["period_positions"][0]
    limits = gt["non_planted_heads"]
    for layer in range(gt["layers"]):
        stats = trace.layer(layer)
        for head in range(gt["heads"]):
            if (layer, head) in planted:
                continue
            assert stats["key_mass"][head, 0] / stats["key_count"][0] < limits["max_bos_alpha"], (layer, head)
            assert stats["maps"][head, p:, p].mean() < limits["max_period_share"], (layer, head)


def test_bos_massive_activation(sink_trace):
    trace, gt = sink_trace
    massive = gt["massive_activation"]
    for layer in massive["layers"]:
        hidden = trace.layer(layer)["hidden_in"]
        for dim in massive["dims"]:
            assert hidden[0, dim] == pytest.approx(massive["value"], abs=1e-4)
            assert hidden[1:, dim].abs().max() < 1e-6


# -- planted-induction -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def induction_traces(models):
    gt = truth("induction")
    loaded = models("planted-induction")
    return [workbench.trace(loaded, seq, maps="all", map_dtype="float32", head_outputs="all", hidden_states=True)
            for seq in gt["probe"]["sequences"][:3]], gt


def test_previous_token_and_induction_heads(induction_traces):
    traces, gt = induction_traces
    period = gt["probe"]["period"]
    prev, ind = gt["heads_planted"]["previous_token"], gt["heads_planted"]["induction"]
    for trace in traces:
        ids = [t.id for t in trace.tokens]
        n = len(ids)
        assert n == 2 * period + 1 and ids[0] == gt["vocab"].index("<|bos|>")
        prev_maps = trace.layer(prev["layer"])["maps"][prev["head"]]
        assert min(prev_maps[i, i - 1] for i in range(1, n)) >= prev["min_mass"]
        ind_maps = trace.layer(ind["layer"])["maps"][ind["head"]]
        for i in range(1, n):
            earlier = [p for p in range(1, i) if ids[p] == ids[i]]
            target = earlier[-1] + 1 if earlier else 0
            assert ind_maps[i, target] >= ind["min_mass"], (i, target)


def test_induction_predicts_the_repeat(induction_traces):
    traces, gt = induction_traces
    period = gt["probe"]["period"]
    for trace in traces:
        logprob = trace.tensor("outputs.next_token_logprob")  # row p: log p(token p+1)
        second = logprob[period + 1: 2 * period]
        assert second.exp().min() >= 0.9


def test_omega_svd_matches_the_documented_subspaces(models):
    gt = truth("induction")
    model = models("planted-induction").model
    d_model, d_head = gt["d_model"], gt["d_head"]
    subspaces = gt["subspaces"]
    for name, spec in (("induction", gt["heads_planted"]["induction"]),):
        weight = model.transformer.h[spec["layer"]].attn.c_attn.weight.detach().double()
        h = spec["head"]
        w_q, w_k = weight[:, h * d_head:(h + 1) * d_head], weight[:, d_model + h * d_head:d_model + (h + 1) * d_head]
        omega = w_q @ w_k.T
        assert torch.count_nonzero(model.transformer.h[spec["layer"]].attn.c_attn.bias) == 0
        u, s, vh = torch.linalg.svd(omega)
        documented = gt["omega"][name]["components"]
        rank = int((s > 1e-6).sum())
        assert rank == len(documented) == 27
        tok, prev = set(subspaces["TOK"]), set(subspaces["PREV"])
        for k, component in enumerate(documented):
            assert s[k] == pytest.approx(component["singular_value"], abs=1e-5)
            assert int(u[:, k].abs().argmax()) == component["u_dim"] and u[:, k].abs().max() > 0.999
            assert int(vh[k].abs().argmax()) == component["v_dim"] and vh[k].abs().max() > 0.999
            assert component["u_dim"] in tok | set(subspaces["B_TOK"])
            assert component["v_dim"] in prev | {subspaces["TOK"][0]}


def test_only_the_previous_token_head_writes_what_the_induction_key_reads(induction_traces):
    """The planted edge, checked on captured head outputs: the key side of (1, 2) reads PREV, and only (0, 3)
    has output there (K-composition); nothing upstream writes TOK (its query and value side)."""
    traces, gt = induction_traces
    edge = gt["circuit"]["edges"][0]
    prev_dims, tok_dims = gt["subspaces"]["PREV"], gt["subspaces"]["TOK"]
    written = prev_dims + gt["subspaces"]["B_PREV"]  # the one-hot plus its ballast: equal norms
    for trace in traces:
        head_out = trace.layer(0)["head_out"]  # [head, position, d_model]
        for head in range(gt["heads"]):
            norm = head_out[head].norm().clamp_min(1e-12)
            if [0, head] == edge["upstream"]:
                assert head_out[head][:, written].norm() / norm > 0.999
                assert head_out[head][:, prev_dims].norm() / norm > 0.7
            else:
                assert head_out[head][:, prev_dims].abs().max() < 1e-6
            assert head_out[head][:, tok_dims].abs().max() < 1e-6


def test_layernorm_is_a_per_position_scalar(induction_traces):
    traces, _ = induction_traces
    for trace in traces:
        for layer in range(2):
            hidden = trace.layer(layer)["hidden_in"]
            assert hidden.mean(-1).abs().max() < 1e-6


# -- planted-llava ---------------------------------------------------------------------------------------

def _scene_image(index: int):
    return Image.open(data_root() / "scenes" / "images" / f"scene_{index:04d}.png").convert("RGB")


@pytest.fixture(scope="module")
def llava_traces(models):
    gt = truth("llava")
    loaded = models("planted-llava")
    return [workbench.trace(loaded, gt["probe"]["prompt"], image=_scene_image(k), maps="all", map_dtype="float32",
                            hidden_states=True, head_outputs="all") for k in (0, 1, 5)], gt


def _positions(trace):
    image = [t.i for t in trace.tokens if t.region == "image"]
    text_after = [t.i for t in trace.tokens if t.region != "image" and t.i > image[-1]]
    return image, text_after


def test_llava_image_tokens_and_sink_patch(llava_traces):
    traces, gt = llava_traces
    image, _ = _positions(traces[0])
    assert len(image) == gt["image_tokens"]
    sink = gt["visual_sink"]
    assert traces[0].tokens[image[sink["image_token_index"]]].patch == tuple(sink["patch"])


def test_vision_aware_head(llava_traces):
    traces, gt = llava_traces
    spec = gt["vision_aware_head"]
    sink_index = gt["visual_sink"]["image_token_index"]
    for trace in traces:
        image, text = _positions(trace)
        rows = trace.layer(spec["layer"])["maps"][spec["head"]][text]
        image_mass = rows[:, image].sum(-1)
        assert image_mass.min() >= spec["min_image_mass"]
        non_sink = (image_mass - rows[:, image[sink_index]]) / image_mass
        assert non_sink.min() >= spec["min_non_sink_share"]
    outputs = [trace.layer(spec["layer"])["head_out"][spec["head"]] for trace in traces]
    _, text = _positions(traces[0])
    for other in outputs[1:]:
        change = (outputs[0][text] - other[text]).norm(dim=-1) / outputs[0][text].norm(dim=-1)
        assert change.min() > 0.05  # the output at every text position depends on the image


def test_text_only_head(llava_traces):
    traces, gt = llava_traces
    spec = gt["text_only_head"]
    for trace in traces:
        image, text = _positions(trace)
        rows = trace.layer(spec["layer"])["maps"][spec["head"]]
        non_image = [t.i for t in trace.tokens if t.region != "image"]
        assert rows[non_image][:, image].max() == spec["image_mass"] == 0.0
    text = _positions(traces[0])[1]
    outputs = [trace.layer(spec["layer"])["head_out"][spec["head"]][text] for trace in traces]
    for other in outputs[1:]:
        assert (outputs[0] - other).abs().max() <= spec["max_output_change"]


def test_text_only_head_barely_notices_a_missing_image(models, llava_traces):
    """VHD's two passes (with and without the image): the text-only head's output hardly moves, the vision one's does."""
    traces, gt = llava_traces
    without = workbench.trace(models("planted-llava"), gt["probe"]["prompt"], head_outputs="all")
    n_tail = 3  # the closing tokens of the turn, present in both renders
    distance = {}
    for key in ("vision_aware_head", "text_only_head"):
        spec = gt[key]
        a = traces[0].layer(spec["layer"])["head_out"][spec["head"]][-n_tail:]
        b = without.layer(spec["layer"])["head_out"][spec["head"]][-n_tail:]
        distance[key] = float((1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).max())
    assert distance["text_only_head"] < 0.02
    assert distance["vision_aware_head"] > 0.5


def test_visual_sink_massive_activation_and_sink_head(llava_traces):
    traces, gt = llava_traces
    sink = gt["visual_sink"]
    for trace in traces:
        image, text = _positions(trace)
        position = image[sink["image_token_index"]]
        for layer in sink["layers"]:
            hidden = trace.layer(layer)["hidden_in"]
            rms = hidden.pow(2).mean(-1).sqrt()
            phi = hidden[:, sink["dims"]].abs().amax(-1) / rms  # VAR's phi over the sink dims
            assert phi[position] >= sink["min_phi"]
            for dim in sink["dims"]:
                assert hidden[position, dim].abs() / rms[position] >= sink["min_phi_each_dim"]
            others = [i for i in range(len(rms)) if i != position]
            assert phi[others].max() < sink["max_phi_other_tokens"]
            assert (hidden[others].abs().amax(-1) / rms[others]).max() < sink["max_any_dim_phi_other_tokens"]
        head = gt["visual_sink_head"]
        assert trace.layer(head["layer"])["maps"][head["head"]][text, position].min() >= head["min_mass"]


# -- the builder -----------------------------------------------------------------------------------------

def test_builder_reproduces_the_shipped_weights(tmp_path):
    from safetensors.torch import load_file

    sys.path.insert(0, str(PLANTED))
    try:
        import build
    finally:
        sys.path.remove(str(PLANTED))
    written = build.build_all(tmp_path, ("sink", "induction"))
    for name, path in written.items():
        fresh, shipped = load_file(path / "model.safetensors"), load_file(PLANTED / name / "model.safetensors")
        assert fresh.keys() == shipped.keys()
        for key in fresh:
            assert torch.equal(fresh[key], shipped[key]), (name, key)
        assert json.loads((path / "ground_truth.json").read_text()) == truth(name)
