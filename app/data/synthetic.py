"""Synthetic bundles of any shape (e.g. LLaVA-7B's 32 x 32 heads at 4k tokens) for benchmarks and tests.

No model runs: every head attends to position 0 with a sink weight a (drawn per head) and spreads the rest
uniformly over the keys it sees; the statistics are exact for that pattern (alpha_0 = a + (1 - a) H_n / n,
region masses follow the region counts, entropy is analytic). Stored maps add a local band to it, so maps
and statistics agree only roughly: these bundles exercise the app's speed and plumbing, not numerics. The
bundle is a normal bundle (manifest, shards), written through `Trace.save`.
"""

from __future__ import annotations

import math

import torch

from workbench.traces.names import tensor_name
from workbench.traces.tokens import REGIONS, Token
from workbench.traces.trace import MemoryTensors, Trace

WORDS = ("the", " cat", " sat", " on", " a", " mat", ",", " and", " then", " looked", " at", " dog", ".", " It",
         " was", " red", " blue", " big", " small", " house")


def _tokens(n: int, n_image: int, n_generated: int) -> list[Token]:
    side = math.isqrt(n_image) if n_image else 0
    tokens, position = [Token(0, 1, "<s>", "special")], 1
    for index in range(n_image):
        tokens.append(Token(position, 32000, "<image>", "image", (index // side, index % side) if side else None))
        position += 1
    prompt_end = n - n_generated
    while position < n:
        region = "prompt" if position < prompt_end else "generated"
        word = WORDS[(position * 7) % len(WORDS)]
        tokens.append(Token(position, 100 + (position * 7) % len(WORDS), word, region))
        position += 1
    return tokens


def _row_stats(sink: torch.Tensor, n: int, regions: torch.Tensor):
    """Exact statistics of rows 'sink a on key 0 + (1 - a) uniform over keys 0..i' for all heads."""
    rows = torch.arange(n, dtype=torch.float64)
    share = (1 - sink.double())[:, None] / (rows + 1)[None, :]  # [head, row]
    p0 = sink.double()[:, None] + share
    entropy = -(p0 * p0.log()) - rows[None, :] * share * share.clamp_min(1e-300).log()
    one_hot = torch.nn.functional.one_hot(regions, len(REGIONS)).double()
    region_count = one_hot.cumsum(0)  # [row, region]: keys of each region visible to row i
    region_mass = share[:, :, None] * region_count[None]
    region_mass[:, :, regions[0]] += sink.double()[:, None]
    harmonic = torch.cumsum(1 / (rows + 1), 0)  # H_{i+1}
    tail = harmonic[-1] - torch.cat([torch.zeros(1, dtype=torch.float64), harmonic[:-1]])  # sum_{i>=j} 1/(i+1)
    key_mass = (1 - sink.double())[:, None] * tail[None, :]
    key_mass[:, 0] += sink.double() * n
    return {"key_mass": key_mass.float(), "key_count": (n - torch.arange(n)).long(),
            "region_mass": region_mass.float(), "region_count": region_count.long(), "entropy": entropy.float(),
            "normaliser": torch.ones(len(sink), n)}


def _maps(sink: torch.Tensor, n: int, band: int = 4, dtype=torch.float16, block: int = 512) -> torch.Tensor:
    """[head, n, n] maps: sink on key 0, a local band of `band` keys, uniform rest (rows sum to 1)."""
    heads = len(sink)
    out = torch.zeros(heads, n, n, dtype=dtype)
    keys = torch.arange(n)
    for start in range(0, n, block):
        rows = torch.arange(start, min(n, start + block))
        visible = (keys[None, :] <= rows[:, None]).float()
        local = ((rows[:, None] - keys[None, :] >= 0) & (rows[:, None] - keys[None, :] < band)).float()
        for head in range(heads):
            a = float(sink[head])
            weights = 0.5 * (1 - a) * visible / visible.sum(-1, keepdim=True)
            weights += 0.5 * (1 - a) * local / local.sum(-1, keepdim=True)
            weights[:, 0] += a
            out[head, rows] = weights.to(dtype)
    return out


def synthetic_trace(*, layers: int = 32, heads: int = 32, tokens: int = 1024, n_image: int = 0,
                    n_generated: int = 16, map_layers: tuple[int, ...] = (), map_heads: tuple[int, ...] | None = None,
                    seed: int = 0, model: str = "synthetic") -> Trace:
    """A Trace with the given shape (statistics for every layer; maps for `map_layers` x `map_heads`)."""
    generator = torch.Generator().manual_seed(seed)
    toks = _tokens(tokens, n_image, n_generated)
    regions = torch.tensor([REGIONS.index(t.region) for t in toks])
    tensors: dict = {}
    axes = {"key_mass": ("head", "key_pos"), "key_count": ("key_pos",), "region_mass": ("head", "query_pos", "region"),
            "region_count": ("query_pos", "region"), "entropy": ("head", "query_pos"),
            "normaliser": ("head", "query_pos")}
    chosen_heads = tuple(range(heads)) if map_heads is None else tuple(map_heads)
    for layer in range(layers):
        sink = torch.rand(heads, generator=generator) * (0.3 if layer < 2 else 0.9)
        for name, value in _row_stats(sink, tokens, regions).items():
            tensors[tensor_name("text", layer, name)] = (value, axes[name])
        if layer in map_layers:
            tensors[tensor_name("text", layer, "maps")] = (_maps(sink[list(chosen_heads)], tokens), ("head", "query_pos", "key_pos"))
            tensors[tensor_name("text", layer, "map_heads")] = (torch.tensor(chosen_heads), ("head",))
    logprob = -torch.rand(tokens, generator=generator) * 3
    tensors["outputs.next_token_logprob"] = (logprob, ("query_pos",))
    tensors["outputs.prediction_entropy"] = (torch.rand(tokens, generator=generator) * 4, ("query_pos",))
    start = tokens - n_generated
    meta = {
        "workbench_version": "synthetic", "created": "2026-01-01T00:00:00+00:00",
        "model": {"name": model, "source": "synthetic", "revision": None, "kind": "vlm" if n_image else "causal",
                  "architecture": "Synthetic", "dtype": "float32", "device": "cpu", "attention_backend": "none",
                  "transformers_version": None},
        "inputs": {"prompt": "synthetic " + "".join(t.text for t in toks[n_image + 1:start])[:200], "system": None,
                   "raw": True, "chat_template": False, "text": "", "image": None},
        "generation": {"text": "".join(t.text for t in toks[start:]), "start": start, "end": tokens,
                       "max_new_tokens": n_generated, "strategy": "greedy"},
        "dims": {"tokens": tokens, "regions": list(REGIONS),
                 "stacks": {"text": {"layers": layers, "heads": heads, "kv_heads": heads, "d_model": 4096,
                                     "positions": tokens}}},
        "capture": {"maps": {"text": {"layers": list(map_layers), "heads": list(chosen_heads)}} if map_layers else {},
                    "map_dtype": "float16"},
        "checks": {"max_normaliser_error": 0.0, "non_finite": 0, "healthy": True},
    }
    return Trace(meta=meta, tokens=toks, tensors=MemoryTensors(tensors))
