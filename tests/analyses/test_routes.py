"""Information-flow routes against a naive full-tensor implementation built from HF eager attention.

The reference computation below never touches the workbench capture: attention maps come from transformers'
eager path (output_attentions), values, residuals and block outputs from forward hooks on the model's own
modules, W_O from its weights. It builds the [n, n, H, d_model] decomposition the reference tool builds,
the full graph, and the routes by depth-first search, as llm-transparency-tool does.
"""

from __future__ import annotations

import json
import subprocess
import sys

import networkx as nx
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import workbench
from workbench.analyses import routes
from workbench.capture.inputs import prepare_input
from workbench.cli.routes_command import parse_position
from workbench.errors import InputError
from workbench.models.registry import data_root
from workbench.traces.tokens import Token
from workbench.traces.trace import MemoryTensors, Trace

EPS = 1e-5


# ------------------------------------------------------------------------------------- the naive reference
def _blocks(model):
    """(layers, parts(layer) -> (attention, pre-attention norm, value(x) -> [n, kv_head, d_head],
    W_O [d_model, head, d_head], b_O))."""
    if hasattr(model, "transformer"):  # GPT-2
        def parts(layer):
            d = layer.attn.c_proj.weight.shape[1]
            heads = layer.attn.num_heads
            value = lambda x: layer.attn.c_attn(x)[..., 2 * d:].reshape(x.shape[0], heads, -1)
            w_o = layer.attn.c_proj.weight.T.reshape(d, heads, -1)
            return layer.attn, layer.ln_1, value, w_o, layer.attn.c_proj.bias
        return list(model.transformer.h), parts
    language = model.model.language_model if hasattr(model.model, "language_model") else model.model

    def parts(layer):
        attention = layer.self_attn
        kv = attention.config.num_key_value_heads
        value = lambda x: attention.v_proj(x).reshape(x.shape[0], kv, -1)
        weight = attention.o_proj.weight
        w_o = weight.reshape(weight.shape[0], attention.config.num_attention_heads, -1)
        bias = attention.o_proj.bias if attention.o_proj.bias is not None else torch.zeros(w_o.shape[0])
        return attention, layer.input_layernorm, value, w_o, bias
    return list(language.layers), parts


def eager_layers(loaded, inputs) -> list[dict]:
    """Per layer, from HF eager + hooks: maps, values, W_O, b_O, residuals before attention and after the
    layer, the attention block's output."""
    model = loaded.model
    layers, parts = _blocks(model)
    captured = [{} for _ in layers]
    handles = []
    for index, layer in enumerate(layers):
        attention, norm, value, w_o, bias = parts(layer)
        store = captured[index]
        store.update(value=value, w_o=w_o.detach().double(), b_o=bias.detach().double())
        handles.append(layer.register_forward_pre_hook(
            lambda m, a, k, s=store: s.__setitem__("pre", (a[0] if a else k["hidden_states"])[0].double()),
            with_kwargs=True))
        handles.append(norm.register_forward_hook(lambda m, a, o, s=store: s.__setitem__("normed", o[0])))
        handles.append(attention.register_forward_hook(
            lambda m, a, o, s=store: s.__setitem__("attn", o[0][0].double())))
        handles.append(layer.register_forward_hook(
            lambda m, a, o, s=store: s.__setitem__("post", (o[0] if isinstance(o, tuple) else o)[0].double()),
        ))
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            output = model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
        for handle in handles:
            handle.remove()
    for index, store in enumerate(captured):
        with torch.no_grad():
            store["v"] = store.pop("value")(store.pop("normed")).double()
        store["maps"] = output.attentions[index][0].double()
    return captured


def naive_graph(layers: list[dict], *, threshold: float, renormalise: bool, bias: str = "share",
                padding: bool = False) -> nx.DiGraph:
    """The reference tool's full graph from the full [query, key, head, d_model] decomposition, in float64."""
    graph = nx.DiGraph()

    def add(u, v, w):
        if graph.has_edge(u, v):
            graph[u][v]["weight"] += w
        else:
            graph.add_edge(u, v, weight=w)

    def contributions(parts, whole):  # parts [..., n, d], whole [n, d]
        return (whole.abs().sum(-1) - (parts - whole).abs().sum(-1)).clamp_min(EPS)

    def threshold_renormalise(blocks, residual):
        blocks, residual = blocks * (blocks > threshold), residual * (residual > threshold)
        total = (blocks.sum((0, 1)) if blocks.dim() == 3 else blocks) + residual
        total = torch.where(total > 0, total, torch.ones_like(total))
        return blocks / total, residual / total

    for index, layer in enumerate(layers):
        maps, v, w_o, b_o = layer["maps"], layer["v"], layer["w_o"], layer["b_o"]
        n, heads = maps.shape[-1], maps.shape[0]
        v = v.repeat_interleave(heads // v.shape[1], 1)  # [n, head, d_head]
        value_out = torch.einsum("jhe,dhe->jhd", v, w_o) + (b_o / heads if bias == "share" else 0)
        decomposed = torch.einsum("hij,jhd->jhid", maps, value_out)  # [key, head, query, d_model]: O(n^2 H d)
        pre, mid, post = layer["pre"], layer["pre"] + layer["attn"], layer["post"]
        parts = contributions(decomposed, mid)  # [key, head, query]
        visible = torch.arange(n)[:, None, None] <= torch.arange(n)[None, None, :]
        if not padding:
            parts = torch.where(visible, parts, torch.zeros_like(parts))
        residual = contributions(pre, mid)
        total = parts.sum((0, 1)) + residual
        parts, residual = parts / total, residual / total
        if renormalise:
            parts, residual = threshold_renormalise(parts, residual)
        ffn = contributions(post - mid, post)
        kept = contributions(mid, post)
        ffn, kept = ffn / (ffn + kept), kept / (ffn + kept)
        if renormalise:
            ffn, kept = threshold_renormalise(ffn, kept)
        source = (lambda j: f"I{index - 1}_{j}") if index else (lambda j: f"X0_{j}")
        for i in range(n):
            for j in range(n):
                add(source(j), f"A{index}_{i}", float(parts[j, :, i].sum()))
            add(source(i), f"A{index}_{i}", float(residual[i]))
            add(f"A{index}_{i}", f"M{index}_{i}", float(ffn[i]))
            add(f"M{index}_{i}", f"I{index}_{i}", float(ffn[i]))
            add(f"A{index}_{i}", f"I{index}_{i}", float(kept[i]))
    return graph


def naive_route(graph: nx.DiGraph, output: str, cut: float) -> nx.DiGraph:
    """build_paths_to_predictions: depth-first over reversed edges with weight > cut."""
    reverse = graph.reverse()
    search = nx.subgraph_view(reverse, filter_edge=lambda u, v: reverse[u][v]["weight"] > cut)
    return search.edge_subgraph(nx.edge_dfs(search, source=output)).reverse()


def assert_same_route(route, expected: nx.DiGraph, tolerance: float = 1e-5):
    got = set(route.graph.edges())
    want = set(expected.edges())
    assert got == want, f"only in routes: {sorted(got - want)[:5]}, only in naive: {sorted(want - got)[:5]}"
    errors = [abs(route.graph[u][v]["weight"] - expected[u][v]["weight"]) for u, v in got]
    assert max(errors, default=0.0) <= tolerance, f"max weight error {max(errors):.3g}"


def _inputs(loaded, trace):
    prepared = prepare_input(loaded, trace.meta["inputs"]["prompt"], raw=trace.meta["inputs"]["raw"])
    return {"input_ids": torch.tensor([[t.id for t in trace.tokens]]), **prepared.model_inputs}


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_routes_equal_naive_full_tensor_computation(models, name):
    loaded = models(name)
    trace = workbench.trace(loaded, "The cat sat on the mat. The cat sat", raw=True, decomposition=True)
    layers = eager_layers(loaded, _inputs(loaded, trace))
    n, last = len(trace.tokens), trace.n_layers() - 1
    cases = [{"threshold": 0.04, "renormalise": True}, {"threshold": 0.02, "renormalise": False},
             {"threshold": 0.04, "renormalise": True, "bias": "exclude"},
             {"threshold": 0.01, "renormalise": False, "padding": True}]
    for case in cases:
        padding = case.pop("padding", False)
        expected = naive_graph(layers, padding=padding, **case)
        result = routes.analyse(trace, position=[-1, n // 2], reference_padding=padding, head_types=False,
                                chunk=3, **case)
        for route in result.routes:
            reference = naive_route(expected, f"I{last}_{route.position}", 0.0 if case["renormalise"] else
                                    case["threshold"])
            assert reference.number_of_edges() > 3
            assert_same_route(route, reference)
        assert result.stats["max_rebuild_error"] < 1e-5
        assert result.stats["pruned_fraction"] > 0.5  # the bound spared most parts the full-width distance


def test_llava_routes_reach_image_tokens(models, tmp_path):
    from PIL import Image

    loaded = models("tiny-llava")
    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    trace = workbench.trace(loaded, "What is in the image?", image, max_new_tokens=2, decomposition=True)
    regions = [token.region for token in trace.tokens]
    assert "image" in regions
    prepared = prepare_input(loaded, "What is in the image?", image)
    inputs = {"input_ids": prepared.input_ids, **prepared.model_inputs}
    layers = eager_layers(loaded, inputs)
    n = prepared.input_ids.shape[1]
    result = routes.analyse(trace, position=n - 1, threshold=0.005, renormalise=False, head_types=False)
    expected = naive_graph(layers, threshold=0.005, renormalise=False)
    assert_same_route(result.routes[0], naive_route(expected, f"I{trace.n_layers() - 1}_{n - 1}", 0.005))
    sources = {data["region"] for _, data in result.routes[0].graph.nodes(data=True)}
    assert "image" in sources


class PeakBytes(TorchDispatchMode):
    """Peak bytes of new tensor storages created while active (views of existing storage are not new)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.owned: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref

        known = {t.untyped_storage().data_ptr() for t in (*args, *(kwargs or {}).values())
                 if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for tensor in (out if isinstance(out, (tuple, list)) else [out]):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            pointer, size = storage.data_ptr(), storage.nbytes()
            if size and pointer not in self.owned and pointer not in known:
                self.owned[pointer] = size
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._free, pointer)
        return out

    def _free(self, pointer):
        self.live -= self.owned.pop(pointer, 0)


def test_working_set_is_far_below_the_full_tensor(models):
    loaded = models("tiny-llama")
    trace = workbench.trace(loaded, "word " * 25, raw=True, decomposition=True)
    n, heads, d_model = len(trace.tokens), trace.n_heads(), 96
    full = n * n * heads * d_model * 4  # one layer's [n, n, H, d_model] fp32 tensor
    with PeakBytes() as probe:
        result = routes.analyse(trace, position="all", threshold=0.04, head_types=False, chunk=8)
    assert len(result.routes) == n
    assert probe.peak < full / 8, f"peak {probe.peak / 1e6:.1f} MB vs full tensor {full / 1e6:.1f} MB"


def _gold(loaded, trace):
    """Pattern scores straight from HF eager maps (independent of the workbench's rebuilt rows)."""
    maps = [layer["maps"] for layer in eager_layers(loaded, _inputs(loaded, trace))]
    ids = [t.id for t in trace.tokens]
    n = len(ids)
    previous = torch.stack([m[:, torch.arange(1, n), torch.arange(n - 1)].mean(-1) for m in maps])
    rows = [(i, [j for j in range(1, i) if ids[j - 1] == ids[i]]) for i in range(1, n)]
    rows = [(i, keys) for i, keys in rows if keys]
    induction = torch.stack([torch.stack([m[:, i, keys].sum(-1) for i, keys in rows]).mean(0) for m in maps])
    return previous, induction


def test_planted_heads_are_typed_and_carry_the_route(models):
    loaded = models("planted-induction")
    truth = json.loads((data_root() / "models/planted/induction/ground_truth.json").read_text())
    planted = truth["heads_planted"]
    trace = workbench.trace(loaded, truth["probe"]["sequences"][0], raw=True, decomposition=True)
    result = routes.analyse(trace, position=list(range(14, 24)), threshold=0.04)
    previous, induction = _gold(loaded, trace)
    scores = result.head_patterns.scores
    assert torch.allclose(torch.tensor(scores["previous_token"]).double(), previous, atol=1e-5)
    assert torch.allclose(torch.tensor(scores["induction"]).double(), induction, atol=1e-5)
    prev_head = (planted["previous_token"]["layer"], planted["previous_token"]["head"])
    ind_head = (planted["induction"]["layer"], planted["induction"]["head"])
    assert result.head_patterns.types() == {prev_head: ("previous_token",), ind_head: ("induction",)}
    assert scores["subword_merging"] is None  # letters separated by spaces: no word continues
    usage = result.head_usage["routes"]
    assert usage[ind_head[0]][ind_head[1]] == len(result.routes)  # every second-copy prediction uses both
    assert usage[prev_head[0]][prev_head[1]] == len(result.routes)
    for route in result.routes:  # the induction edge reads the token after the earlier occurrence
        earlier = route.position - truth["probe"]["period"] + 1
        assert route.graph.has_edge(f"I0_{earlier}", f"A1_{route.position}")


def test_subword_merging_recognised_on_a_synthetic_pattern():
    # "un" "believ" "able" " and" " ok" " re" "do": head 0 attends to the first piece of its own word
    # (word-initial rows to themselves), head 1 to the previous token everywhere (not subword-merging).
    pieces = ["un", "believ", "able", " and", " ok", " re", "do"]
    n = len(pieces)
    tokens = [Token(i, 10 + i, piece, "prompt") for i, piece in enumerate(pieces)]
    word = [0, 0, 0, 3, 4, 5, 5]
    query, key = torch.zeros(2, n, n), torch.eye(n)[None].repeat(2, 1, 1)
    for i in range(n):
        query[0, i, min(i, word[i])] = 30.0  # continuation -> its word's first piece
        query[1, i, max(i - 1, 0)] = 30.0
    tensors = {"layer_00.query": (query, ("head", "query_pos", "d_head")),
               "layer_00.key": (key, ("kv_head", "key_pos", "d_head"))}
    meta = {"model": {"name": "synthetic"}, "inputs": {"text": "".join(pieces)}, "generation": {},
            "dims": {"stacks": {"text": {"layers": 1, "heads": 2}}}}
    trace = Trace(meta=meta, tokens=tokens, tensors=MemoryTensors(tensors))
    patterns = routes.head_patterns(trace)
    assert patterns.rows["subword_merging"] == 3  # believ, able, do
    assert patterns.types() == {(0, 0): ("subword_merging",), (0, 1): ("previous_token",)}


def test_result_json_round_trips_through_the_bundle(models, tmp_path):
    loaded = models("tiny-gpt2")
    trace = workbench.trace(loaded, "abc abc abc", raw=True, max_new_tokens=3, decomposition=True)
    path = trace.save(tmp_path / "t.wbtrace")
    bundle = workbench.load(path)
    result = routes.analyse(bundle, position="generated", threshold=0.04)
    generation = trace.generation
    assert [r.position for r in result.routes] == list(range(generation["start"] - 1, generation["end"] - 1))
    bundle.add_result("routes", result.to_json())
    stored = workbench.load(path).results["routes"]
    for route, data in zip(result.routes, stored["routes"]):
        graph = nx.node_link_graph(data["graph"], edges="edges")
        assert set(graph.edges()) == set(route.graph.edges())
        for node, data in graph.nodes(data=True):
            assert data["token"] == trace.tokens[data["position"]].text, node


def test_user_errors(models):
    loaded = models("tiny-gpt2")
    plain = workbench.trace(loaded, "abc", raw=True)
    with pytest.raises(InputError, match="--decomposition"):
        routes.analyse(plain)
    traced = workbench.trace(loaded, "abc", raw=True, decomposition=True)
    with pytest.raises(InputError, match="outside"):
        routes.analyse(traced, position=50)
    with pytest.raises(InputError, match="threshold"):
        routes.analyse(traced, threshold=1.5)
    with pytest.raises(InputError, match="encoder"):
        workbench.trace(models("tiny-bert"), "abc", decomposition=True)


def test_cli_routes_and_circuits_on_a_bundle(models, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "workbench.cli.main", *map(str, args)],
                              check=False, capture_output=True, text=True, timeout=300)

    bundle = workbench.trace(models("planted-induction"), "f x r c e l f x r c e l", raw=True,
                             decomposition=True).save(tmp_path / "p.wbtrace")
    result = run("routes", bundle, "--position", "-1", "--threshold", "0.04", "--json", "-")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["routes"][0]["position"] == 12 and (bundle / "results" / "routes.json").is_file()
    result = run("circuits", bundle, "--firing-threshold", "0.5", "--coverage", "0.7")
    assert result.returncode == 0, result.stderr
    assert "L1H2" in result.stdout and "L0H3 K" in result.stdout
    assert json.loads((bundle / "results" / "circuits.json").read_text())["graph"]["edges"]
    with pytest.raises(InputError, match="--position"):
        parse_position("x")
    assert parse_position("3,7") == [3, 7] and parse_position("-1") == -1


@pytest.mark.slow
def test_smollm2_routes_equal_naive(models):
    loaded = models("smollm2")
    trace = workbench.trace(loaded, "The capital of France is Paris. The capital of Italy is", raw=True,
                            decomposition=True)
    layers = eager_layers(loaded, _inputs(loaded, trace))
    result = routes.analyse(trace, position=-1, threshold=0.04, head_types=False)
    expected = naive_route(naive_graph(layers, threshold=0.04, renormalise=True),
                           f"I{trace.n_layers() - 1}_{len(trace.tokens) - 1}", 0.0)
    assert expected.number_of_edges() > 10
    assert_same_route(result.routes[0], expected)
    assert result.stats["pruned_fraction"] > 0.5
