"""VHD's cost next to a plain greedy generation of the same tokens, measured side by side in one run.

    python benchmarks/vhd_cost.py [--model planted-llava] [--tokens 16] [--repeats 5]

VHD runs one forward with the image and one without it per generated token, each with its own KV cache, and
reads every head's output at the predicting row; the plain run is the model's own greedy loop with a KV cache.
Prints the median time of each and their ratio to the plain run (the claim: about 2x), beside what re-running
both full prefixes at every step would cost (quadratic in the length).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="planted-llava")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image", default=str(Path(__file__).resolve().parents[1] / "data/scenes/images/scene_0000.png"))
    args = parser.parse_args()
    import torch

    from workbench.analyses.divergence import VHR, vhd
    from workbench.capture import Tracer
    from workbench.capture.inputs import prepare_input

    torch.set_num_threads(1)  # one thread: the ratio, not the speed, is the point
    tracer = Tracer.open(args.model)
    loaded = tracer.loaded
    prompt = "Describe the image."
    prepared = prepare_input(loaded, prompt, args.image)
    ids = tracer.generate(prompt, args.image, max_new_tokens=args.tokens).token_ids
    times = {"plain greedy": [], "vhd": [], "vhd + vhr": [], "no-cache re-run": []}
    image_id = loaded.model.config.image_token_id
    pixels = prepared.model_inputs["pixel_values"]

    def rerun():  # what VHD would cost without KV caches: both full prefixes again at every step
        with torch.inference_mode():
            for step in range(len(ids)):
                full = torch.cat([prepared.input_ids, torch.tensor([ids[:step]], dtype=torch.long)], 1)
                loaded.model(input_ids=full, pixel_values=pixels, logits_to_keep=1)
                loaded.model(input_ids=full[:, full[0] != image_id], logits_to_keep=1)
    for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
        start = time.perf_counter()
        tracer.generate(prompt, args.image, max_new_tokens=len(ids))
        times["plain greedy"].append(time.perf_counter() - start)
        start = time.perf_counter()
        vhd(tracer, prompt, args.image, continuation=ids)
        times["vhd"].append(time.perf_counter() - start)
        start = time.perf_counter()
        vhd(tracer, prompt, args.image, continuation=ids, vhr=VHR())
        times["vhd + vhr"].append(time.perf_counter() - start)
        start = time.perf_counter()
        rerun()
        times["no-cache re-run"].append(time.perf_counter() - start)
    base = statistics.median(times["plain greedy"])
    print(f"{args.model}: {len(ids)} generated tokens, prompt {prepared.input_ids.shape[1]} tokens, "
          f"median of {args.repeats}")
    print(f"{'variant':<14} {'seconds':>9} {'ratio':>7}")
    for name, values in times.items():
        print(f"{name:<14} {statistics.median(values):>9.4f} {statistics.median(values) / base:>7.2f}")


if __name__ == "__main__":
    main()
