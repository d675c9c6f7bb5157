"""How far circuit tracing's two Omega bases lie apart on the same firings (docs/analyses/circuits.md).

"reference" is the released code's basis (TransformerLens's fold_ln + centred writing weights + folded value
biases, x = ln1.hook_normalized), "raw" the norm's output with the model's own W_Q, W_K. Scores are equal in
both; printed per model: the largest relative difference of a singular value, how many firings keep the same
singular components, how many sides (query or key of a firing) keep the same upstream heads, the graphs'
edges, and the mean number of kept components. Agreement of each basis with an independent implementation of
its definition is asserted (and printed with -s) by tests/analyses/test_circuits_bases.py.

    python benchmarks/circuits_bases.py              # planted-induction and tiny GPT-2 with biases: ~20 s
    python benchmarks/circuits_bases.py --smollm2    # adds SmolLM2-135M-Instruct (+ ~1 minute)
"""

from __future__ import annotations

import argparse

import workbench
from workbench.analyses import circuits
from workbench.models.tiny import tiny_gpt2_biased


def singular_value_gap(loaded, trace) -> float:
    """max over heads and non-zero singular values of |s_reference - s_raw| / s_raw (offset 0)."""
    raw, reference = circuits.omega_forms(loaded, "raw"), circuits.omega_forms(loaded, "reference")
    gap = 0.0
    for layer in range(trace.n_layers()):
        for head in range(trace.n_heads()):
            a, b = raw.head(layer, head).svd(0)[1], reference.head(layer, head).svd(0)[1]
            keep = a > 1e-6 * a[0]
            if keep.any():
                gap = max(gap, float(((a - b).abs() / a)[keep].max()))
    return gap


def compare(label: str, loaded, prompt: str, *, raw_prompt: bool = True, threshold: float = 0.5) -> None:
    trace = workbench.trace(loaded, prompt, raw=raw_prompt, decomposition=True)
    results = {basis: circuits.analyse(trace, model=loaded, basis=basis, firing_threshold=threshold)
               for basis in circuits.BASES}
    ref, raw = results["reference"], results["raw"]
    same_components = sum(sorted(a["components"]) == sorted(b["components"]) for a, b in zip(ref.firings, raw.firings))
    sides = [({tuple(e[:2]) for e in a[f"{s}_upstream"]}, {tuple(e[:2]) for e in b[f"{s}_upstream"]})
             for a, b in zip(ref.firings, raw.firings) for s in "qk"]
    edges = {basis: set(result.graph.edges()) for basis, result in results.items()}
    print(f"{label:<22} {len(trace.tokens):>6} {len(ref.firings):>7} {singular_value_gap(loaded, trace):>8.0%} "
          f"{same_components:>6}/{len(ref.firings):<6} {sum(a == b for a, b in sides):>6}/{len(sides):<6} "
          f"{len(edges['reference']):>5} {len(edges['raw']):>5} {len(edges['reference'] & edges['raw']):>6} "
          f"{ref.stats['components_kept_mean']:>8} {raw.stats['components_kept_mean']:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smollm2", action="store_true", help="add SmolLM2-135M-Instruct")
    args = parser.parse_args()
    print(f"{'model':<22} {'tokens':>6} {'firings':>7} {'s gap':>8} {'same components':>13} {'same upstream':>13} "
          f"{'edges':>5} {'(raw)':>5} {'shared':>6} {'kept ref':>8} {'kept raw':>8}")
    compare("planted-induction", workbench.load_model("planted-induction"), "f x r c e l f x r c e l")
    compare("tiny-gpt2 + biases", tiny_gpt2_biased(), "abcabd abcabd xyzxyz", threshold=0.3)
    if args.smollm2:
        compare("smollm2", workbench.load_model("smollm2"),
                "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog.")


if __name__ == "__main__":
    main()
