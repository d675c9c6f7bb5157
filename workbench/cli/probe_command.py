"""`workbench probe build|train|eval`: hallucination datasets from traces, detectors trained and measured on them."""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from workbench.cli.progress import throughput_bars
from workbench.errors import InputError

probe_app = typer.Typer(help="Hallucination probes: build a dataset from traces, train Lookback Lens / graph "
                             "detectors, measure held-out AUROC (docs/probes.md).", no_args_is_help=True)

TASKS = ("kv", "facts")
MAX_SEED = 2**31 - 1  # numpy seeds must fit 32 bits, and the split derives seed + 1000 from it


def _command() -> str:
    return "workbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _write_json(target: Optional[Path], data: dict) -> None:
    """Strict JSON of a report (numpy numbers as plain ones) to `target`, checked before the work."""
    from workbench.cli.paths import write_json

    write_json(target, data, default=float)


@probe_app.command("build")
def build(
    model: str = typer.Option(..., "--model", "-m", help="Model to trace (smollm2, llava-scenes, a directory...)."),
    out: Path = typer.Option(..., "--out", "-o", help="The dataset table to write (NAME.parquet)."),
    task: Optional[str] = typer.Option(None, "--task", help="Text task generated or shipped: kv or facts."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSONL of key-value prompts with ground truth "
                                                                   "(prompt, answer, answerable)."),
    scenes: Optional[Path] = typer.Option(None, "--scenes", help="Held-out scene folder (scenes.jsonl + "
                                                                 "questions.jsonl + images/), e.g. data/scenes."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Trace a seeded sample of about this many inputs "
                                                              "(whole scenes)."),
    n: int = typer.Option(200, "--n", help="How many prompts to generate for --task kv/facts when none are shipped."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample and of generated prompts."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", "-n",
                                                 help="Tokens to generate [default: 20 for scenes, 16 for text]."),
    top_k: int = typer.Option(4, "--top-k", help="Top-k keys per query kept for the attention graph."),
    edges_per_node: int = typer.Option(8, "--edges-per-node", help="Attention-graph edges kept per token."),
    embed: bool = typer.Option(True, "--embed/--no-embed", help="Add MiniLM embeddings of question + answer."),
    vhd: bool = typer.Option(False, "--vhd", help="Also VHD / T-VHD per token (VLMs; two extra forwards per token)."),
    reference_lookback: bool = typer.Option(False, "--reference-lookback",
                                            help="Also capture what the released Lookback Lens convention needs on "
                                                 "chat-template inputs (--variant reference): the decomposition "
                                                 "tensors; slower."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads [default: the usable CPUs "
                                                                  "minus the load average, at least 1]."),
    force: bool = typer.Option(False, "--force", help="Replace an existing table."),
    batch_size: int = typer.Option(8, "--batch-size", help="Inputs traced together in one left-padded forward (each "
                                                           "row as if traced alone; fewer where their logits would "
                                                           "outgrow one long prompt's; --reference-lookback traces "
                                                           "one at a time)."),
) -> None:
    """Trace inputs with known answers and write per-token features + labels to one Parquet table."""
    from workbench import option_checks as options
    from workbench.probes import dataset, tasks

    if sum(x is not None for x in (task, prompts, scenes)) > 1:
        raise InputError("give one of --task kv|facts, --prompts FILE.jsonl or --scenes FOLDER")
    if task is not None and task not in TASKS:
        raise InputError(f"unknown --task {task[:40]!r}; use kv or facts (or --scenes FOLDER for images)")
    # Every number is checked before the inputs are read or the model loads.
    options.count("--limit", limit, low=1)
    options.count("--n", n, low=1, high=1_000_000)
    options.count("--seed", seed, high=MAX_SEED)
    options.count("--max-new-tokens", max_new_tokens, low=1, high=100_000)
    options.count("--top-k", top_k, low=1, high=1_000_000)  # the attention graph is built from the top-k lists
    options.count("--edges-per-node", edges_per_node, low=1, high=1_000_000)
    options.count("--threads", threads, low=1, high=4096)
    options.count("--batch-size", batch_size, low=1, high=4096)
    dataset.check_output(out, force)
    if scenes is not None:
        items = tasks.scene_items(scenes)
    elif prompts is not None:
        items = tasks.kv_items(prompts)
    elif task == "facts":
        items = tasks.facts_items(n=n, seed=seed)
    else:
        from workbench.models.registry import data_root

        shipped = data_root() / "prompts" / "kv_retrieval.jsonl"
        items = tasks.kv_items(shipped) if shipped.is_file() and n == 200 and seed == 0 else \
            tasks.kv_items(None, n=n, seed=seed)
    items = tasks.sample(items, limit, seed)
    new_tokens = max_new_tokens if max_new_tokens is not None else (20 if scenes is not None else 16)
    from workbench.cli.printing import SafeConsole
    from workbench.models import load_model
    from workbench.threads import apply_threads

    apply_threads(threads)
    console = SafeConsole(stderr=True, soft_wrap=True)
    with console.status(f"loading {model}"):
        loaded = load_model(model)
    if scenes is not None and loaded.kind != "vlm":
        raise InputError(f"{loaded.name} is a text-only model and cannot answer questions about scenes; use a "
                         "vision-language model (--model llava-scenes)")
    with throughput_bars() as bars:
        handles = {}

        def on_start(stage: str, total: int) -> None:
            label = {"trace": f"tracing {len(items)} inputs", "embed": "MiniLM embeddings"}[stage]
            handles[stage] = bars.add_task(label, total=total, unit="inputs" if stage == "trace" else "texts",
                                           tokens=0)

        def on_advance(stage: str, done: int, tokens: int) -> None:
            bars.update(handles[stage], completed=done, tokens=tokens)

        meta = dataset.build(loaded, items, out, max_new_tokens=new_tokens, top_k=top_k, edges_per_node=edges_per_node,
                             embed=embed, vhd=vhd, reference_lookback=reference_lookback, force=force,
                             command=_command(), batch_size=batch_size, on_start=on_start,
                             on_advance=on_advance)
    data = dataset.load(out)
    labels = data.labels
    by_task: dict[str, list[int]] = {}
    for name, label in zip(data.tasks, labels):
        by_task.setdefault(name, []).append(int(label))
    console.print(f"{out}: {len(data)} generations by {meta['model']} ({meta['layers']} layers x "
                  f"{meta['heads']} heads), {int(labels.sum())} hallucinated")
    for name, values in sorted(by_task.items()):
        console.print(f"  {name}: {len(values)} ({sum(values)} hallucinated)")


@probe_app.command("train")
def train(
    data_path: Path = typer.Option(..., "--data", "-d", help="Dataset table from `workbench probe build`."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to save the probe (NAME.probe; safetensors + JSON)."),
    detector: str = typer.Option("lookback", "--detector", help="lookback, nonkes or attention-graph."),
    features: str = typer.Option("span", "--features", help="Lookback Lens: span (span-mean) or window."),
    window: int = typer.Option(8, "--window", help="Lookback Lens sliding-window length."),
    span: str = typer.Option("answer", "--span", help="Span-mean over the whole answer or over each claim run."),
    variant: str = typer.Option("context", "--variant", help="Lookback context: context, image_prompt, image, prompt; "
                                                            "reference (the released code's convention: response "
                                                            "header counted as new tokens, undefined first ratio left "
                                                            "out); or share_image / vhd features (not Lookback Lens)."),
    c: str = typer.Option("auto", "--C", help="Logistic-regression C, or auto (grouped CV on the training split)."),
    embedding: str = typer.Option("hidden", "--embedding", help="Nonkes node embedding: hidden or minilm."),
    hidden_layer: Optional[int] = typer.Option(None, "--hidden-layer", help="Layer of the hidden embedding [L // 2]."),
    edges: str = typer.Option("threshold", "--edges", help="Nonkes edges: threshold (cosine) or knn."),
    threshold: float = typer.Option(0.85, "--threshold", help="Cosine threshold of a Nonkes edge."),
    k: int = typer.Option(10, "--k", help="Neighbours per node for --edges knn."),
    contrastive: bool = typer.Option(True, "--contrastive/--no-contrastive", help="Nonkes InfoNCE pre-training."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="GNN epochs [nonkes 300, attention-graph 40]."),
    tasks: Optional[str] = typer.Option(None, "--tasks",
                                        help="Train on these task prefixes only, e.g. scenes/presence."),
    seed: int = typer.Option(0, "--seed", help="Split and training seed."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of groups held out."),
    shuffle_labels: bool = typer.Option(False, "--shuffle-labels", help="Leakage check: permute labels first."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON here ('-': stdout)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing probe file."),
) -> None:
    """Train a detector on the training groups of a dataset and report its held-out AUROC."""
    from workbench.cli.paths import check_json_output
    from workbench.probes import dataset
    from workbench.probes.probe import train as run_train
    from workbench.probes.store import check_output_path

    out = check_output_path(out, force=force)
    json_out = check_json_output(json_out, force=force)
    chosen = _train_options(detector, c=c, features=features, window=window, span=span, variant=variant,
                            embedding=embedding, hidden_layer=hidden_layer, edges=edges, threshold=threshold, k=k,
                            contrastive=contrastive, epochs=epochs, seed=seed, test_fraction=test_fraction)
    data = dataset.load(data_path)
    from workbench.cli.printing import SafeConsole

    console = SafeConsole(stderr=True, soft_wrap=True)
    with console.status(f"training {detector} on {data_path}"):
        probe, report = run_train(data, detector, seed=seed, test_fraction=test_fraction, tasks=tasks,
                                  shuffle_labels=shuffle_labels, **chosen)
    probe.config["command"] = _command()
    probe.save(out, force=force)
    _print_report(console, f"{detector} -> {out}", report)
    _write_json(json_out, {"probe": str(out), "config": {k: v for k, v in probe.config.items() if k != "metrics"},
                           "report": report})


def _train_options(detector: str, *, c: str, features: str, window: int, span: str, variant: str, embedding: str,
                   hidden_layer: int | None, edges: str, threshold: float, k: int, contrastive: bool,
                   epochs: int | None, seed: int, test_fraction: float) -> dict:
    """Check every option of `probe train` before the dataset loads; the detector's keyword options."""
    from workbench import option_checks as options

    def one_of(option: str, value: str, choices: tuple[str, ...]) -> None:
        if value not in choices:
            raise InputError(f"unknown {option} {value[:40]!r}; use {', '.join(choices)}")

    one_of("--detector", detector, ("lookback", "nonkes", "attention-graph"))
    options.real("--test-fraction", test_fraction, above=0, high=1)
    if test_fraction == 1:
        raise InputError("--test-fraction must be below 1: some groups must be left to train on")
    options.count("--seed", seed, high=MAX_SEED)
    options.count("--epochs", epochs, low=1, high=100_000)
    if detector == "lookback":
        one_of("--features", features, ("span", "window"))
        one_of("--span", span, ("answer", "claims"))
        options.count("--window", window, low=1, high=100_000)
        return dict(features=features, variant=variant, window=window, span=span, C=_regularisation(c))
    if detector == "nonkes":
        one_of("--embedding", embedding, ("hidden", "minilm"))
        one_of("--edges", edges, ("threshold", "knn"))
        options.count("--hidden-layer", hidden_layer, high=100_000)  # the model's depth is checked with the data
        options.real("--threshold", threshold, low=-1, high=1)  # a cosine similarity
        options.count("--k", k, low=1, high=100_000)
        return dict(embedding=embedding, hidden_layer=hidden_layer, edges=edges, threshold=threshold, k=k,
                    contrastive=contrastive, **({"epochs": epochs} if epochs else {}))
    return {"epochs": epochs} if epochs else {}


def _regularisation(c: str) -> float | str:
    """--C: auto, or a finite positive number (C is an inverse regularisation strength)."""
    if c == "auto":
        return c
    try:
        value = float(c)
    except ValueError:
        raise InputError(f"--C takes a positive number or auto, not {c[:40]!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"--C must be a finite number above 0 (or auto), not {c[:40]}")
    return value


@probe_app.command("eval")
def evaluate(
    probe_paths: list[Path] = typer.Option(..., "--probe", "-p",
                                           help="Probe file(s); repeat for a side-by-side table."),
    data_path: Path = typer.Option(..., "--data", "-d", help="Dataset table (the training one: held-out split; "
                                                              "another: every row, i.e. transfer)."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Evaluate on these task prefixes [the probe's own]."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON here ('-': stdout)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """Held-out (or transfer) AUROC of trained probes, with the probability baselines beside Lookback Lens."""
    from workbench.cli.paths import check_json_output
    from workbench.cli.printing import SafeConsole
    from workbench.probes import dataset
    from workbench.probes.probe import Probe

    json_out = check_json_output(json_out, force=force)
    probes = [(path, Probe.load(path)) for path in probe_paths]
    data = dataset.load(data_path)
    console = SafeConsole(stderr=True, soft_wrap=True)
    results = {}
    for path, probe in probes:
        result = probe.evaluate(data, tasks=tasks)
        results[str(path)] = {"detector": probe.detector, **result}
        _print_report(console, f"{path} ({probe.detector}) on {data_path}", {"eval": result})
    _write_json(json_out, {"data": str(data_path), "tasks": tasks, "results": results})


def _fmt(value) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def _print_report(console, title: str, report: dict) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("split", "examples", "hallucinated", "AUROC", "baselines (AUROC)"):
        table.add_column(column)
    for split_name, values in report.items():
        if not isinstance(values, dict) or "auroc" not in values:
            continue
        baselines = ", ".join(f"{k} {_fmt(v)}" for k, v in values.get("baselines", {}).items())
        label = split_name + (f" ({values['rows']})" if "rows" in values else "")
        table.add_row(label, str(values.get("n")), str(values.get("hallucinated")), _fmt(values["auroc"]), baselines)
        generation = values.get("generation")
        if generation:
            baselines = ", ".join(f"{k} {_fmt(v)}" for k, v in generation.get("baselines", {}).items())
            table.add_row("  per generation (max window)", str(generation["n"]), str(generation["hallucinated"]),
                          _fmt(generation["auroc"]), baselines)
    console.print(table)
    for split_name, values in report.items():
        if isinstance(values, dict) and values.get("auroc") is None and "n" in values:
            console.print(_no_auroc(split_name, values), markup=False, soft_wrap=True)


def _no_auroc(split_name: str, values: dict) -> str:
    """Why an AUROC is n/a (one class only in that split) and what to do about it."""
    missing = "hallucinated" if not values.get("hallucinated") else "grounded"
    advice = ("the held-out split takes whole groups (scenes, documents) by a seeded hash, so with few groups of "
              f"the rarer outcome it can miss them all: raise --test-fraction, try another --seed, or add "
              f"examples with {missing} answers") if split_name == "test" else (
              "evaluate on data that holds both outcomes (another --data or --tasks)")
    return f"{split_name} AUROC n/a: its {values['n']} examples hold no {missing} one; {advice}."
