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
import sys
import time

import numpy as np


def _mean_sd(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def subset_rows(data, seed, tasks, subset) -> np.ndarray:
    """Held-out rows of the split seed whose subtype contains `subset` (e.g. answers that state a number)."""
    from workbench.probes.dataset import split
    from workbench.probes.evaluate import task_mask

    wanted = np.array([subset in str(s) for s in data.column("subtype")])
    return np.nonzero(split(data.groups, seed=seed) & task_mask(data.tasks, tasks) & wanted)[0]


def lookback_subset(probe, data, rows, features, variant) -> tuple[float | None, dict]:
    """Generation-level AUROC of a Lookback probe and of the baselines on the given rows."""
    from workbench.probes.evaluate import auroc, generation_level
    from workbench.probes.lookback import examples

    if not len(rows):
        return None, {}
    ex = examples(data, features=features, variant=variant, rows=rows)
    scores = {"probe": probe.lookback().score(ex.X), **ex.baselines}
    out = {}
    for name, values in scores.items():
        if features == "window":
            values, y = generation_level(ex, values, data.labels)
        else:
            y = ex.y
        out[name] = auroc(y, values)
    return out.pop("probe"), out


def _done(label: str, values: list, seconds: float) -> None:
    """One stderr line per finished detector: the full run takes minutes (graph detectors: ~4 min a seed)."""
    print(f"  done: {label}: AUROC {_mean_sd(values)} ({seconds:.1f} s per seed)", file=sys.stderr, flush=True)


def lookback_rows(data, seeds, tasks, subset=None) -> list[dict]:
    from workbench.probes.lookback import OTHER_FEATURES

    from workbench import probes

    rows = []
    for variant in [*data.meta["variants"], *(name for name in OTHER_FEATURES if data.has(name))]:
        for mode in ("span", "claims", "window"):
            features, span = ("span", mode) if mode == "claims" else (mode, "answer")
            if mode == "claims" and variant not in ("context", "image"):
                continue
            results, baselines, started, sub, sub_base = [], {}, time.perf_counter(), [], {}
            for seed in seeds:
                probe, report = probes.train(data, "lookback", features=features, variant=variant, seed=seed,
                                             tasks=tasks, span=span)
                test = report["test"]
                generation = test.get("generation", test)
                results.append((test["auroc"], generation["auroc"], test["n"], generation["n"],
                                generation["hallucinated"]))
                if features == "span" and variant == "context":
                    for name, value in test["baselines"].items():
                        baselines.setdefault(name, []).append(value)
                if subset and mode != "claims":
                    value, base = lookback_subset(probe, data, subset_rows(data, seed, tasks, subset), features,
                                                  variant)
                    sub.append(value)
                    for name, b in base.items():
                        sub_base.setdefault(name, []).append(b)
            seconds = (time.perf_counter() - started) / len(seeds)
            how = {"span": "span-mean", "claims": "span-mean over claims", "window": "sliding window 8"}[mode]
            label = (f"Lookback Lens {how} ({variant})" if variant not in OTHER_FEATURES
                     else f"logistic regression on {variant}, {how} (not Lookback Lens)")
            rows.append({"detector": label, "example_auroc": [r[0] for r in results],
                         "generation_auroc": [r[1] for r in results] if mode != "claims" else [],
                         "examples": results[0][2],
                         "generations": results[0][3], "hallucinated": results[0][4], "seconds": seconds,
                         "subset_auroc": sub})
            _done(label, [r[0] for r in results], seconds)
            where = "claims" if mode == "claims" else "answer span"
            for name, values in baselines.items():
                rows.append({"detector": f"baseline: {name} ({where})", "example_auroc": values,
                             "generation_auroc": values if mode != "claims" else [], "examples": results[0][2],
                             "generations": results[0][3],
                             "hallucinated": results[0][4], "seconds": 0.0, "subset_auroc": sub_base.get(name, [])})
    return rows


def graph_rows(data, seeds, tasks, *, skip_minilm: bool, subset=None) -> list[dict]:
    from workbench.probes.evaluate import auroc

    from workbench import probes

    variants = [("Nonkes GATv2 (mean hidden state)", "nonkes", {"embedding": "hidden"})]
    if data.has("text_embedding") and not skip_minilm:
        variants.append(("Nonkes GATv2 (MiniLM question + answer)", "nonkes", {"embedding": "minilm"}))
    variants.append(("attention-graph GATv2 + pooling", "attention-graph", {}))
    rows = []
    for label, detector, options in variants:
        values, seconds, first, sub = [], 0.0, None, []
        for seed in seeds:
            started = time.perf_counter()
            probe, report = probes.train(data, detector, seed=seed, tasks=tasks, **options)
            seconds += time.perf_counter() - started
            values.append(report["test"]["auroc"])
            first = first or report["test"]
            if subset:
                chosen = subset_rows(data, seed, tasks, subset)
                sub.append(auroc(data.labels[chosen], probe.score_rows(data, chosen)) if len(chosen) else None)
        rows.append({"detector": label, "example_auroc": values, "generation_auroc": values,
                     "examples": first["n"], "generations": first["n"],
                     "hallucinated": first["hallucinated"], "seconds": seconds / len(seeds),
                     "subset_auroc": sub})
        _done(label, values, seconds / len(seeds))
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
    parser.add_argument("--subset", default=None,
                        help="also report AUROC on held-out rows whose subtype contains this (e.g. 'number': the "
                             "answers that state a number, where format alone cannot separate the classes)")
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
    rows = lookback_rows(data, args.seeds, args.tasks, args.subset)
    if not args.no_gnn:
        rows += graph_rows(data, args.gnn_seeds, args.tasks, skip_minilm=args.no_minilm, subset=args.subset)
    extra = f" | generation AUROC, subtype ~ {args.subset!r}" if args.subset else ""
    print(f"\n| detector | held-out examples, first seed | example AUROC | generation AUROC{extra} | train s / seed |")
    print("|---|---|---|---|" + ("---|" if args.subset else "") + "---|")
    for row in rows:
        cell = f" | {_mean_sd(row['subset_auroc'])}" if args.subset else ""
        print(f"| {row['detector']} | {row['examples']} ({row['hallucinated']} halluc.) | "
              f"{_mean_sd(row['example_auroc'])} | {_mean_sd(row['generation_auroc'])}{cell} | "
              f"{row['seconds']:.1f} |")
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
