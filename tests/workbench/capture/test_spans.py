"""User spans as regions: span_mass / span_count against dense maps from HF eager attention, through every kernel
(the one-pass CPU kernel, the two-pass block-wise and the dense reference), over prompt and KV-cache decode rows;
span specifications and their one-line errors; bundles with spans round-trip and are checked on load."""

from __future__ import annotations

import json

import pytest
import torch

import workbench
from tests.helpers import assert_close, eager_forward
from workbench.capture.spans import (
    CharSpan,
    cell_ids,
    check_spans,
    locate_spans,
    marker_spans,
    parse_span_option,
    spans_from_json,
    split_cells,
)
from workbench.errors import BundleError, InputError

PROMPT = "Notes: <doc>apples and pears</doc> <doc>red cars</doc> <doc>blue sky above</doc> Which one?"


def dense_span_statistics(maps: torch.Tensor, token_ranges) -> tuple[torch.Tensor, torch.Tensor]:
    """span mass [head, query_pos, span] and causal span count [query_pos, span] summed straight from maps."""
    n = maps.shape[-1]
    causal = torch.tril(torch.ones(n, n, dtype=torch.float64))
    mass = torch.stack([maps[..., a:b].double().sum(-1) for a, b in token_ranges], dim=-1)
    count = torch.stack([causal[:, a:b].sum(-1) for a, b in token_ranges], dim=-1)
    return mass, count


@pytest.mark.parametrize("kernel", ["auto", "torch", "dense"])
def test_span_mass_equals_eager_maps(models, kernel):
    loaded = models("tiny-llama")
    spans = marker_spans(PROMPT, "<doc>,</doc>")
    trace = workbench.trace(loaded, PROMPT, max_new_tokens=3, spans=spans, kernel=kernel)
    if kernel == "auto":
        assert "one-pass" in trace.meta["capture"]["kernels_run"]["text"]
    ranges = [tuple(span["tokens"]) for span in trace.meta["inputs"]["spans"]]
    text = trace.meta["inputs"]["text"]
    for span, (a, b) in zip(spans, ranges):  # the tokens cover the span's text (offsets into the rendered input)
        assert PROMPT[span.start:span.end] in "".join(token.text for token in trace.tokens[a:b])
        assert text.rfind(PROMPT) >= 0
    ids = torch.tensor([[token.id for token in trace.tokens]])
    eager = eager_forward(loaded.model, input_ids=ids).attentions
    plain = workbench.trace(loaded, PROMPT, max_new_tokens=3, kernel=kernel)
    for layer in range(trace.n_layers()):
        mass, count = dense_span_statistics(eager[layer][0], ranges)
        stats = trace.layer(layer)
        assert_close(stats["span_mass"], mass, atol=1e-5, what=f"layer {layer} span_mass")
        assert torch.equal(stats["span_count"], count.long()), f"layer {layer} span_count"
        # the regions are what they are without spans (cells are summed back into them)
        assert_close(stats["region_mass"], plain.layer(layer)["region_mass"], atol=1e-6, what="region_mass")
        assert torch.equal(stats["region_count"], plain.layer(layer)["region_count"])


def test_spans_survive_a_bundle_and_are_checked_on_load(models, tmp_path):
    trace = workbench.trace(models("tiny-gpt2"), PROMPT, max_new_tokens=1, raw=True,
                            spans=[CharSpan("first", 12, 28), CharSpan("second", 40, 48)])
    path = trace.save(tmp_path / "s.wbtrace")
    again = workbench.load(path, verify=True)
    assert [span["name"] for span in again.meta["inputs"]["spans"]] == ["first", "second"]
    assert torch.equal(again.layer(0)["span_mass"], trace.layer(0)["span_mass"])
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["inputs"]["spans"] = manifest["inputs"]["spans"][:1]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="lists 1 spans but its span tensors hold"):
        workbench.load(path)


def test_locate_spans_takes_tokens_mostly_inside():
    # text "ab cd ef": tokens "ab", " cd", " ef" at (0,2), (2,5), (5,8); the prompt starts at character 0
    offsets = [(0, 2), (2, 5), (5, 8)]
    placed = locate_spans([CharSpan("x", 3, 5), CharSpan("y", 6, 8)], offsets=offsets, text="ab cd ef",
                          prompt="ab cd ef", n_positions=3)
    assert placed.ids.tolist() == [2, 0, 1] and placed.token_ranges == ((1, 2), (2, 3))
    with pytest.raises(InputError, match="covers no whole token"):
        locate_spans([CharSpan("z", 1, 3)], offsets=offsets, text="ab cd ef", prompt="ab cd ef", n_positions=3)


def test_cells_split_back_into_regions_and_spans():
    regions, spans = torch.tensor([0, 3, 3, 3, 4]), torch.tensor([2, 0, 1, 2, 2])  # 2 spans; 2 = no span
    cells = cell_ids(regions, spans, 2)
    one_hot = torch.nn.functional.one_hot(cells, 5 * 3).double()
    weights = torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25]], dtype=torch.float64)
    by_region, by_span = split_cells(weights @ one_hot, 5, 2)
    assert by_region.tolist() == [[0.1, 0.0, 0.0, pytest.approx(0.65), 0.25]]
    assert by_span.tolist() == [[0.2, 0.3]]


def test_span_specifications():
    assert parse_span_option("doc1=0:12") == CharSpan("doc1", 0, 12)
    assert marker_spans("<a>x</a> y <a>zz</a>", "<a>,</a>") == [CharSpan("item_0", 3, 4), CharSpan("item_1", 14, 16)]
    assert spans_from_json([{"name": "q", "start": 1, "end": 2}], "line 1") == [CharSpan("q", 1, 2)]
    assert check_spans([CharSpan("b", 5, 6), CharSpan("a", 0, 2)], "0123456") == [CharSpan("a", 0, 2),
                                                                                  CharSpan("b", 5, 6)]


@pytest.mark.parametrize("call, message", [
    (lambda: parse_span_option("doc1:0:12"), "is not NAME=START:END"),
    (lambda: marker_spans("<a>x", "<a>,</a>"), "is never closed"),
    (lambda: marker_spans("plain", "<a>,</a>"), "holds no"),
    (lambda: marker_spans("<a>x<a>y</a>", "<a>,</a>"), "cannot nest"),
    (lambda: marker_spans("x", "<a>"), "is not OPEN,CLOSE"),
    (lambda: spans_from_json({"a": 1}, "line 2"), "must be a list"),
    (lambda: spans_from_json([{"name": "a", "start": "0", "end": 2}], "line 2"), "entry 0 must be"),
    (lambda: check_spans([CharSpan("a", 0, 3), CharSpan("b", 2, 4)], "abcdef"), "overlap"),
    (lambda: check_spans([CharSpan("a", 0, 3), CharSpan("a", 3, 4)], "abcdef"), "given twice"),
    (lambda: check_spans([CharSpan("a b", 0, 3)], "abcdef"), "span name"),
    (lambda: check_spans([CharSpan("a", 4, 4)], "abcdef"), "0 <= START < END <= 6"),
])
def test_bad_span_specifications_are_one_line_errors(call, message):
    with pytest.raises(InputError, match=message) as caught:
        call()
    assert "\n" not in str(caught.value)


def test_span_lookback_ratio_equals_eager_maps(models):
    """Lookback ratio over chosen spans (C = mean weight per key of spans 0 and 2, N = per generated key) against
    the same means taken straight from HF eager maps over the generated rows."""
    from workbench.traces.metrics import span_lookback_ratio

    loaded = models("tiny-llama")
    trace = workbench.trace(loaded, PROMPT, max_new_tokens=4, spans=marker_spans(PROMPT, "<doc>,</doc>"))
    ids = torch.tensor([[token.id for token in trace.tokens]])
    eager = eager_forward(loaded.model, input_ids=ids).attentions
    ranges = [tuple(span["tokens"]) for span in trace.meta["inputs"]["spans"]]
    start, n = trace.generation["start"], len(trace.tokens)
    chosen = torch.cat([torch.arange(*ranges[0]), torch.arange(*ranges[2])])
    for layer in range(trace.n_layers()):
        maps = eager[layer][0].double()
        stats = trace.layer(layer)
        ratio = span_lookback_ratio(stats["region_mass"], stats["region_count"], stats["span_mass"],
                                    stats["span_count"], [0, 2])
        for row in range(start, n):
            c = maps[:, row, chosen].mean(-1)
            n_mean = maps[:, row, start:row + 1].mean(-1)  # generated keys the row sees (itself included)
            assert_close(ratio[:, row], c / (c + n_mean), atol=1e-5, what=f"layer {layer} row {row}")


def test_json_export_carries_span_shares(models):
    """The export's span_share of a head is the mean over query rows of its span mass, summed here from eager maps."""
    loaded = models("tiny-llama")
    trace = workbench.trace(loaded, PROMPT, max_new_tokens=2, spans=marker_spans(PROMPT, "<doc>,</doc>"))
    ids = torch.tensor([[token.id for token in trace.tokens]])
    maps = eager_forward(loaded.model, input_ids=ids).attentions[1][0].double()
    (a, b) = trace.meta["inputs"]["spans"][1]["tokens"]
    head = json.loads(json.dumps(trace.to_json()))["summary"]["text"][1]["heads"][2]
    assert head["span_share"]["item_1"] == pytest.approx(maps[2, :, a:b].sum(-1).mean().item(), abs=1e-5)
    assert set(head["generated_rows_span_share"]) == {"item_0", "item_1", "item_2"}


@pytest.mark.parametrize("name", ["tiny-bert", pytest.param("minilm", marks=pytest.mark.slow)])
def test_encoder_span_mass_equals_eager_maps(models, name):
    """Bidirectional attention: every row sees every span whole (counts = span lengths) and its mass on each span is
    the sum of the eager map over the span's tokens."""
    loaded = models(name)
    trace = workbench.trace(loaded, PROMPT, spans=marker_spans(PROMPT, "<doc>,</doc>"))
    ids = torch.tensor([[token.id for token in trace.tokens]])
    eager = eager_forward(loaded.model, input_ids=ids).attentions
    ranges = [tuple(span["tokens"]) for span in trace.meta["inputs"]["spans"]]
    lengths = torch.tensor([b - a for a, b in ranges])
    for layer in range(trace.n_layers()):
        maps = eager[layer][0].double()
        mass = torch.stack([maps[..., a:b].sum(-1) for a, b in ranges], dim=-1)
        assert_close(trace.layer(layer)["span_mass"], mass, atol=1e-5, what=f"{name} layer {layer}")
        assert torch.equal(trace.layer(layer)["span_count"], lengths.expand(len(trace.tokens), -1))
