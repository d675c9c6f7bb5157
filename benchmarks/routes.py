"""Information-flow routes for the last token on SmolLM2: time as a ratio to one forward pass, and memory,
side by side with the naive full-tensor method (the reference tool's [n, n, H, d_model] per layer) where it
fits the --naive-limit-gb budget.

Per n, measured in one run on the same machine: one plain forward (SDPA, no capture; the unit), the capture
with --decomposition (what routes need stored), `routes.analyse(position=-1)` without and with the typed-head
pass, and the naive method (all contributions of all nodes, the full graph, then the walk), whose route is
checked to equal ours. Time: best of --repeat. Memory: peak bytes of live tensors an analysis creates (a
dispatch-mode probe, allocator-independent; measured in a separate run because it slows ops down) and the
size of the stored decomposition tensors.

    python benchmarks/routes.py [--n 128 512 2048] [--repeat 2] [--threads 1] [--naive-limit-gb 2]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import networkx as nx
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernels_memory import PeakTensorBytes, machine

import workbench
from workbench.analyses import routes
from workbench.analyses.routes.contributions import EPS
from workbench.traces.names import tensor_name

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards",
         "quietly", "judge", "boxing", "matches", "near", "old", "river", "banks", "during", "summer", "evenings",
         "and", "clever", "students", "write", "short", "notes", "about", "distant", "mountains"]
STORED = ("query", "key", "value", "attn_out", "hidden_in", "hidden_out", "o_weight", "o_bias")


def prompt_of(loaded, n: int) -> str:
    rng = random.Random(n)
    text = " ".join(rng.choice(WORDS) for _ in range(2 * n))
    return loaded.tokenizer.decode(loaded.tokenizer(text)["input_ids"][:n])


def best(fn, repeat: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def peak_bytes(fn) -> int:
    with PeakTensorBytes() as probe:
        fn()
    return probe.peak


def naive_route(trace, threshold: float) -> nx.DiGraph:
    """The reference tool's method on the trace's tensors: full decomposition per layer, every node's
    contributions, the full graph, then the walk (renormalising threshold, walk over edges > 0)."""
    n, n_layers = len(trace.tokens), trace.n_layers()
    graph = nx.DiGraph()

    def contributions(parts, whole):
        return (whole.abs().sum(-1) - (parts - whole).abs().sum(-1)).clamp_min(EPS)

    def renormalise(blocks, residual):
        blocks, residual = blocks * (blocks > threshold), residual * (residual > threshold)
        total = (blocks.sum((0, 1)) if blocks.dim() == 3 else blocks) + residual
        total = torch.where(total > 0, total, torch.ones_like(total))
        return blocks / total, residual / total

    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    for layer in range(n_layers):
        tensor = lambda stat, at=layer: trace.tensor(tensor_name("text", at, stat)).float()
        query, key, value = tensor("query"), tensor("key"), tensor("value")
        heads = query.shape[0]
        group = heads // key.shape[0]
        scores = query @ key.repeat_interleave(group, 0).transpose(1, 2)
        maps = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        value_out = torch.einsum("hje,dhe->jhd", value.repeat_interleave(group, 0), tensor("o_weight"))
        value_out += tensor("o_bias") / heads
        pre = tensor("hidden_in")
        mid = pre + tensor("attn_out")
        post = tensor("hidden_out") if layer == n_layers - 1 else tensor("hidden_in", layer + 1)
        decomposed = torch.einsum("hij,jhd->jhid", maps, value_out)  # [key, head, query, d_model]
        parts = torch.where(causal.T[:, None, :], contributions(decomposed, mid), torch.zeros(()))
        del decomposed
        residual = contributions(pre, mid)
        total = parts.sum((0, 1)) + residual
        parts, residual = renormalise(parts / total, residual / total)
        ffn, kept = contributions(post - mid, post), contributions(mid, post)
        ffn, kept = renormalise(ffn / (ffn + kept), kept / (ffn + kept))
        weights = parts.sum(1)  # [key, query]
        weights[torch.arange(n), torch.arange(n)] += residual
        source = (lambda j: f"I{layer - 1}_{j}") if layer else (lambda j: f"X0_{j}")
        for j, i in (weights > 0).nonzero().tolist():
            graph.add_edge(source(j), f"A{layer}_{i}", weight=float(weights[j, i]))
        for i in range(n):
            if ffn[i] > 0:
                graph.add_edge(f"A{layer}_{i}", f"M{layer}_{i}", weight=float(ffn[i]))
                graph.add_edge(f"M{layer}_{i}", f"I{layer}_{i}", weight=float(ffn[i]))
            if kept[i] > 0:
                graph.add_edge(f"A{layer}_{i}", f"I{layer}_{i}", weight=float(kept[i]))
    edges = nx.edge_dfs(graph, source=f"I{n_layers - 1}_{n - 1}", orientation="reverse")
    return graph.edge_subgraph([(u, v) for u, v, _ in edges]).copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.04)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--naive-limit-gb", type=float, default=2.0,
                        help="run the naive method only where its [n, n, H, d_model] fp32 tensor fits")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = workbench.load_model("smollm2")
    config = loaded.model.config
    print(f"machine: {machine()}")
    print(f"model: SmolLM2-135M ({config.num_hidden_layers} layers, {config.num_attention_heads} heads, "
          f"d_model {config.hidden_size}); routes for the last token, tau = {args.threshold}, renormalising")
    header = ("n", "forward s", "capture", "routes", "routes+types", "naive", "routes peak MB",
              "naive peak MB", "stored MB", "rows", "pruned", "same route")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for n in args.n:
        prompt = prompt_of(loaded, n)
        ids = torch.tensor([loaded.tokenizer(prompt)["input_ids"]])
        repeat = args.repeat if n <= 512 else 1
        with torch.inference_mode():
            loaded.model(input_ids=ids[:, :16])  # warm-up
            forward, _ = best(lambda: loaded.model(input_ids=ids), repeat)
        capture, trace = best(lambda: workbench.trace(loaded, prompt, raw=True, decomposition=True), 1)
        n = len(trace.tokens)
        analyse = lambda types: routes.analyse(trace, position=-1, threshold=args.threshold,
                                               head_types=types)
        routes_time, result = best(lambda: analyse(False), repeat)
        typed_time, _ = best(lambda: analyse(True), 1)
        routes_peak = peak_bytes(lambda: analyse(False))
        stored = sum(trace.tensor(name).numel() * trace.tensor(name).element_size()
                     for name in trace.tensor_names() if name.rsplit(".", 1)[-1] in STORED)
        full = n * n * config.num_attention_heads * config.hidden_size * 4
        if full <= args.naive_limit_gb * 2 ** 30:
            naive_time, expected = best(lambda: naive_route(trace, args.threshold), 1)
            naive_peak = peak_bytes(lambda: naive_route(trace, args.threshold))
            got = result.routes[0].graph
            errors = [abs(got[u][v]["weight"] - expected[u][v]["weight"]) for u, v in got.edges()]
            same = set(got.edges()) == set(expected.edges()) and max(errors, default=0) < 1e-4
            naive_cells = (f"{naive_time / forward:.2f}x", f"{naive_peak / 2 ** 20:.0f}",
                           "yes" if same else "NO")
        else:
            naive_cells = ("does not fit", f"> {full / 2 ** 20:.0f} (per layer)", "-")
        cells = [str(n), f"{forward:.2f}", f"{capture / forward:.2f}x", f"{routes_time / forward:.2f}x",
                 f"{typed_time / forward:.2f}x", naive_cells[0], f"{routes_peak / 2 ** 20:.0f}",
                 naive_cells[1], f"{stored / 2 ** 20:.0f}", str(result.stats["attention_rows_computed"]),
                 f"{result.stats['pruned_fraction']:.3f}", naive_cells[2]]
        print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
