"""`workbench patch` and `workbench ablate`: activation patching and head ablation on prompt pairs (causal tools).

Every option, the pair file and the output path are checked before the model loads; token-level checks (answers
of one token, clean and corrupted of equal length) follow right after it, before the first forward.
"""

from __future__ import annotations

from pathlib import Path

import typer

from workbench.errors import InputError

METRIC_HELP = "'logit-diff' (answer minus distractor logit) or 'logprob' (log-probability of the answer)."


def parse_indices(text: str | None, option: str) -> list[int] | None:
    """'all' -> None; '0-3,5' -> [0, 1, 2, 3, 5]."""
    if text is None or text.strip() in ("all", "*", ""):
        return None
    values: set[int] = set()
    try:
        for part in text.split(","):
            start, dash, end = part.strip().partition("-")
            first, last = int(start), int(end) if dash else int(start)
            if not 0 <= first <= last <= 100_000:
                raise ValueError
            values.update(range(first, last + 1))
    except ValueError:
        raise InputError(f"cannot read {option} {text!r}; write indices and rising ranges like '0-3,5' or 'all'") from None
    return sorted(values)


def parse_positions(text: str, *, allow_each: bool = True):
    """'all', 'each' or token positions '3,7,-1' (negative: from the end)."""
    text = text.strip()
    if text == "all" or (allow_each and text == "each"):
        return text
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(abs(v) > 10_000_000 for v in values):
        shown = "'all', 'each'" if allow_each else "'all'"
        raise InputError(f"cannot read --positions {text!r}; give {shown} or token positions like '-1' or '3,7'")
    return values


def parse_heads(text: str | None) -> list[tuple[int, int]] | None:
    """'all' -> None; '1.2,0.3' -> [(1, 2), (0, 3)] (LAYER.HEAD)."""
    if text is None or text.strip() == "all":
        return None
    heads = []
    for part in text.split(","):
        layer, dot, head = part.strip().partition(".")
        if not dot or not layer.isdigit() or not head.isdigit() or len(part) > 12:
            raise InputError(f"cannot read --heads {text!r}; write LAYER.HEAD pairs like '1.2,0.3' or 'all'")
        heads.append((int(layer), int(head)))
    return heads


def _pairs(clean, corrupted, pairs_file, limit, answer, distractor, metric, *, need_corrupted: bool):
    from workbench import option_checks as check
    from workbench.analyses.causal.metrics import METRICS, Pair, check_metric, pair_from_record

    if metric not in METRICS:
        raise InputError(f"--metric takes {' or '.join(METRICS)}, not {metric!r}")
    check.count("--limit", limit, low=1)
    if (clean is None) == (pairs_file is None):
        raise InputError("give either a prompt (--clean / --prompt) or --pairs FILE.jsonl")
    if pairs_file is not None:
        from workbench.datasets.prompt_pairs import read_pairs

        pairs = [pair_from_record(r, answer=answer, distractor=distractor) for r in read_pairs(pairs_file, limit=limit)]
    else:
        pairs = [Pair(clean, corrupted, answer, distractor)]
    if need_corrupted and any(p.corrupted is None for p in pairs):
        raise InputError("patching needs a corrupted prompt: pass --corrupted (or 'corrupted' / 'io' and 's' in "
                         "each line of --pairs)")
    check_metric(metric, pairs)
    return pairs


def _bounds(model: str, layers, extra_layer: bool, heads) -> None:
    """Layer and head indices against the model's config, before its weights load (when the config is readable)."""
    from workbench.capture.layout import stack_shapes
    from workbench.models.loading import read_config

    config = read_config(model)
    if config is None:
        return
    n_layers, n_heads = stack_shapes(config)["text"][:2]
    n_sites = n_layers + (1 if extra_layer else 0)
    for layer in layers or []:
        if layer >= n_sites:
            raise InputError(f"layer {layer} does not exist: {model} has layers 0-{n_sites - 1} here")
    for head in heads or []:
        if head >= n_heads:
            raise InputError(f"head {head} does not exist: {model} has heads 0-{n_heads - 1}")


def _bundle(path: Path | None):
    """The bundle --store writes into, opened (and checked) before the model loads."""
    if path is None:
        return None
    import workbench

    return workbench.load(path)


def _finish(bundle, result, json_out) -> None:
    """Store into the bundle (--store), write --json, and end with the one line saying where the result went."""
    from workbench.cli.paths import store_result, where_results_went, write_json
    from workbench.cli.printing import SafeConsole

    data = result.to_json()
    stored = store_result(bundle, result.analysis, data) if bundle is not None else None
    write_json(json_out, data)
    if json_out is None or str(json_out) != "-":
        SafeConsole().print(where_results_went(stored, json_out), markup=False)


def _open(model: str, threads: int | None):
    from workbench.threads import apply_threads

    apply_threads(threads)
    from workbench.capture import Tracer
    from workbench.cli.printing import SafeConsole

    with SafeConsole(stderr=True).status(f"loading {model}"):
        return Tracer.open(model)


def _run_with_progress(run, description: str):
    from workbench.cli.progress import throughput_bars

    with throughput_bars() as bars:
        task = bars.add_task(description, total=None, unit="runs")
        return run(lambda done, total: bars.update(task, completed=done, total=total))


def patch(
    model: str = typer.Option(..., "--model", "-m", help="Registry name (see `workbench models`), local dir or hub id."),
    clean: str | None = typer.Option(None, "--clean", help="The clean prompt (fed as is, no chat template)."),
    corrupted: str | None = typer.Option(None, "--corrupted", help="The corrupted prompt (same token count)."),
    pairs_file: Path | None = typer.Option(None, "--pairs", help="JSONL of {prompt, corrupted, answer, distractor} "
                                                                  "(or IOI lines with io and s: names swapped)."),
    limit: int | None = typer.Option(None, "--limit", help="With --pairs: the first N lines."),
    answer: str | None = typer.Option(None, "--answer", help="The answer token, e.g. ' Mark' (lines of --pairs "
                                                              "may carry their own)."),
    distractor: str | None = typer.Option(None, "--distractor", help="The other token of the logit difference."),
    metric: str = typer.Option("logit-diff", "--metric", help=METRIC_HELP),
    what: str = typer.Option("heads", "--what", help="'heads' (each head's output), 'attn-out' (each layer's "
                                                      "attention output) or 'resid' (the residual stream entering "
                                                      "each layer, and after the last)."),
    direction: str = typer.Option("denoise", "--direction", help="'denoise' (clean into the corrupted run) or "
                                                                  "'noise' (corrupted into the clean run)."),
    positions: str = typer.Option("all", "--positions", help="'all' at once, 'each' one by one, or token positions "
                                                              "like '-1' or '3,7'."),
    layers: str | None = typer.Option(None, "--layers", help="Layers to patch, e.g. '0-3,5' [default: all]."),
    heads: str | None = typer.Option(None, "--heads", help="With --what heads: head indices, e.g. '0-2' [default: all]."),
    batch_size: int = typer.Option(8, "--batch-size", help="Patched runs per forward."),
    store: Path | None = typer.Option(None, "--store", help="Also store the result in this trace bundle "
                                                            "(results/NAME.json, e.g. a trace of the clean prompt)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON here ('-': stdout)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads [default: the usable CPUs minus "
                                                                "the load average, at least 1]."),
) -> None:
    """Activation patching: copy head outputs, attention outputs or residual streams between a clean and a corrupted run."""
    from workbench import option_checks as check
    from workbench.analyses.causal import patching
    from workbench.cli.paths import check_json_output

    pairs = _pairs(clean, corrupted, pairs_file, limit, answer, distractor, metric, need_corrupted=True)
    chosen_positions = parse_positions(positions)
    patching.check_options(what=what, direction=direction, positions=chosen_positions)
    chosen_layers, chosen_heads = parse_indices(layers, "--layers"), parse_indices(heads, "--heads")
    if chosen_heads is not None and what != "heads":
        raise InputError("--heads applies to --what heads only")
    check.count("--batch-size", batch_size, low=1, high=4096)
    check.count("--threads", threads, low=1, high=4096)
    json_out = check_json_output(json_out, force=force)
    bundle = _bundle(store)
    _bounds(model, chosen_layers, what == "resid", chosen_heads)
    tracer = _open(model, threads)
    result = _run_with_progress(lambda progress: patching.analyse(
        tracer, pairs, metric=metric, what=what, direction=direction, positions=chosen_positions,
        layers=chosen_layers, heads=chosen_heads, batch_size=batch_size, progress=progress), "patching")
    _print_patching(result)
    _finish(bundle, result, json_out)


def ablate(
    model: str = typer.Option(..., "--model", "-m", help="Registry name (see `workbench models`), local dir or hub id."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="The prompt (fed as is, no chat template)."),
    corrupted: str | None = typer.Option(None, "--corrupted", help="A corrupted prompt: the baseline of the "
                                                                    "normalised effect, and the source of resample "
                                                                    "ablation."),
    pairs_file: Path | None = typer.Option(None, "--pairs", help="JSONL of {prompt, corrupted?, answer, distractor}."),
    limit: int | None = typer.Option(None, "--limit", help="With --pairs: the first N lines."),
    answer: str | None = typer.Option(None, "--answer", help="The answer token, e.g. ' Mark'."),
    distractor: str | None = typer.Option(None, "--distractor", help="The other token of the logit difference."),
    metric: str = typer.Option("logit-diff", "--metric", help=METRIC_HELP),
    method: str = typer.Option("zero", "--method", help="'zero', 'mean' (over --reference) or 'resample' (from the "
                                                        "corrupted prompt)."),
    heads: str | None = typer.Option(None, "--heads", help="LAYER.HEAD list, e.g. '1.2,0.3' [default: every head]."),
    together: bool = typer.Option(False, "--together", help="Ablate the chosen heads together in one run."),
    reference: Path | None = typer.Option(None, "--reference", help="JSONL of prompts whose mean head outputs "
                                                                     "--method mean uses."),
    positions: str = typer.Option("all", "--positions", help="'all' or token positions like '-1' or '3,7'."),
    batch_size: int = typer.Option(8, "--batch-size", help="Ablated runs per forward."),
    store: Path | None = typer.Option(None, "--store", help="Also store the result in this trace bundle "
                                                            "(results/NAME.json, e.g. a trace of the clean prompt)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON here ('-': stdout)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads [default: the usable CPUs minus "
                                                                "the load average, at least 1]."),
) -> None:
    """Head ablation: zero-, mean- or resample-ablate heads one at a time (or together) and measure the metric."""
    from workbench import option_checks as check
    from workbench.analyses.causal import ablation
    from workbench.cli.paths import check_json_output

    pairs = _pairs(prompt, corrupted, pairs_file, limit, answer, distractor, metric, need_corrupted=False)
    if method not in ablation.METHODS:
        raise InputError(f"--method takes {', '.join(ablation.METHODS)}, not {method!r}")
    if (method == "mean") != (reference is not None):
        raise InputError("--method mean needs --reference FILE.jsonl (and --reference only applies to it)")
    if method == "resample" and any(p.corrupted is None for p in pairs):
        raise InputError("--method resample takes head outputs from the corrupted prompt: pass --corrupted")
    chosen_heads = parse_heads(heads)
    chosen_positions = parse_positions(positions, allow_each=False)
    check.count("--batch-size", batch_size, low=1, high=4096)
    check.count("--threads", threads, low=1, high=4096)
    references = []
    if reference is not None:
        from workbench.cli.trace_command import read_prompts

        references = [item["prompt"] for item in read_prompts(reference)]
    json_out = check_json_output(json_out, force=force)
    bundle = _bundle(store)
    _bounds(model, [layer for layer, _ in chosen_heads or []], False, [head for _, head in chosen_heads or []])
    tracer = _open(model, threads)
    result = _run_with_progress(lambda progress: ablation.analyse(
        tracer, pairs, metric=metric, method=method, heads=chosen_heads, together=together, positions=chosen_positions,
        reference=references, batch_size=batch_size, progress=progress), "ablation")
    _print_ablation(result)
    _finish(bundle, result, json_out)


def _print_patching(result) -> None:
    from workbench.cli.printing import SafeConsole

    console = SafeConsole()
    options = result.options
    console.print(f"patching {result.model} ({options['what']}, {options['direction']}, {options['metric']} over "
                  f"{len(result.pairs)} pair(s)): clean {result.clean:.4f}, corrupted {result.corrupted:.4f}; "
                  f"{result.cost['runs']} runs in {result.cost['seconds']:.2f} s")
    top = result.ranking(10)
    console.print("largest effects: " + ", ".join(
        f"L{r['layer']}" + (f"H{r['head']}" if r["head"] >= 0 else "")
        + ("" if r["positions"] is None else f"@{','.join(map(str, r['positions']))}") + f" {r['effect']:.3f}"
        for r in top))


def _print_ablation(result) -> None:
    import numpy as np

    from workbench.cli.printing import SafeConsole

    console = SafeConsole()
    options = result.options
    baseline = "" if result.corrupted is None else f", corrupted {result.corrupted:.4f}"
    console.print(f"ablation {result.model} ({options['method']}, {options['metric']} over {len(result.prompts)} "
                  f"prompt(s)): clean {result.clean:.4f}{baseline}")
    order = np.argsort(result.change, kind="stable")[:10]
    console.print("largest drops: " + ", ".join(
        "+".join(f"L{l}H{h}" for l, h in result.runs[i]) + f" {result.ablated[i]:.3f} ({result.change[i]:+.3f})"
        for i in order))
