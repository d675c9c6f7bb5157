"""How much hallucination signal the attention of llava-scenes carries at its one-word answers.

Lookback Lens reads, per layer and head, the attention of the row that predicts each generated token. On
llava-scenes most answers are one word ("yes", "red", "circle"), so the only informative row is the one
that predicts the answer, and under the paper's definition (context vs earlier *generated* tokens) its
lookback ratio is 1 by construction. This script traces a sample of held-out questions with full maps and
compares, on the same group split (scenes held out), logistic-regression probes on features of that row:

- header_lookback: the reference code's convention, which counts the response header (the chat template's
  tokens between the user's text and the answer) as new tokens: ratio = C / (C + N) with C the mean
  attention per context key (system, image, prompt) and N the mean per header key;
- next_row_lookback: the row of the first answer token (predicting end-of-turn), context vs header + answer;
- image_share and image_vs_text: attention mass on image keys, and mean-per-key image vs text;
- region_masses: mass on image, prompt, header and system keys (both rows), i.e. every region feature;
- the token log-probability baseline.

    python benchmarks/lookback_conventions.py --n 1600          # ~2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch


def row_features(trace) -> dict[str, np.ndarray]:
    """Per layer x head features of the answer-predicting row (start - 1) and the next row."""
    start = int(trace.generation["start"])
    regions = np.array([token.region for token in trace.tokens])
    prompt = np.nonzero(regions[:start] == "prompt")[0]
    header = np.arange(prompt.max() + 1, start)
    context = np.nonzero(np.isin(regions[:start], ["system", "image", "prompt"]))[0]
    image = np.nonzero(regions[:start] == "image")[0]
    text = np.nonzero(np.isin(regions[:start], ["special", "system", "prompt"]))[0]
    system = np.nonzero(regions[:start] == "system")[0]
    out: dict[str, list] = {name: [] for name in ("header_lookback", "next_row_lookback", "image_share",
                                                  "image_vs_text", "region_masses")}
    for layer in range(trace.n_layers()):
        maps = trace.layer(layer)["maps"].double().numpy()  # [head, query_pos, key_pos]
        row = maps[:, start - 1]
        mean = lambda keys, r=row: r[:, keys].mean(1) if len(keys) else np.zeros(r.shape[0])  # noqa: E731
        out["header_lookback"].append(mean(context) / (mean(context) + mean(header) + 1e-12))
        nxt = maps[:, min(start, maps.shape[1] - 1)]
        new_keys = np.append(header, start)
        c2, n2 = nxt[:, context].mean(1), nxt[:, new_keys].mean(1)
        out["next_row_lookback"].append(c2 / (c2 + n2 + 1e-12))
        out["image_share"].append(row[:, image].sum(1))
        out["image_vs_text"].append(mean(image) / (mean(image) + mean(text) + 1e-12))
        out["region_masses"].append(np.concatenate(
            [r[:, keys].sum(1) for r in (row, nxt) for keys in (image, prompt, header, system)]))
    return {name: np.concatenate(values) for name, values in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1600, help="questions sampled (captions excluded)")
    parser.add_argument("--scenes", default="data/scenes")
    parser.add_argument("--model", default="llava-scenes", help="registry name or directory of a scene model")
    parser.add_argument("--seed", type=int, default=0, help="sample and split seed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from workbench.capture import trace
    from workbench.models import load_model
    from workbench.probes.dataset import split
    from workbench.probes.evaluate import auroc
    from workbench.probes.tasks import label, scene_items

    loaded = load_model(args.model)
    items = [item for item in scene_items(Path(args.scenes)) if item.task != "scenes/caption"]
    random.Random(args.seed).shuffle(items)
    items = items[: args.n]
    features: dict[str, list] = {}
    labels, groups, logprobs = [], [], []
    for number, item in enumerate(items, 1):
        result = trace(loaded, item.prompt, item.image, max_new_tokens=4, maps="all", map_dtype="float32")
        start, end = int(result.generation["start"]), int(result.generation["end"])
        labels.append(label(item, [token.text for token in result.tokens[start:end]]).label)
        groups.append(item.group)
        logprobs.append(float(result.tensor("outputs.next_token_logprob")[start - 1]))
        for name, values in row_features(result).items():
            features.setdefault(name, []).append(values)
        if number % 200 == 0 or number == len(items):
            print(f"  traced {number}/{len(items)}", file=sys.stderr, flush=True)
    y, test = np.array(labels), split(np.array(groups), seed=args.seed, test_fraction=0.25)
    print(f"{len(y)} questions ({y.sum()} hallucinated); held out: {test.sum()} ({y[test].sum()} hallucinated)")
    print("| features of the answer-predicting row | held-out AUROC |\n|---|---:|")
    print(f"| log-probability of the answer token (baseline) | {auroc(y[test], -np.array(logprobs)[test]):.3f} |")
    features["all of the above"] = [np.concatenate(parts) for parts in zip(*features.values(), strict=True)]
    for name, values in features.items():
        x = np.array(values)
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1)).fit(x[~test], y[~test])
        print(f"| {name} ({x.shape[1]} features) | {auroc(y[test], probe.predict_proba(x[test])[:, 1]):.3f} |")


if __name__ == "__main__":
    main()
