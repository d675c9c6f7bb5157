"""Where `workbench routes` differs from llm-transparency-tool's released code, measured (docs/analyses/routes.md).

The released code's graph is rebuilt here from its definitions, densely, on the trace's decomposition tensors:
`get_attention_contributions` (parts A_ij^h v_j^h W_O^h over all n keys, the residual entering the layer as the
one-off part, whole = the residual after attention), `get_mlp_contributions`, `apply_threshold_and_renormalize`,
`GraphBuilder` (the self-attention edge merged with the residual edge) and `build_paths_to_predictions` from
the last token (threshold 0 after renormalising, as the app does). Two versions:

- "as released": the tool loads models with TransformerLens's `from_pretrained`, which folds the value bias
  into b_O (fold_value_biases defaults to True), so its parts hold (v_j - b_V) W_O, and its FFN renormalisation
  sums over `dim=()`, i.e. over every token's FFN part, not the token's own;
- "two bugs mended": b_V kept in the parts, the FFN renormalised per token.

Ours: `routes.analyse(trace, threshold=0.04, bias="exclude", reference_padding=True)` (b_O out of the parts and
masked slots floored at 1e-5, both as the released code). Printed per model: whether the route's edge sets are
equal and the largest weight difference per edge kind.

    python benchmarks/routes_reference.py              # tiny-llama (no biases), tiny GPT-2 with biases: ~10 s
    python benchmarks/routes_reference.py --smollm2    # adds SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse

import networkx as nx
import torch

import workbench
from workbench.analyses import routes
from workbench.models.tiny import tiny_gpt2_biased
from workbench.traces.names import tensor_name

EPS = 1e-5  # the released get_contributions' floor
PROMPT = "The quick brown fox jumps over the lazy dog because the dog"


def value_bias(model, layer: int, heads: int) -> torch.Tensor:
    """b_V per query head [head, d_head] from the model's weights (zeros where the projection has no bias)."""
    if hasattr(model, "transformer"):  # GPT-2: fused c_attn, [q | k | v]
        attention = model.transformer.h[layer].attn
        d_model = attention.c_proj.weight.shape[0]
        return attention.c_attn.bias.detach()[2 * d_model:].reshape(heads, -1).float()
    projection = model.model.layers[layer].self_attn.v_proj
    if projection.bias is None:  # Llama, Mistral, SmolLM2: no value bias
        return torch.zeros(heads, model.config.hidden_size // model.config.num_attention_heads)
    per_kv_head = projection.bias.detach().float().reshape(model.config.num_key_value_heads, -1)
    return per_kv_head.repeat_interleave(heads // per_kv_head.shape[0], 0)


def contributions(parts: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """get_contributions: parts [..., pos, d] (leading dims enumerate parts), whole [pos, d]."""
    distance = (whole.abs().sum(-1) - (parts - whole).abs().sum(-1)).clamp_min(EPS)
    return distance / distance.sum(tuple(range(parts.dim() - 2)), keepdim=True)


def threshold_renormalise(blocks: torch.Tensor, residual: torch.Tensor, tau: float, *, sum_all: bool):
    """apply_threshold_and_renormalize; sum_all reproduces its dim=() sum when blocks has no extra dims."""
    blocks, residual = blocks * (blocks > tau), residual * (residual > tau)
    extra = tuple(range(residual.dim(), blocks.dim()))
    summed = blocks.sum() if (sum_all and not extra) else (blocks.sum(extra) if extra else blocks)
    denominator = residual + summed
    return blocks / denominator.reshape(denominator.shape + (1,) * len(extra)), residual / denominator


def released_route(trace, model, tau: float, *, mended: bool) -> nx.DiGraph:
    n, graph = len(trace.tokens), nx.DiGraph()

    def add(u: str, v: str, weight: float) -> None:
        if graph.has_edge(u, v):
            graph[u][v]["weight"] += weight
        else:
            graph.add_edge(u, v, weight=weight)

    def name(layer: int, stat: str) -> torch.Tensor:
        return trace.tensor(tensor_name("text", layer, stat)).double()

    layers = trace.n_layers()
    for layer in range(layers):
        query, key, value = name(layer, "query"), name(layer, "key"), name(layer, "value")
        heads = query.shape[0]
        value = value.repeat_interleave(heads // value.shape[0], 0)
        if not mended:  # TransformerLens folded b_V into b_O: hook_v holds no value bias
            value = value - value_bias(model, layer, heads).double()[:, None]
        scores = torch.einsum("hid,hjd->hij", query, key.repeat_interleave(heads // key.shape[0], 0))
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        pattern = scores.softmax(-1)
        decomposed = torch.einsum("hij,hje,dhe->jhid", pattern, value, name(layer, "o_weight"))  # key, head, pos, d
        pre, mid = name(layer, "hidden_in"), name(layer, "hidden_in") + name(layer, "attn_out")
        post = name(layer, "hidden_out") if layer == layers - 1 else name(layer + 1, "hidden_in")
        both = contributions(torch.cat([decomposed.reshape(-1, n, pre.shape[-1]), pre[None]]), mid)
        c_attn, c_resid = both[:-1].reshape(n, heads, n).permute(2, 0, 1), both[-1]  # [pos, key, head], [pos]
        c_attn, c_resid = threshold_renormalise(c_attn, c_resid, tau, sum_all=not mended)
        ffn = contributions(torch.stack([post - mid, mid]), post)
        c_ffn, c_resid_ffn = threshold_renormalise(ffn[0], ffn[1], tau, sum_all=not mended)
        source = (lambda t: f"I{layer - 1}_{t}") if layer else (lambda t: f"X0_{t}")
        for i in range(n):
            for j in range(n):
                add(source(j), f"A{layer}_{i}", float(c_attn[i, j].sum()))
            add(source(i), f"A{layer}_{i}", float(c_resid[i]))
            add(f"A{layer}_{i}", f"M{layer}_{i}", float(c_ffn[i]))
            add(f"M{layer}_{i}", f"I{layer}_{i}", float(c_ffn[i]))
            add(f"A{layer}_{i}", f"I{layer}_{i}", float(c_resid_ffn[i]))
    kept = nx.subgraph_view(graph.reverse(), filter_edge=lambda u, v: graph[v][u]["weight"] > 0)
    return kept.edge_subgraph(nx.edge_dfs(kept, source=f"I{layers - 1}_{n - 1}")).reverse()


def kind(u: str, v: str) -> str:
    if v.startswith("A"):
        return "attention"
    return "ffn" if u.startswith("M") or v.startswith("M") else "residual->I"


def compare(label: str, loaded, tau: float = 0.04) -> None:
    trace = workbench.trace(loaded, PROMPT, raw=True, decomposition=True)
    ours = routes.analyse(trace, position=len(trace.tokens) - 1, threshold=tau, bias="exclude", reference_padding=True,
                          head_types=False).routes[0].graph
    cells = []
    for mended in (False, True):
        theirs = released_route(trace, loaded.model, tau, mended=mended)
        same = {(u, v) for u, v in ours.edges()} == {(u, v) for u, v in theirs.edges()}
        worst: dict[str, float] = {}
        for u, v, data in theirs.edges(data=True):
            if ours.has_edge(u, v):
                gap = abs(ours[u][v]["weight"] - data["weight"])
                worst[kind(u, v)] = max(worst.get(kind(u, v), 0.0), gap)
        cells.append(f"{'same' if same else 'DIFFER'} " + " ".join(
            f"{name} {worst.get(name, 0.0):.1e}" for name in ("attention", "ffn", "residual->I")))
    print(f"{label:<20} {len(trace.tokens):>3} | as released: {cells[0]} | two bugs mended: {cells[1]}")




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smollm2", action="store_true", help="add SmolLM2-135M-Instruct")
    args = parser.parse_args()
    print("model                  n | route edge sets, then max |ours - theirs| per edge kind")
    compare("tiny-llama", workbench.load_model("tiny-llama"))
    compare("tiny-gpt2 + biases", tiny_gpt2_biased())
    if args.smollm2:
        compare("smollm2", workbench.load_model("smollm2"))


if __name__ == "__main__":
    main()
