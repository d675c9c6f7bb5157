"""Cost of an activation-patching sweep over every head of a model, as a ratio to one plain forward, measured
side by side in one run.

    python benchmarks/patching.py [--model smollm2] [--tokens 64] [--batch-sizes 1,8] [--threads 1]

The clean prompt is an IOI sentence after a neutral preamble trimmed to exactly --tokens tokens; the corrupted one
swaps the two names (same token count). A sweep is two recorded runs (clean, corrupted) plus one patched run per
head, `batch size` runs per forward. Prints the median of 3 plain forwards (batch 1, last-row logits) and each
sweep's time with its ratio to that forward.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

PREAMBLE = ("It was a quiet morning in the small town by the river, and the shops along the main street were "
            "opening one by one while the baker set out fresh bread and the first buses rolled past the square "
            "towards the station at the edge of the old market district near the harbour")
IOI = {"prompt": "When Mark and Mary went to the market, Mary gave a drink to", "io": "Mark", "s": "Mary",
       "answer": " Mark", "distractor": " Mary"}


def prompt_of(tokenizer, tokens: int) -> str:
    """The preamble's first words, as many as make `prefix. IOI` exactly `tokens` tokens (or the closest below)."""
    words = PREAMBLE.split()
    best = IOI["prompt"]
    for count in range(1, len(words) + 1):
        text = " ".join(words[:count]) + ". " + IOI["prompt"]
        if len(tokenizer(text).input_ids) > tokens:
            break
        best = text
    return best


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    from workbench.analyses.causal import patching
    from workbench.analyses.causal.metrics import pair_from_record
    from workbench.analyses.causal.sweep import token_ids
    from workbench.capture import Tracer

    torch.set_num_threads(args.threads)
    tracer = Tracer.open(args.model)
    text = prompt_of(tracer.loaded.tokenizer, args.tokens)
    pair = pair_from_record({**IOI, "prompt": text})
    ids = token_ids(tracer, text)
    stack = tracer.layout.stacks["text"]
    forwards = []
    for _ in range(3):
        start = time.perf_counter()
        tracer.last_logits(ids)
        forwards.append(time.perf_counter() - start)
    forward = statistics.median(forwards)
    print(f"{args.model}: {ids.shape[1]} tokens, {stack.n_layers} layers x {stack.n_heads} heads = "
          f"{stack.n_layers * stack.n_heads} patched runs, threads {args.threads}")
    print(f"{'variant':<28} {'seconds':>9} {'x forward':>10}")
    print(f"{'one forward (median of 3)':<28} {forward:>9.3f} {1.0:>10.1f}")
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        start = time.perf_counter()
        result = patching.analyse(tracer, [pair], what="heads", batch_size=batch_size)
        seconds = time.perf_counter() - start
        print(f"{f'sweep, batch size {batch_size}':<28} {seconds:>9.3f} {seconds / forward:>10.1f}")
    top = result.ranking(3)
    print("largest effects: " + ", ".join(f"L{r['layer']}H{r['head']} {r['effect']:.3f}" for r in top))


if __name__ == "__main__":
    main()
