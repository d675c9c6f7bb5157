"""Attention basin: planted span statistics with a known U shape, a model whose attention is uniform (so each item's
share is its length over the keys a row sees: a closed form), the CLI and its one-line errors, and (slow) SmolLM2
span masses against eager maps."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import workbench
from tests.helpers import eager_forward
from tests.workbench.cli.cli_inprocess import run_cli
from workbench.analyses import basin
from workbench.analyses.registry import read_result
from workbench.capture.spans import marker_spans
from workbench.errors import InputError
from workbench.traces.tokens import Token
from workbench.traces.trace import MemoryTensors, Trace

LIST = "Items: <d>one two</d> <d>three</d> <d>four five six</d> <d>seven</d> Which?"


def planted_trace(item_mass: list[float], *, n: int = 20, heads: int = 2, layers: int = 2) -> Trace:
    """Items of 3 tokens from position 2 on, then query rows; every row after the items puts item_mass[k] on item k
    (head 1 and layer 1: the reverse profile), the rows inside the list other masses that must not count."""
    k = len(item_mass)
    ranges = [(2 + 3 * j, 5 + 3 * j) for j in range(k)]
    after = ranges[-1][1]
    tensors = {}
    for layer in range(layers):
        mass = torch.full((heads, n, k), 0.5)  # rows inside the list: a decoy
        count = torch.zeros(n, k, dtype=torch.long)
        for head in range(heads):
            profile = item_mass if (head + layer) % 2 == 0 else item_mass[::-1]
            mass[head, after:] = torch.tensor(profile)
        count[after:] = 3
        tensors[f"layer_{layer:02d}.span_mass"] = (mass, ("head", "query_pos", "span"))
        tensors[f"layer_{layer:02d}.span_count"] = (count, ("query_pos", "span"))
    spans = [{"name": f"doc{j}", "start": 0, "end": 1, "tokens": list(r)} for j, r in enumerate(ranges)]
    meta = {"model": {"name": "planted-basin"}, "inputs": {"spans": spans}, "generation": {"start": n - 2, "end": n},
            "dims": {"stacks": {"text": {"layers": layers, "heads": heads}}}}
    tokens = [Token(i, i, f"t{i}", "prompt") for i in range(n)]
    return Trace(meta=meta, tokens=tokens, tensors=MemoryTensors(tensors))


def test_planted_basin_profile_and_u_score():
    masses = [0.30, 0.05, 0.10, 0.25]
    result = basin.analyse(planted_trace(masses))
    assert result.rows == (14, 20)
    assert np.allclose(result.received[0, 0], masses) and np.allclose(result.received[0, 1], masses[::-1])
    ends, middle, mean = (0.30 + 0.25) / 2, (0.05 + 0.10) / 2, sum(masses) / 4
    assert result.u_score == pytest.approx((ends - middle) / mean)
    assert np.allclose(result.head_u_scores, (ends - middle) / mean)
    per_token = basin.analyse(planted_trace(masses), per="token")
    assert np.allclose(per_token.received[0, 0], np.array(masses) / 3)
    hill = basin.analyse(planted_trace([0.05, 0.3, 0.3, 0.05]))
    assert hill.u_score < 0
    chosen = basin.analyse(planted_trace(masses), items=["doc0", "doc2", "doc3"])
    assert np.allclose(chosen.received[0, 0], [0.30, 0.10, 0.25])
    again = read_result("basin", json.loads(json.dumps(result.to_json())))
    assert np.allclose(again.received, result.received) and again.u_score == pytest.approx(result.u_score)


@pytest.mark.parametrize("options, message", [
    ({"rows": "all"}, "rows takes"),
    ({"per": "word"}, "per takes"),
    ({"items": ["doc0", "doc1"]}, "at least 3 list items"),
    ({"items": ["doc0", "nope", "doc1"]}, "has no span 'nope'"),
])
def test_basin_refuses_bad_options(options, message):
    with pytest.raises(InputError, match=message):
        basin.analyse(planted_trace([0.3, 0.1, 0.2, 0.3]), **options)


def test_uniform_attention_gives_each_item_its_length_share(models):
    """With W_Q = 0 every score is 0: row i spreads 1 / (i + 1) over its keys, so item k gets len_k / (i + 1), the
    basin's profile is proportional to the item lengths and, per token, flat (U-score 0)."""
    loaded = copy.deepcopy(models("tiny-llama"))
    for layer in loaded.model.model.layers:
        torch.nn.init.zeros_(layer.self_attn.q_proj.weight)
    trace = workbench.trace(loaded, LIST, max_new_tokens=2, spans=marker_spans(LIST, "<d>,</d>"))
    result = basin.analyse(trace)
    lengths = np.array([b - a for a, b in (item["tokens"] for item in result.items)], dtype=np.float64)
    first, end = result.rows
    assert first == result.items[-1]["tokens"][1] and end == len(trace.tokens)
    expected = lengths * np.mean(1.0 / np.arange(first + 1, end + 1))
    assert np.allclose(result.received, expected, atol=1e-6)
    ends, middle = (lengths[0] + lengths[-1]) / 2, lengths[1:-1].mean()
    assert result.u_score == pytest.approx((ends - middle) / lengths.mean(), abs=1e-5)
    assert abs(basin.analyse(trace, per="token").u_score) < 1e-5


def test_cli_basin(models, tmp_path):
    bundle = tmp_path / "list.wbtrace"
    code, _, err = run_cli("trace", "-m", "tiny-llama", "-p", LIST, "--span-markers", "<d>,</d>", "-n", "1", "-o", bundle)
    assert code == 0, err
    code, out, err = run_cli("basin", bundle, "--json", tmp_path / "basin.json")
    assert code == 0, err
    assert "U-score" in out and (bundle / "results" / "basin.json").is_file()
    stored = json.loads((tmp_path / "basin.json").read_text())
    assert [item["name"] for item in stored["items"]] == ["item_0", "item_1", "item_2", "item_3"]
    exported = workbench.load(bundle).to_json()  # the JSON export carries the stored result
    assert exported["results"]["basin"]["u_score"] == stored["u_score"]
    for args, message in [(("basin", str(bundle), "--per", "word"), "--per takes"),
                          (("basin", str(bundle), "--items", "item_0,,item_1"), "--items"),
                          (("trace", "-m", "tiny-llama", "-p", "abc", "--span", "a=0:9"), "START < END <= 3"),
                          (("trace", "-m", "tiny-llama", "-p", "abc", "--span", "a=0:1", "--span-markers", "<a>,</a>"),
                           "not both")]:
        code, _, err = run_cli(*args)
        assert code == 2 and err.startswith("error:") and message in err, err
        assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_smollm2_span_masses_equal_eager_maps(models):
    loaded = models("smollm2")
    prompt = "Facts: [Paris is in France.] [Rome is in Italy.] [Oslo is in Norway.] [Bern is in Switzerland.] Rome is in"
    trace = workbench.trace(loaded, prompt, raw=True, max_new_tokens=0, spans=marker_spans(prompt, "[,]"))
    ids = torch.tensor([[token.id for token in trace.tokens]])
    eager = eager_forward(loaded.model, input_ids=ids).attentions
    ranges = [tuple(span["tokens"]) for span in trace.meta["inputs"]["spans"]]
    result = basin.analyse(trace)
    first = result.rows[0]
    for layer in range(trace.n_layers()):
        maps = eager[layer][0].double()
        mass = torch.stack([maps[..., a:b].sum(-1) for a, b in ranges], dim=-1)
        assert (trace.layer(layer)["span_mass"].double() - mass).abs().max() < 1e-5, layer
        assert np.allclose(result.received[layer], mass[:, first:].mean(1).numpy(), atol=1e-5)


def test_prompt_set_lines_carry_their_own_spans(tmp_path):
    """`trace --prompts` reads each line's "spans" (characters of its prompt) into that bundle's inputs.spans."""
    prompt = "A: red. B: green. C: blue. Which?"
    lines = [{"prompt": prompt, "name": "colours", "spans": [{"name": "a", "start": 3, "end": 7},
                                                             {"name": "b", "start": 11, "end": 17},
                                                             {"name": "c", "start": 21, "end": 26}]},
             {"prompt": prompt, "name": "bad", "spans": [{"name": "a", "start": 3, "end": 99}]}]
    (tmp_path / "set.jsonl").write_text(json.dumps(lines[0]) + "\n")
    code, _, err = run_cli("trace", "-m", "tiny-llama", "--prompts", tmp_path / "set.jsonl", "-n", "1", "--out",
                           tmp_path / "out")
    assert code == 0, err
    trace = workbench.load(tmp_path / "out" / "colours.wbtrace")
    spans = trace.meta["inputs"]["spans"]
    assert [(s["name"], s["start"], s["end"]) for s in spans] == [("a", 3, 7), ("b", 11, 17), ("c", 21, 26)]
    for span in spans:  # the tokens cover the span's characters
        a, b = span["tokens"]
        assert prompt[span["start"]:span["end"]] in "".join(token.text for token in trace.tokens[a:b])
    (tmp_path / "bad.jsonl").write_text(json.dumps(lines[1]) + "\n")
    code, _, err = run_cli("trace", "-m", "tiny-llama", "--prompts", tmp_path / "bad.jsonl", "--out", tmp_path / "o2")
    assert code == 2 and "0 <= START < END <= 33" in err and len(err.strip().splitlines()) == 1
