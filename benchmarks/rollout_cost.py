"""Attention rollout and attention flow: time as a ratio to one traced forward, measured side by side.

Per n, in one run on one machine: the trace of an n-token input in statistics mode (the unit: what every bundle
costs), `rollout.analyse` on that bundle (the maps replayed through the model, a few layers per forward, then the
products), and `rollout.analyse(method="flow")` where n is within --flow-limit (one networkx max-flow per input
token on L x n^2 / 2 edges). Flow beyond the limit is not run: its time per input token grows with the edges, and
there are n input tokens.

    python benchmarks/rollout_cost.py [--model smollm2] [--n 64 2048] [--flow-limit 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernels_memory import machine

from workbench.analyses import rollout
from workbench.capture import Tracer

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards",
         "quietly", "judge", "boxing", "matches", "near", "old", "river", "banks", "during", "summer"]


def prompt_of(loaded, n: int) -> str:
    rng = random.Random(n)
    text = " ".join(rng.choice(WORDS) for _ in range(2 * n))
    return loaded.tokenizer.decode(loaded.tokenizer(text)["input_ids"][:n])


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, nargs="+", default=[64, 2048])
    parser.add_argument("--flow-limit", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tracer = Tracer.open(args.model)
    print(f"# {machine()}; model {args.model} ({tracer.layout.stacks['text'].n_layers} layers); "
          f"load {os.getloadavg()[0]:.2f} at start")
    print("| n | trace (stats) s | rollout s | rollout / trace | flow s | flow / trace |")
    print("|---|---|---|---|---|---|")
    for n in args.n:
        prompt = prompt_of(tracer.loaded, n)
        unit, trace = timed(lambda p=prompt: tracer.trace(p, raw=True))
        spent, result = timed(lambda t=trace: rollout.analyse(t, position=-1, tracer=tracer))
        assert abs(result.relevance.sum() - 1) < 1e-6
        flow = "not run (n > --flow-limit)"
        ratio = "-"
        if len(trace.tokens) <= args.flow_limit:
            flow_time, _ = timed(lambda t=trace: rollout.analyse(t, position=-1, method="flow", tracer=tracer,
                                                         max_flow_tokens=args.flow_limit))
            flow, ratio = f"{flow_time:.2f}", f"{flow_time / unit:.1f}x"
        print(f"| {len(trace.tokens)} | {unit:.2f} | {spent:.2f} | {spent / unit:.1f}x | {flow} | {ratio} |",
              flush=True)
    print(f"# load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
