"""The sinks analysis' conventions against the papers' reference code, each computed here from its definition on
HF eager attention (never from the workbench's own statistics):

- Gu et al. (sail-sg/Attention-Sink, compute_attention_sink): alpha and Sink^eps from the prompt forward only,
  alpha_k = sum_i A_ik / (n - k) over the prompt's n rows; `query_rows="all"` adds the generated rows.
- ACT hidden sinks: the paper's alpha > factor / n rule (default) and the released script's alpha > 0.1.
- VAR (MICV-yonsei/VisAttnSink, logic.py DimProspector / HeadFork): visual sinks from layer 2 on, heads forked only
  in layers with a visual sink; `var_layers="all"` scores every layer.
"""

from __future__ import annotations

import json

import pytest
import torch

import workbench
from tests.helpers import eager_forward
from tests.workbench.cli.cli_inprocess import run_cli
from workbench.analyses import sinks
from workbench.errors import InputError
from workbench.interventions import effective_min_queries
from workbench.models.registry import data_root

PLANTED = data_root() / "models" / "planted"
SCENES = data_root() / "scenes" / "images"
NEW_TOKENS = 4


def truth(name: str) -> dict:
    path = PLANTED / name / "ground_truth.json"
    if not path.exists():
        pytest.skip(f"{path} is missing: build it with python data/models/planted/build.py")
    return json.loads(path.read_text())


def reference_alpha(model, ids: torch.Tensor) -> torch.Tensor:
    """compute_attention_sink's importance scores [layer, head, key_pos]: one eager forward over `ids`,
    sum over query rows of A_ik / (n - k)."""
    maps = torch.stack([a[0].double() for a in eager_forward(model, input_ids=ids).attentions])
    n = maps.shape[-1]
    return (maps / torch.arange(n, 0, -1, dtype=torch.float64)).sum(-2)


def sink_rate(alpha: torch.Tensor, eps: float = 0.3) -> torch.Tensor:
    return 100 * (alpha > eps).double().mean((0, 1))


# -- item 1: Gu alpha on the prompt rows ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generated_sink(models):
    gt = truth("sink")
    loaded = models("planted-sink")
    return loaded, workbench.trace(loaded, gt["probe"]["prompt"], max_new_tokens=NEW_TOKENS)


def test_default_alpha_is_the_prompt_forward(generated_sink):
    loaded, trace = generated_sink
    start = trace.generation["start"]
    assert trace.generation["end"] - start == NEW_TOKENS
    ids = torch.tensor([[t.id for t in trace.tokens]])
    prompt_only = reference_alpha(loaded.model, ids[:, :start])
    result = sinks.analyse(trace)
    assert result.options["query_rows"] == "prompt" and result.options["keys"] == start
    assert result.alpha.shape[-1] == start
    assert (result.alpha.double() - prompt_only).abs().max() < 1e-5
    assert (result.sink_percent.double() - sink_rate(prompt_only)).abs().max() <= 1e-4
    data = result.to_json()
    assert data["options"]["query_rows"] == "prompt" and len(data["sink_percent"]) == start


def test_all_rows_by_name_include_the_generated_rows(generated_sink):
    loaded, trace = generated_sink
    ids = torch.tensor([[t.id for t in trace.tokens]])
    everything = reference_alpha(loaded.model, ids)  # one forward over prompt + generated = the cached generation
    result = sinks.analyse(trace, query_rows="all")
    assert result.options["query_rows"] == "all" and result.alpha.shape[-1] == ids.shape[1]
    assert (result.alpha.double() - everything).abs().max() < 1e-5
    # The two conventions differ on this trace, so the comparisons above can tell them apart.
    start = trace.generation["start"]
    assert (everything[..., :start] - reference_alpha(loaded.model, ids[:, :start])).abs().max() > 1e-3


def test_prompt_rows_on_a_gpt2_with_biases_and_through_a_single_forward():
    """GPT-2 shape with non-zero biases (LayerNorm, q/k/v, MLP); and the nnsight backend, whose one forward over the
    whole sequence mixes prompt and generated rows in every attention call."""
    nnsight = pytest.importorskip("nnsight")
    from workbench.capture import Tracer

    torch.manual_seed(0)
    loaded = workbench.load_model("tiny-gpt2")
    with torch.no_grad():
        for name, parameter in loaded.model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.5)
    prompt = "The red square is next to the blue"
    hf = workbench.trace(loaded, prompt, max_new_tokens=NEW_TOKENS)
    single = Tracer.open(nnsight.NNsight(loaded.model), backend="nnsight", tokenizer=loaded.tokenizer).trace(
        prompt, max_new_tokens=NEW_TOKENS)
    ids = torch.tensor([[t.id for t in hf.tokens]])
    start = hf.generation["start"]
    expected = reference_alpha(loaded.model, ids[:, :start])
    for trace in (hf, single):
        assert [t.id for t in trace.tokens] == ids[0].tolist()
        assert (sinks.analyse(trace).alpha.double() - expected).abs().max() < 1e-5
        assert (sinks.analyse(trace, query_rows="all").alpha.double() - reference_alpha(loaded.model, ids)
                ).abs().max() < 1e-5


def test_old_bundle_without_prompt_statistics_says_what_to_do(generated_sink, tmp_path):
    from workbench.traces.trace import MemoryTensors, Trace

    _, trace = generated_sink
    # what a bundle written before the prompt statistics holds: everything but prompt_key_mass / prompt_key_count
    kept = {name: (trace.tensor(name), trace.axes(name)) for name in trace.tensor_names()
            if not name.rpartition(".")[2].startswith("prompt_key_")}
    Trace(meta=trace.meta, tokens=trace.tokens, tensors=MemoryTensors(kept)).save(tmp_path / "old.wbtrace")
    assert not any("prompt_key" in name for name in workbench.load(tmp_path / "old.wbtrace").tensor_names())
    old = workbench.load(tmp_path / "old.wbtrace")
    with pytest.raises(InputError, match="--query-rows all"):
        sinks.analyse(old)
    assert sinks.analyse(old, query_rows="all").options["query_rows"] == "all"
    code, _, err = run_cli("sinks", tmp_path / "old.wbtrace", "--no-store")
    assert code == 2 and err.startswith("error: ") and "--query-rows all" in err


def test_cli_names_the_rows_and_refuses_unknown_conventions(generated_sink, tmp_path):
    _, trace = generated_sink
    trace.save(tmp_path / "t.wbtrace")
    code, out, err = run_cli("sinks", tmp_path / "t.wbtrace", "--no-store", "--query-rows", "all", "--json", "-")
    assert code == 0, err
    assert json.loads(out)["options"]["query_rows"] == "all"
    code, out, err = run_cli("sinks", tmp_path / "t.wbtrace", "--no-store")
    assert code == 0 and "alpha over prompt query rows" in " ".join(out.split())
    for option, value in (("--query-rows", "generated"), ("--hidden-rule", "both"), ("--var-layers", "some")):
        code, out, err = run_cli("sinks", tmp_path / "t.wbtrace", "--no-store", option, value)
        assert code == 2 and err.startswith("error: ") and option in err and len(err.strip().splitlines()) == 1


def test_app_labels_say_which_rows(generated_sink):
    _, trace = generated_sink
    for rows in ("prompt", "all"):
        stored = sinks.SinksResult.from_json(json.loads(json.dumps(sinks.analyse(trace, query_rows=rows).to_json())))
        metrics = stored.head_metrics()
        assert f"({rows} rows)" in metrics["top_alpha"].label and f"{rows} rows" in metrics["hidden_sinks"].description


# -- item 5: ACT hidden sinks, relative by default ------------------------------------------------------------------

def reference_hidden(alpha: torch.Tensor, limit: float, min_queries: int = 16) -> set:
    """(layer, head, key) with alpha > limit, key != 0, seen by enough query rows (causal: n - k rows)."""
    n = alpha.shape[-1]
    seen = torch.arange(n, 0, -1) >= effective_min_queries(min_queries, n)
    hits = (alpha > limit) & seen
    hits[..., 0] = False
    return {tuple(index) for index in hits.nonzero().tolist()}


def test_hidden_sink_rules_against_eager_maps(models):
    gt = truth("sink")
    loaded = models("planted-sink")
    trace = workbench.trace(loaded, gt["probe"]["prompt"])
    alpha = reference_alpha(loaded.model, torch.tensor([[t.id for t in trace.tokens]]))
    n = alpha.shape[-1]
    result = sinks.analyse(trace)
    assert result.hidden_sinks["rule"] == "relative" and result.options["hidden_rule"] == "relative"
    def found(rule):
        return {(e["layer"], e["head"], e["key"]) for e in result.hidden_sinks[rule]}

    assert found("relative") == reference_hidden(alpha, 5 / n)
    assert found("absolute") == reference_hidden(alpha, 0.1)
    assert {(e["layer"], e["head"]) for e in result.hidden_sinks["relative"]} == set(result.hidden_sinks["heads"])
    absolute = sinks.analyse(trace, hidden_rule="absolute")
    assert absolute.hidden_sinks["heads"] == [(2, 2)]  # the released script's rule: exactly the planted head


@pytest.mark.slow
def test_relative_rule_is_not_degenerate_on_a_short_smollm2_prompt(models):
    """12 tokens: the absolute 0.1 rule flags most early keys in most heads (a near-uniform head's alpha of an
    early key is ~(H_n - H_k) / (n - k) > 0.1); the relative rule flags a few."""
    loaded = models("smollm2")
    trace = workbench.trace(loaded, "The old lighthouse stood at the edge of the", raw=True)
    alpha = reference_alpha(loaded.model, torch.tensor([[t.id for t in trace.tokens]]))
    n = alpha.shape[-1]
    result = sinks.analyse(trace)
    relative = {(e["layer"], e["head"], e["key"]) for e in result.hidden_sinks["relative"]}
    absolute = {(e["layer"], e["head"], e["key"]) for e in result.hidden_sinks["absolute"]}
    assert relative == reference_hidden(alpha, 5 / n) and absolute == reference_hidden(alpha, 0.1)
    heads = alpha.shape[0] * alpha.shape[1]
    assert len({(l, h) for l, h, _ in absolute}) > heads / 2
    assert len({(l, h) for l, h, _ in relative}) < heads / 4


# -- item 4: VAR layers ---------------------------------------------------------------------------------------------

def reference_image_centric(loaded, prepared, dims, *, tau=20.0, rho=0.5, summ=0.2, first_layer=2,
                            need_visual_sink=True) -> dict:
    """{(layer, head): share of text rows after the image where the head is image-centric}, from eager maps and
    the hidden states entering each layer: phi = max_d |x_d| / RMS(x) over the sink dims (DimProspector),
    visual sinks = image tokens with phi > tau; a head row is image-centric when its image attention >= summ
    and the sink share of it <= 1 - rho (HeadFork's code rho)."""
    out = eager_forward(loaded.model, input_ids=prepared.input_ids, **prepared.model_inputs)
    image = [t.i for t in prepared.tokens if t.region == "image"]
    rows = list(range(max(image) + 1, len(prepared.tokens)))
    shares = {}
    for layer, maps in enumerate(out.attentions):
        hidden = out.hidden_states[layer][0].double()
        phi = (hidden[:, list(dims)].abs() / hidden.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()).amax(-1)
        visual = [p for p in image if phi[p] > tau] if layer >= first_layer else []
        forked = layer >= first_layer and (bool(visual) or not need_visual_sink)
        for head in range(maps.shape[1]):
            attention = maps[0, head].double()[rows]
            image_mass = attention[:, image].sum(-1)
            sink_share = attention[:, visual].sum(-1) / image_mass
            centric = (image_mass >= summ) & (sink_share <= 1 - rho) & forked
            shares[(layer, head)] = float(centric.double().mean())
    return shares


@pytest.mark.parametrize("var_layers", ["reference", "all"])
def test_image_centric_heads_follow_the_reference_layers(models, var_layers):
    from workbench.capture.inputs import prepare_input

    gt = truth("llava")
    loaded = models("planted-llava")
    scene = SCENES / "scene_0000.png"
    trace = workbench.trace(loaded, gt["probe"]["prompt"], scene, hidden_states=True, maps="all",
                            map_dtype="float32")
    result = sinks.analyse(trace, var_layers=var_layers)
    first = 2 if var_layers == "reference" else 0
    expected = reference_image_centric(loaded, prepare_input(loaded, gt["probe"]["prompt"], scene),
                                       gt["visual_sink"]["dims"], first_layer=first,
                                       need_visual_sink=var_layers == "reference")
    centric = result.image_centric
    assert centric["layers"] == var_layers and result.options["var_layers"] == var_layers
    assert "maps" in centric["sources"] and "top_k (lower bound)" not in centric["sources"]
    got = {(h["layer"], h["head"]): h["centric_rows"] for h in centric["heads"]}
    assert max(abs(got[key] - value) for key, value in expected.items()) < 1e-4
    listed = {tuple(pair) for pair in centric["image_centric"]}
    assert listed == {key for key, value in expected.items() if value >= 0.5}
    aware = (gt["vision_aware_head"]["layer"], gt["vision_aware_head"]["head"])
    assert (aware in listed) == (var_layers == "all")  # layer 0: no visual sink is searched there by the reference
    assert result.visual_sinks["first_layer"] == first
    assert all(layer >= first for layer in result.sink_dims["layers_searched"])


def test_var_intervention_defaults_on_the_three_layer_planted_llava(models):
    """The defaults (from layer 2, never the last layer) leave nothing to edit in a 3-layer model: the docs'
    planted-llava example names except_last_layer=false, which edits layer 2, where the visual sink is."""
    from workbench.capture.inputs import prepare_input
    from workbench.capture.layout import discover_layout
    from workbench.interventions import intervening, parse

    gt = truth("llava")
    loaded = models("planted-llava")
    prepared = prepare_input(loaded, gt["probe"]["prompt"], SCENES / "scene_0000.png")
    image = [t.i for t in prepared.tokens if t.region == "image"]
    moved = {}
    for text in ("var:dims=2,3", "var:dims=2,3,except_last_layer=false"):
        runtime = parse(text).start(discover_layout(loaded.model), image_positions=image)
        with torch.no_grad(), intervening(loaded.model, runtime):
            loaded.model(input_ids=prepared.input_ids, **prepared.model_inputs)
        moved[text] = runtime.report()
    assert moved["var:dims=2,3"]["rows_changed"] == 0
    assert moved["var:dims=2,3,except_last_layer=false"]["rows_changed"] > 0
