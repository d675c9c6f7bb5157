"""Stored results describe themselves: positions are token positions (checked against HF eager forwards: the
predicting row's argmax is the token), JSON round trips through the registry, old files still read, and the
per-head / per-token arrays views draw equal independent computations from the trace or the result's records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import workbench
from tests.helpers import eager_forward
from workbench.analyses import circuits, divergence, routes, sinks
from workbench.analyses.registry import read_result, result_class
from workbench.capture.inputs import prepare_input
from workbench.errors import BundleError
from workbench.models.registry import data_root

IMAGE = data_root() / "scenes" / "images" / "scene_0003.png"


def greedy_rows(model, ids: list[int], **extra) -> list[int]:
    """The argmax token id of every query row of one eager forward (no cache) over `ids`."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), **extra).logits[0]
    return logits.argmax(-1).tolist()


def as_json(data) -> str:
    return json.dumps(data, sort_keys=True)


# -- VHD: every T-VHD value belongs to the generated token it scores --------------------------------------------
@pytest.fixture(scope="module")
def vhd_case(models):
    loaded = models("tiny-llava")
    trace = workbench.trace(loaded, "Describe the picture", IMAGE, max_new_tokens=4)
    return loaded, trace, divergence.analyse(trace, tracer=loaded)


def test_vhd_tokens_are_stored_at_their_positions_with_the_predicting_row(vhd_case):
    loaded, trace, result = vhd_case
    start, end = trace.generation["start"], trace.generation["end"]
    assert len(result.tokens) == end - start > 0
    ids = [t.id for t in trace.tokens]
    pixels = prepare_input(loaded, "Describe the picture", IMAGE).model_inputs["pixel_values"]
    argmax = greedy_rows(loaded.model, ids, pixel_values=pixels.to(loaded.model.dtype))
    for step, token in enumerate(result.tokens):
        assert token["position"] == start + step  # the step-th generated token
        assert trace.tokens[token["position"]].id == token["id"]
        assert argmax[token["predicting_row"]] == token["id"]  # greedy: that row's prediction is this token
        assert token["predicting_row"] != token["position"]
    values = result.token_values()["t_vhd"]
    assert values.positions.tolist() == list(range(start, end))
    np.testing.assert_allclose(values.values, result.t_vhd.numpy())


def test_vhd_json_round_trip_and_old_files(vhd_case):
    _, trace, result = vhd_case
    start, end = trace.generation["start"], trace.generation["end"]
    data = result.to_json()
    assert data["schema_version"] == 2
    again = read_result("vhd", json.loads(json.dumps(data))).to_json()
    # the ranking is recomputed from the stored (rounded) values: the same heads, values within the rounding
    stored_ranking, again_ranking = ({(r["layer"], r["head"]): r["vhd"] for r in d["ranking"]} for d in (data, again))
    assert set(again_ranking) == set(stored_ranking)
    np.testing.assert_allclose([again_ranking[k] for k in stored_ranking], list(stored_ranking.values()), atol=1e-5)
    assert as_json({**again, "ranking": None}) == as_json({**data, "ranking": None})
    again = read_result("vhd", data)
    mean = np.asarray(data["vhd"], dtype=np.float64).mean(0)  # [layer, head] from the stored steps
    np.testing.assert_allclose(again.head_metrics()["vhd"].values, mean, atol=1e-6)
    # a file written before the fix: no schema_version, tokens[].position = the predicting row
    old = json.loads(json.dumps(data))
    del old["schema_version"]
    for token in old["tokens"]:
        token["position"] = token.pop("predicting_row")
    read = read_result("divergence", old)  # any file name: the result names its analysis
    assert read.token_values()["t_vhd"].positions.tolist() == list(range(start, end))
    assert [t["predicting_row"] for t in read.tokens] == list(range(start - 1, end - 1))


# -- routes: the route's row predicts its `predicted` token -------------------------------------------------------
def test_route_positions_name_the_predicting_row(models):
    loaded = models("tiny-llama")
    trace = workbench.trace(loaded, "The cat sat on the mat. The cat", max_new_tokens=3, decomposition=True)
    result = routes.analyse(trace, position="generated", threshold=0.04)
    start, end = trace.generation["start"], trace.generation["end"]
    ids = [t.id for t in trace.tokens]
    argmax = greedy_rows(loaded.model, ids)
    data = json.loads(json.dumps(result.to_json()))
    assert [r["predicted"]["position"] for r in data["routes"]] == list(range(start, end))
    for stored in data["routes"]:
        token = stored["predicted"]["position"]
        assert stored["predicting_row"] == stored["position"] and argmax[stored["predicting_row"]] == ids[token]
        assert stored["predicted"]["id"] == ids[token]
    again = read_result("routes", data)
    assert as_json(again.to_json()) == as_json(data)
    # route frequency: share of routes where some attention edge into layer l carries head h above the threshold
    n_layers, n_heads = trace.n_layers(), trace.n_heads()
    carried = np.zeros((n_layers, n_heads))
    for route in data["routes"]:
        used = set()
        for edge in route["graph"]["edges"]:
            if edge["target"].startswith("A") and "heads" in edge:
                layer = int(edge["target"][1:].split("_")[0])
                used |= {(layer, h) for h, part in enumerate(edge["heads"]) if part > 0.04}
        for layer, head in used:
            carried[layer, head] += 1
    metrics = again.head_metrics()
    np.testing.assert_allclose(metrics["route_frequency"].values, carried / len(data["routes"]))
    patterns = data["heads"]["patterns"]["scores"]["previous_token"]
    np.testing.assert_allclose(metrics["pattern_previous_token"].values, np.asarray(patterns, dtype=np.float64))


# -- sinks: per-head tables against Gu et al.'s alpha from HF eager maps -------------------------------------------
def test_sinks_head_metrics_equal_alpha_from_eager_maps(models):
    loaded = models("tiny-llama")
    trace = workbench.trace(loaded, "Anna's code is 4417. What is Anna's code? It is", raw=True)
    result = sinks.analyse(trace, eps=0.2)
    attentions = eager_forward(loaded.model, input_ids=torch.tensor([[t.id for t in trace.tokens]])).attentions
    maps = torch.stack([a[0].double() for a in attentions])  # [layer, head, query_pos, key_pos]
    n = maps.shape[-1]
    alpha = (maps.sum(-2) / torch.arange(n, 0, -1, dtype=torch.float64)).numpy()  # causal: n - k rows see key k
    seen_enough = np.arange(n, 0, -1) >= result.options["min_queries"]
    data = json.loads(json.dumps(result.to_json()))
    metrics = read_result("sinks", data).head_metrics()
    np.testing.assert_allclose(metrics["top_alpha"].values, alpha.max(-1), atol=2e-5)
    np.testing.assert_array_equal(metrics["sink_keys"].values, ((alpha > 0.2) & seen_enough).sum(-1))
    hidden = (alpha > 5 / n) & seen_enough
    hidden[..., 0] = False  # ACT: keys after position 0 above 5 / n (the paper's relative rule, the default)
    np.testing.assert_array_equal(metrics["hidden_sinks"].values, hidden.sum(-1))
    assert as_json(read_result("sinks_copy", data).to_json()) == as_json(data)
    assert read_result("sinks", data).token_sets()["sink_tokens"] == sorted(e["position"] for e in data["sink_tokens"])


# -- circuits: firings per head from the stored firing records ----------------------------------------------------
def test_circuit_firings_per_head_equal_the_firing_records(models):
    model = models("planted-induction")
    trace = workbench.trace(model, "f x r c e l f x r c e l", raw=True, decomposition=True)
    data = json.loads(json.dumps(circuits.analyse(trace, model=model).to_json()))
    again = read_result("circuits", data)
    assert as_json(again.to_json()) == as_json(data)
    values = again.head_metrics()["circuit_firings"]
    assert values.sparse
    counts: dict[tuple[int, int], int] = {}
    for firing in data["firings"]:
        counts[(firing["layer"], firing["head"])] = counts.get((firing["layer"], firing["head"]), 0) + 1
    fired = {(layer, head): int(v) for (layer, head), v in np.ndenumerate(values.values) if np.isfinite(v) and v > 0}
    assert fired == counts and counts


# -- registry --------------------------------------------------------------------------------------------------------
def test_registry_reads_by_declared_analysis_and_refuses_newer_versions():
    from workbench.probes.scores import LookbackScores

    assert result_class("routes") is routes.RoutesResult and result_class("nothing") is None
    assert read_result("note", {"checked": True}) is None
    scores = {"schema": "workbench-probe-scores", "schema_version": 1, "probe": {"detector": "lookback"},
              "token_scores": [{"pos": 7, "score": 0.25, "text": " a"}, {"pos": 8, "score": 0.75, "text": " b"}],
              "generation_score": 0.75, "threshold": 0.5}  # as written before results declared their analysis
    read = read_result("lookback", scores)
    assert isinstance(read, LookbackScores) and read.token_values()["score"].as_dict() == {7: 0.25, 8: 0.75}
    with pytest.raises(BundleError, match="newer than this workbench"):
        read_result("circuits", {"analysis": "circuits", "schema_version": 99, "graph": {"nodes": [], "edges": []}})
