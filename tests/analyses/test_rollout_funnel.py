"""Attention rollout / flow and the PyramidKV funnel against independent computations.

References: rollout and flow as the released code of Abnar & Zuidema (samiraabnar/attention_flow) defines them,
rewritten here in numpy / networkx from HF eager maps (output_attentions); a flow graph small enough to solve by
hand; funnels built from planted maps whose spread falls (or rises) with depth.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import networkx as nx
import numpy as np
import pytest
import torch

import workbench
from tests.helpers import eager_forward, statistics_from_maps
from workbench.analyses import funnel, rollout
from workbench.analyses.registry import read_result
from workbench.capture import Tracer
from workbench.errors import InputError
from workbench.traces.tokens import Token
from workbench.traces.trace import MemoryTensors, Trace

PROMPT = "The cat sat on the mat. The cat sat"


def eager_maps(loaded, trace) -> list[np.ndarray]:
    """[layer] -> [head, query, key] float64 maps of HF's eager attention over the bundle's tokens."""
    ids = torch.tensor([[token.id for token in trace.tokens]])
    output = eager_forward(loaded.model, input_ids=ids)
    return [layer[0].double().numpy() for layer in output.attentions]


def reference_joint_attention(maps: list[np.ndarray]) -> np.ndarray:
    """The released code's compute_joint_attention(add_residual=True) on head-mean maps: [layer, query, key]."""
    att = np.stack([m.mean(0) for m in maps])
    aug = att + np.eye(att.shape[1])[None]
    aug = aug / aug.sum(-1)[..., None]
    joint = np.zeros(aug.shape)
    joint[0] = aug[0]
    for i in range(1, len(aug)):
        joint[i] = aug[i] @ joint[i - 1]
    return joint


def reference_flow(maps: list[np.ndarray], position: int) -> np.ndarray:
    """The released code's get_adjmat + compute_flows for one output node, on the residual-augmented head-mean maps
    (node index layer * n + position, edges from a layer's node to the layer below, Edmonds-Karp)."""
    att = np.stack([m.mean(0) for m in maps])
    aug = att + np.eye(att.shape[1])[None]
    aug = aug / aug.sum(-1)[..., None]
    layers, n, _ = aug.shape
    graph = nx.DiGraph()
    for i in range(1, layers + 1):
        for k_from in range(n):
            for k_to in range(n):
                if aug[i - 1, k_from, k_to] > 0:
                    graph.add_edge(i * n + k_from, (i - 1) * n + k_to, capacity=aug[i - 1, k_from, k_to])
    source = layers * n + position
    values = np.array([nx.maximum_flow_value(graph, source, k, flow_func=nx.algorithms.flow.edmonds_karp)
                       for k in range(n)])
    return values / values.sum()


# ------------------------------------------------------------------------------------------------ rollout
@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_rollout_equals_released_code_on_eager_maps(models, name):
    loaded = models(name)
    tracer = Tracer.open(loaded)
    trace = workbench.trace(loaded, PROMPT, raw=True)  # statistics only: the maps are replayed
    maps = eager_maps(loaded, trace)
    joint = reference_joint_attention(maps)
    for position in (len(trace.tokens) - 1, 5):
        result = rollout.analyse(trace, position=position, tracer=tracer)
        assert result.maps == "recomputed"
        expected = joint[:, position]
        assert np.abs(result.relevance - expected[-1]).max() < 1e-6
        assert np.abs(result.per_layer - expected).max() < 1e-6
        assert abs(result.relevance.sum() - 1) < 1e-9


def test_rollout_of_stored_maps_equals_replayed(models):
    loaded = models("tiny-gpt2")
    stored = workbench.trace(loaded, PROMPT, raw=True, maps="all:all", map_dtype="float32")
    expected = reference_joint_attention(eager_maps(loaded, stored))[-1, -1]
    result = rollout.analyse(stored, position=-1)
    assert result.maps == "stored" and np.abs(result.relevance - expected).max() < 1e-6
    again = read_result("rollout", json.loads(json.dumps(result.to_json())))
    assert np.abs(again.relevance - result.relevance).max() < 1e-7
    assert again.token_values()["rollout"].as_dict()[0] == pytest.approx(result.relevance[0], abs=1e-7)


def test_vlm_rollout_lays_image_tokens_on_their_patches(models, tmp_path):
    from PIL import Image

    from workbench.capture.inputs import prepare_input

    loaded = models("tiny-llava")
    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    trace = workbench.trace(loaded, "What is in the image?", image)
    prepared = prepare_input(loaded, "What is in the image?", image)
    output = eager_forward(loaded.model, input_ids=prepared.input_ids, **prepared.model_inputs)
    expected = reference_joint_attention([layer[0].double().numpy() for layer in output.attentions])[-1, -1]
    result = rollout.analyse(trace, position=-1, tracer=Tracer.open(loaded))
    assert np.abs(result.relevance - expected).max() < 1e-6
    patches = [token for token in trace.tokens if token.region == "image"]
    assert len(patches) > 1 and np.isfinite(result.patch_grid).sum() == len(patches)
    for token in patches:
        assert result.patch_grid[token.patch] == pytest.approx(expected[token.i], abs=1e-6)


# ------------------------------------------------------------------------------------------------ flow
def test_flow_on_a_graph_solved_by_hand():
    # Two positions, two layers. From (2, 1): to (0, 0) along (1, 0) at 0.3 and (1, 1) at min(0.7, 0.5) = 0.8;
    # to (0, 1) only along (1, 1) -> (0, 1): min(0.7, 0.5) = 0.5.
    layer0 = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    layer1 = torch.tensor([[1.0, 0.0], [0.3, 0.7]], dtype=torch.float64)
    raw = rollout.flow_values([layer0, layer1], position=1)
    assert raw == pytest.approx([0.8, 0.5], abs=1e-12)
    assert rollout.rollout_rows([layer0, layer1], 1)[-1].tolist() == pytest.approx([0.65, 0.35], abs=1e-12)
    # the residual: a head-mean with rows [0, 1] -> (A + I) / 2
    assert rollout.residual_attention(torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])).tolist() == [[1.0, 0.0], [0.5, 0.5]]


def test_flow_equals_released_code_on_a_tiny_model(models):
    loaded = models("tiny-llama")
    trace = workbench.trace(loaded, "The cat sat on", raw=True, maps="all:all", map_dtype="float32")
    maps = eager_maps(loaded, trace)
    position = len(trace.tokens) - 1
    seen = []
    result = rollout.analyse(trace, position=position, method="flow", progress=lambda *a: seen.append(a))
    expected = reference_flow(maps, position)
    assert np.abs(result.relevance - expected).max() < 1e-6
    assert ("flow", position + 1, position + 1) in seen
    with pytest.raises(InputError, match="exceeds the bound"):
        rollout.analyse(trace, position=position, method="flow", max_flow_tokens=3)


# ------------------------------------------------------------------------------------------------ funnel
def planted_trace(widths: list[int], n: int = 24, heads: int = 2) -> Trace:
    """A causal trace whose layer l attends uniformly to the last widths[l] keys each row sees (maps stored)."""
    tensors = {}
    regions = torch.full((n,), 3, dtype=torch.long)
    for layer, width in enumerate(widths):
        maps = torch.zeros(heads, n, n)
        for row in range(n):
            first = max(0, row - width + 1)
            maps[:, row, first:row + 1] = 1.0 / (row + 1 - first)
        stats = statistics_from_maps(maps, regions, causal=True)
        for stat in ("key_mass", "key_count", "region_mass", "region_count", "entropy"):
            axes = {"key_mass": ("head", "key_pos"), "key_count": ("key_pos",),
                    "region_mass": ("head", "query_pos", "region"), "region_count": ("query_pos", "region"),
                    "entropy": ("head", "query_pos")}[stat]
            tensors[f"layer_{layer:02d}.{stat}"] = (stats[stat].float(), axes)
        tensors[f"layer_{layer:02d}.maps"] = (maps, ("head", "query_pos", "key_pos"))
        tensors[f"layer_{layer:02d}.map_heads"] = (torch.arange(heads), ("head",))
    meta = {"model": {"name": "planted-funnel"}, "inputs": {}, "generation": {},
            "dims": {"stacks": {"text": {"layers": len(widths), "heads": heads}}}}
    tokens = [Token(i, i, f"t{i}", "prompt") for i in range(n)]
    return Trace(meta=meta, tokens=tokens, tensors=MemoryTensors(tensors))


def expected_spread(width: int, n: int, mass: float = 0.9) -> tuple[float, float]:
    """(mean row entropy, mean share of keys holding `mass`) of rows attending uniformly to their last `width` keys."""
    entropy = [math.log(min(width, row + 1)) for row in range(n)]
    share = [math.ceil(mass * min(width, row + 1) - 1e-9) / (row + 1) for row in range(n)]
    return float(np.mean(entropy)), float(np.mean(share))


@pytest.mark.parametrize("widths, sign", [([24, 16, 8, 4, 2], -1), ([2, 3, 6, 12, 24], 1)])
def test_funnel_of_planted_spread(widths, sign):
    trace = planted_trace(widths)
    result = funnel.analyse(trace)
    assert result.score == pytest.approx(sign * 1.0) and result.scores["mass_share"] == pytest.approx(sign * 1.0)
    for row, width in zip(result.layers, widths):
        entropy, share = expected_spread(width, 24)
        assert row["entropy"] == pytest.approx(entropy, abs=1e-5)
        assert row["mass_share"] == pytest.approx(share, abs=1e-6)
    statistics_only = funnel.analyse(trace, maps="none")
    assert "mass_share" not in statistics_only.layers[0] and statistics_only.score == pytest.approx(sign * 1.0)
    with pytest.raises(InputError, match="needs full maps"):
        funnel.analyse(trace, maps="none", score_on="mass_share")


def test_funnel_of_constant_spread_has_no_score():
    result = funnel.analyse(planted_trace([6, 6, 6]))
    assert result.score is None and json.loads(json.dumps(result.to_json()))["score"] is None


def test_spearman_against_hand_ranks():
    assert funnel.spearman([0, 1, 2, 3], [4.0, 3.0, 3.0, 1.0]) == pytest.approx(-0.9486832980505138)  # ties
    assert math.isnan(funnel.spearman([0, 1, 2], [1.0, 1.0, 1.0]))


@pytest.mark.parametrize("name", ["tiny-llama"])
def test_funnel_entropy_equals_eager_maps(models, name):
    loaded = models(name)
    trace = workbench.trace(loaded, PROMPT, raw=True)
    maps = eager_maps(loaded, trace)
    result = funnel.analyse(trace, tracer=Tracer.open(loaded))
    assert result.options["mass_share_from"] == "recomputed maps"
    for row, layer in zip(result.layers, maps):
        plogp = np.where(layer > 0, layer * np.log(np.where(layer > 0, layer, 1)), 0.0)
        assert row["entropy"] == pytest.approx(-plogp.sum(-1).mean(), abs=1e-4)
        ordered = -np.sort(-layer, -1)
        needed = (np.cumsum(ordered, -1) < 0.9 * ordered.sum(-1, keepdims=True) - 1e-12).sum(-1) + 1
        visible = np.arange(1, layer.shape[1] + 1)
        assert row["mass_share"] == pytest.approx((needed / visible).mean(), abs=1e-6)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_rollout_and_funnel(models, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "workbench.cli.main", *map(str, args)],
                              check=False, capture_output=True, text=True, timeout=300)

    bundle = workbench.trace(models("tiny-gpt2"), "The cat sat", raw=True, maps="all:all").save(tmp_path / "c.wbtrace")
    done = run("rollout", bundle, "--pos", "-1", "--method", "flow", "--json", "-")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kind"] == "flow" and (bundle / "results" / "flow.json").is_file()
    done = run("funnel", bundle, "--json", tmp_path / "f.json")
    assert done.returncode == 0 and json.loads((tmp_path / "f.json").read_text())["analysis"] == "funnel"
    for args, message in [(("rollout", bundle, "--pos", "999"), "outside"),
                          (("rollout", bundle, "--method", "max"), "--method"),
                          (("rollout", bundle, "--method", "flow", "--max-flow-tokens", "2"), "--max-flow-tokens"),
                          (("funnel", bundle, "--mass", "0"), "--mass"),
                          (("funnel", bundle, "--score-on", "width"), "--score-on")]:
        done = run(*args)
        assert done.returncode == 2 and done.stderr.strip().startswith("error:") and \
            len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr


@pytest.mark.slow
def test_smollm2_rollout_and_funnel_equal_eager_maps(models):
    loaded = models("smollm2")
    trace = workbench.trace(loaded, "The capital of France is Paris. The capital of Italy is", raw=True)
    maps = eager_maps(loaded, trace)
    expected = reference_joint_attention(maps)[-1, -1]
    result = rollout.analyse(trace, position=-1, tracer=Tracer.open(loaded))
    assert np.abs(result.relevance - expected).max() < 1e-6
    spread = funnel.analyse(trace)  # statistics only
    for row, layer in zip(spread.layers, maps):
        plogp = np.where(layer > 0, layer * np.log(np.where(layer > 0, layer, 1)), 0.0)
        assert row["entropy"] == pytest.approx(-plogp.sum(-1).mean(), abs=1e-4)
