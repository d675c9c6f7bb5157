"""Long inputs in statistics mode: exact against HF eager attention, row-parallel statistics, no n x n tensor.

The reference is independent of the capture: HF's eager attention computes each layer's full maps, a forward
hook on the chosen layers reduces them per head in float64 and drops them (so a few thousand tokens fit).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from workbench.kernels import MaskSpec, attention_statistics

import workbench
from tests.helpers import assert_close
from workbench.capture.statistics import layer_statistics
from workbench.traces.tokens import REGIONS

STATS = ("key_mass", "key_count", "region_mass", "region_count", "entropy", "normaliser")


def _long_prompt(n_chars: int) -> str:
    words = "the workbench keeps attention statistics without building the map while the key value cache grows"
    text = " ".join(f"{word}{i % 97}" if i % 11 == 0 else word for i, word in enumerate(words.split() * 400))
    return text[:n_chars]


def _map_statistics(maps: torch.Tensor, regions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Causal statistics from maps [head, query_pos, key_pos], one head at a time in float64."""
    n = maps.shape[-1]
    visible = torch.ones(n, n, dtype=torch.bool).tril()
    one_hot = torch.nn.functional.one_hot(regions, len(REGIONS)).double()
    per_head: dict[str, list] = {"key_mass": [], "region_mass": [], "entropy": [], "normaliser": []}
    for head_map in maps:
        p = head_map.double()
        per_head["key_mass"].append(p.sum(0))
        per_head["region_mass"].append(p @ one_hot)
        per_head["entropy"].append(-torch.special.xlogy(p, p).sum(-1))
        per_head["normaliser"].append(p.sum(-1))
    out = {name: torch.stack(values) for name, values in per_head.items()}
    out["key_count"] = visible.sum(0)
    out["region_count"] = visible.double() @ one_hot
    return out


def eager_layer_statistics(model, input_ids, layers, regions) -> dict[int, dict[str, torch.Tensor]]:
    """Statistics of `layers` from HF eager attention weights (each layer's maps dropped after reduction)."""
    found: dict[int, dict[str, torch.Tensor]] = {}
    attention_modules = [layer.self_attn for layer in model.model.layers]
    handles = []
    for index in layers:
        def hook(module, args, output, index=index):
            found[index] = _map_statistics(output[1][0], regions)
        handles.append(attention_modules[index].register_forward_hook(hook))
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
    finally:
        model.set_attn_implementation(previous)
        for handle in handles:
            handle.remove()
    return found


def _check_against_eager(loaded, trace, layers):
    ids = torch.tensor([[t.id for t in trace.tokens]])
    reference = eager_layer_statistics(loaded.model, ids, layers, trace.regions)
    for layer in layers:
        stats = trace.layer(layer)
        for stat in STATS:
            assert_close(stats[stat], reference[layer][stat], what=f"{loaded.name} layer {layer} {stat}")
    assert trace.checks["healthy"]


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # the recorder splits rows over as many workers as torch has threads
    yield
    torch.set_num_threads(previous)


def test_tiny_llama_long_input_equals_eager(models, two_threads):
    loaded = models("tiny-llama")  # trained to 512 positions: 3,000 need --max-length (RoPE, so allowed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trace = workbench.trace(loaded, _long_prompt(3000), raw=True, max_new_tokens=2, max_length=4096)
    assert len(trace.tokens) >= 3000
    _check_against_eager(loaded, trace, layers=[0, 2])


@pytest.mark.slow
def test_smollm2_long_input_equals_eager(models, two_threads):
    loaded = models("smollm2")
    trace = workbench.trace(loaded, _long_prompt(15000), raw=True, max_new_tokens=2)
    assert len(trace.tokens) >= 2500
    _check_against_eager(loaded, trace, layers=[0, 14, 29])


@pytest.mark.parametrize("case", ["causal", "offset", "dense", "top_k_and_maps", "bidirectional"])
def test_row_parallel_statistics_equal_one_call(case):
    torch.manual_seed(0)
    n_queries, n_keys = (700, 900) if case == "offset" else (777, 777)
    query, key = torch.randn(1, 6, n_queries, 16), torch.randn(1, 2, n_keys, 16)
    regions = torch.randint(0, 3, (n_keys,))
    regions[:300] = 1  # a long run next to scattered ids: both region reductions of the kernel
    mask = {"causal": MaskSpec(causal=True), "offset": MaskSpec(causal=True, query_offset=n_keys - n_queries),
            "dense": MaskSpec(dense=torch.rand(1, 1, n_queries, n_keys) > 0.3),
            "top_k_and_maps": MaskSpec(causal=True), "bidirectional": MaskSpec(causal=False)}[case]
    options = {"scaling": 0.25, "mask": mask, "key_regions": regions, "n_regions": 3, "implementation": "torch"}
    if case == "top_k_and_maps":
        options.update(top_k=5, map_heads=[0, 4])
    dense = attention_statistics(query, key, **{**options, "implementation": "dense"})
    reference = attention_statistics(query, key, **options)
    scores = query @ key.repeat_interleave(3, 1).transpose(-1, -2) * 0.25
    log_normaliser = torch.logsumexp(torch.where(mask.block(0, n_queries, 0, n_keys), scores, float("-inf")), -1)
    parallel = layer_statistics(query, key, log_normaliser=log_normaliser, workers=2, **options)
    for name in STATS + (("top_weight", "maps") if case == "top_k_and_maps" else ()):
        assert_close(getattr(parallel, name), getattr(reference, name), what=f"{case} {name}")
        assert_close(getattr(parallel, name), getattr(dense, name), what=f"{case} {name} vs dense")
    if case == "top_k_and_maps":  # indices of weight-0 entries (rows seeing < k keys) are arbitrary
        seen = dense.top_weight > 0
        assert torch.equal(parallel.top_index[seen], dense.top_index[seen])


class LargestTensors(TorchDispatchMode):
    """Shapes of every tensor an aten op creates while active (this thread only)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.shapes.append((str(func), tuple(tensor.shape)))
        return out


def _square_tensors(shapes, n):
    """Tensors with two axes of at least n / 2: a map (or a mask) of the whole sequence."""
    return [(op, shape) for op, shape in shapes if sum(size >= n // 2 for size in shape) >= 2]


@pytest.mark.parametrize("maps", [None, "1:0"])
def test_statistics_capture_creates_no_sequence_squared_tensor(models, maps):
    """Statistics mode must not create any [.., n, n]-shaped tensor; asking for one map must (the control)."""
    loaded, n = models("tiny-llama"), 1500
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # dispatch modes are per thread: keep the statistics on this one
    try:
        with warnings.catch_warnings(), LargestTensors() as probe:
            warnings.simplefilter("ignore")
            trace = workbench.trace(loaded, _long_prompt(n), raw=True, max_new_tokens=2, max_length=2048, maps=maps)
    finally:
        torch.set_num_threads(previous)
    length = len(trace.tokens)
    assert length >= n
    square = _square_tensors(probe.shapes, length)
    if maps is None:
        assert not square, f"statistics capture created sequence-squared tensors: {square[:5]}"
        largest = max(torch.Size(shape).numel() for _, shape in probe.shapes)
        assert largest < length * length // 4, f"a tensor of {largest} elements at n = {length}"
        for name in trace.tensor_names():
            shape = trace.tensor(name).shape
            assert sum(size >= length // 2 for size in shape) <= 1, f"{name} {tuple(shape)} is O(n^2)"
    else:
        assert square, "the probe must see the requested map (control)"
