"""Held-out AUROC of every hallucination detector side by side, on the same group splits of one dataset.

Rows: Lookback Lens (span-mean and sliding-window 8, each context variant the dataset has), the probability
and lookback baselines on the same spans, Nonkes et al. with GATv2 (mean hidden state and MiniLM node
embeddings), and the attention-graph detector. Each split seed re-draws which inputs (groups) are held out;
the table shows mean +- sd over seeds, and the generation-level AUROC (the comparable number for all rows:
a window probe scores a generation by its highest window). Optionally a transfer table: Lookback Lens
trained on this dataset, evaluated on every row of another dataset of the same model.

    workbench probe build --model smollm2 --task kv --out kv.parquet
    workbench probe build --model smollm2 --task facts --out facts.parquet
    python benchmarks/probes.py --data kv.parquet --transfer facts.parquet
    workbench probe build --model llava-scenes --scenes data/scenes --out scenes.parquet
    python benchmarks/probes.py --data scenes.parquet \
        --transfer-tasks scenes/presence:scenes/colour,scenes/shape,scenes/caption
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _mean_sd(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def lookback_rows(data, seeds, tasks) -> list[dict]:
    from workbench import probes

    from workbench.probes.lookback import OTHER_FEATURES

    rows = []
    for variant in [*data.meta["variants"], *(name for name in OTHER_FEATURES if data.has(name))]:
        for features in ("span", "window"):
            results, baselines, started = [], {}, time.perf_counter()
            for seed in seeds:
                _, report = probes.train(data, "lookback", features=features, variant=variant, seed=seed, tasks=tasks)
                test = report["test"]
                generation = test.get("generation", test)
                results.append((test["auroc"], generation["auroc"], test["n"], generation["n"],
                                generation["hallucinated"]))
                if features == "span" and variant == "context":
                    for name, value in test["baselines"].items():
                        baselines.setdefault(name, []).append(value)
            seconds = (time.perf_counter() - started) / len(seeds)
            how = "span-mean" if features == "span" else "sliding window 8"
            label = (f"Lookback Lens {how} ({variant})" if variant not in OTHER_FEATURES
                     else f"logistic regression on {variant}, {how} (not Lookback Lens)")
            rows.append({"detector": label, "example_auroc": [r[0] for r in results],
                         "generation_auroc": [r[1] for r in results], "examples": results[0][2],
                         "generations": results[0][3], "hallucinated": results[0][4], "seconds": seconds})
            for name, values in baselines.items():
                rows.append({"detector": f"baseline: {name} (answer span)", "example_auroc": values,
                             "generation_auroc": values, "examples": results[0][3], "generations": results[0][3],
                             "hallucinated": results[0][4], "seconds": 0.0})
    return rows


def graph_rows(data, seeds, tasks, *, skip_minilm: bool) -> list[dict]:
    from workbench import probes

    variants = [("Nonkes GATv2 (mean hidden state)", "nonkes", {"embedding": "hidden"})]
    if data.has("text_embedding") and not skip_minilm:
        variants.append(("Nonkes GATv2 (MiniLM question + answer)", "nonkes", {"embedding": "minilm"}))
    variants.append(("attention-graph GATv2 + pooling", "attention-graph", {}))
    rows = []
    for label, detector, options in variants:
        values, started, report = [], time.perf_counter(), None
        for seed in seeds:
            _, report = probes.train(data, detector, seed=seed, tasks=tasks, **options)
            values.append(report["test"]["auroc"])
        rows.append({"detector": label, "example_auroc": values, "generation_auroc": values,
                     "examples": report["test"]["n"], "generations": report["test"]["n"],
                     "hallucinated": report["test"]["hallucinated"],
                     "seconds": (time.perf_counter() - started) / len(seeds)})
    return rows


def transfer_rows(data, target, seeds, train_tasks, eval_tasks) -> list[dict]:
    from workbench import probes

    rows = []
    for features in ("span", "window"):
        values, baselines = [], {}
        for seed in seeds:
            probe, _ = probes.train(data, "lookback", features=features, seed=seed, tasks=train_tasks)
            result = probe.evaluate(target, tasks=eval_tasks)
            generation = result.get("generation", result)
            values.append(generation["auroc"])
            for name, value in (generation.get("baselines") or result["baselines"]).items():
                baselines.setdefault(name, []).append(value)
        rows.append({"detector": f"Lookback Lens {features} -> transfer", "generation_auroc": values,
                     "generations": generation["n"], "hallucinated": generation["hallucinated"],
                     "baselines": {k: float(np.mean([x for x in v if x is not None])) for k, v in baselines.items()
                                   if any(x is not None for x in v)}})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset built by `workbench probe build`")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="split seeds (Lookback Lens)")
    parser.add_argument("--gnn-seeds", type=int, nargs="+", default=[0, 1, 2], help="split seeds (graph detectors)")
    parser.add_argument("--tasks", default=None, help="task prefixes to train and test on (default all)")
    parser.add_argument("--transfer", default=None, help="another dataset of the same model: transfer target")
    parser.add_argument("--transfer-tasks", default=None,
                        help="TRAIN:EVAL task prefixes for a within-dataset transfer (held-out groups of EVAL)")
    parser.add_argument("--no-gnn", action="store_true", help="skip the graph detectors")
    parser.add_argument("--no-minilm", action="store_true", help="skip the MiniLM Nonkes variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write all numbers here")
    args = parser.parse_args(argv)
    import torch

    from workbench import probes

    torch.set_num_threads(args.threads)
    data = probes.load_dataset(args.data)
    labels = data.labels
    print(f"dataset {args.data}: {len(data)} generations by {data.meta['model']} ({data.meta['layers']} layers x "
          f"{data.meta['heads']} heads), {int(labels.sum())} hallucinated ({labels.mean():.1%}); "
          f"split by group, 20% of groups held out; seeds {args.seeds} (GNN {args.gnn_seeds}); "
          f"{os.cpu_count()} CPUs, torch threads {args.threads}")
    rows = lookback_rows(data, args.seeds, args.tasks)
    if not args.no_gnn:
        rows += graph_rows(data, args.gnn_seeds, args.tasks, skip_minilm=args.no_minilm)
    print("\n| detector | held-out examples | example AUROC | generation AUROC | train s / seed |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['detector']} | {row['examples']} ({row['hallucinated']} halluc. gens) | "
              f"{_mean_sd(row['example_auroc'])} | {_mean_sd(row['generation_auroc'])} | {row['seconds']:.1f} |")
    transfers = []
    if args.transfer:
        target = probes.load_dataset(args.transfer)
        transfers += [dict(r, target=args.transfer) for r in transfer_rows(data, target, args.seeds, args.tasks, None)]
    if args.transfer_tasks:
        train_tasks, _, eval_tasks = args.transfer_tasks.partition(":")
        transfers += [dict(r, target=f"held-out {eval_tasks}") for r in
                      transfer_rows(data, data, args.seeds, train_tasks, eval_tasks)]
    if transfers:
        print("\n| transfer | target | generations (halluc.) | generation AUROC | baselines on target |")
        print("|---|---|---|---|---|")
        for row in transfers:
            base = ", ".join(f"{k} {v:.3f}" for k, v in row["baselines"].items())
            print(f"| {row['detector']} | {row['target']} | {row['generations']} ({row['hallucinated']}) | "
                  f"{_mean_sd(row['generation_auroc'])} | {base} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"data": args.data, "rows": rows, "transfer": transfers}, handle, indent=1, default=float)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
