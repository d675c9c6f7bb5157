"""`workbench lens` (logit lens and direct logit attribution at one position) and `workbench importance` (head
importance, Michel et al. 2019, and its pruning curve).

Options, files, the bundle and the output path are checked before the model loads; what needs the tokenizer (the
position inside a prompt, a target of one token) is checked right after it, before the first forward.
"""

from __future__ import annotations

from pathlib import Path

import typer

from workbench.errors import InputError


def _open(model: str, threads: int | None, dtype: str = "float32"):
    from workbench.threads import apply_threads

    apply_threads(threads)
    from workbench.capture import Tracer
    from workbench.cli.printing import SafeConsole

    with SafeConsole(stderr=True).status(f"loading {model}"):
        return Tracer.open(model, dtype=dtype)


def lens(
    bundle: Path | None = typer.Argument(None, help="A NAME.wbtrace folder: its tokens are run through its model "
                                                       "(or --model). Or give --model and --prompt instead."),
    model: str | None = typer.Option(None, "--model", "-m", help="Registry name, local dir or hub id."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="The prompt (fed as is, no chat template)."),
    pos: int = typer.Option(-1, "--pos", help="Token position whose prediction to read (-1 = the last)."),
    target: str | None = typer.Option(None, "--target", help="The target token as text, e.g. ' Paris' (one token) "
                                                                "[default: the model's top prediction]."),
    top: int = typer.Option(10, "--top", help="Top tokens listed per layer."),
    scale: str = typer.Option("final", "--scale", help="'final': components scaled by the final residual's norm "
                                                       "scale (TransformerLens's default; they sum to the logit) or "
                                                       "'recompute': each component through the norm on its own."),
    store: bool = typer.Option(True, "--store/--no-store", help="With a bundle: write results/lens.json into it."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON here ('-': stdout)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads [default: the usable CPUs minus "
                                                                  "the load average, at least 1]."),
) -> None:
    """Logit lens per layer and direct logit attribution per head for one position's prediction."""
    from workbench import option_checks as check
    from workbench.analyses import lens as analysis
    from workbench.cli.paths import check_json_output

    if scale not in analysis.SCALES:
        raise InputError(f"--scale takes {' or '.join(analysis.SCALES)}, not {scale!r}")
    check.count("--top", top, low=1, high=1000)
    check.count("--threads", threads, low=1, high=4096)
    check.count("--pos", abs(pos), high=10_000_000)
    if target is not None and not target:
        raise InputError("--target is empty; give the token as text, e.g. ' Paris'")
    json_out = check_json_output(json_out, force=force)
    trace, ids = None, None
    if bundle is not None:
        if prompt is not None:
            raise InputError("give a bundle or --prompt, not both (a bundle's own tokens are run)")
        import torch

        import workbench

        trace = workbench.load(bundle)
        if "vision" in trace.stacks:
            raise InputError("the lens reads text-only bundles; this one holds an image")
        n = len(trace.tokens)
        if not -n <= pos < n:
            raise InputError(f"--pos {pos} is outside the bundle's {n} tokens (0..{n - 1}, or -1 for the last)")
        model = model or trace.model.get("name")
        if not model:
            raise InputError("the bundle names no model; pass the traced model with --model")
        ids = torch.tensor([[token.id for token in trace.tokens]])
    elif model is None or prompt is None:
        raise InputError("give a bundle, or --model and --prompt")
    elif not prompt.strip():
        raise InputError("--prompt is empty")
    tracer = _open(str(model), threads, dtype=trace.model.get("dtype", "float32") if trace is not None else "float32")
    result = analysis.analyse(tracer, None if ids is not None else prompt, ids=ids, position=pos, target=target,
                              scale=scale, top=top)
    _finish(trace if store else None, result, json_out, lambda: _print_lens(result))


def importance(
    model: str = typer.Option(..., "--model", "-m", help="Registry name, local dir or hub id."),
    prompts: Path = typer.Option(..., "--prompts", help="JSONL of prompts ({\"prompt\": ...} per line)."),
    limit: int | None = typer.Option(None, "--limit", help="The first N prompts."),
    normalise: str = typer.Option("layer", "--normalise", help="'layer' (each layer's scores divided by their L2 "
                                                               "norm, as the paper's released code) or 'none'."),
    curve: bool = typer.Option(False, "--curve", help="Also the pruning curve: loss and accuracy as heads are "
                                                      "zero-ablated in importance order."),
    order: str = typer.Option("least", "--order", help="Curve: remove the 'least' important first (the paper) or "
                                                       "the 'most' important first."),
    store: Path | None = typer.Option(None, "--store", help="Also store the result in this trace bundle "
                                                            "(results/importance.json), for the app's Causal view."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON here ('-': stdout)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads [default: the usable CPUs minus "
                                                                  "the load average, at least 1]."),
) -> None:
    """Head importance (Michel et al. 2019): mean |dL/dm_h| through a head mask, and the pruning curve."""
    from workbench import option_checks as check
    from workbench.analyses import importance as analysis
    from workbench.cli.paths import check_json_output
    from workbench.cli.trace_command import read_prompts

    if normalise not in analysis.NORMALISE:
        raise InputError(f"--normalise takes {' or '.join(analysis.NORMALISE)}, not {normalise!r}")
    if order not in analysis.ORDERS:
        raise InputError(f"--order takes {' or '.join(analysis.ORDERS)}, not {order!r}")
    check.count("--limit", limit, low=1)
    check.count("--threads", threads, low=1, high=4096)
    json_out = check_json_output(json_out, force=force)
    texts = [item["prompt"] for item in read_prompts(prompts)][:limit]
    if not texts:
        raise InputError(f"{prompts} holds no prompt")
    bundle = None
    if store is not None:  # opened (and checked) before the model loads
        import workbench

        bundle = workbench.load(store)
    tracer = _open(model, threads)
    from workbench.cli.progress import progress_bars

    with progress_bars() as bars:
        tasks = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task("gradients (prompts)" if stage == "gradients" else "pruning curve",
                                             total=total)
            bars.update(tasks[stage], completed=done, total=total)

        result = analysis.analyse(tracer, texts, normalise=normalise, curve=curve, order=order, progress=progress)
    _finish(bundle, result, json_out, lambda: _print_importance(result))


def _finish(trace, result, json_out, summary) -> None:
    from workbench.cli.paths import is_stdout, store_result, where_results_went, write_json
    from workbench.cli.printing import SafeConsole

    data = result.to_json()
    stored = store_result(trace, result.analysis, data) if trace is not None else None
    write_json(json_out, data)
    if not is_stdout(json_out):
        summary()
        SafeConsole().print(where_results_went(stored, json_out), markup=False)


def _print_lens(result) -> None:
    import numpy as np

    from workbench.cli.printing import SafeConsole

    console = SafeConsole()
    target = result.target
    console.print(f"lens {result.model}, position {result.position} ({result.token!r}), target {target['text']!r} "
                  f"(id {target['id']}, {target['chosen']}): logit {result.logit:.4f}", markup=False)
    for row in result.layers:
        shown = ", ".join(f"{text!r} {p:.3f}" for text, p in row["top"][:5])
        console.print(f"  {row['label']:<22} target rank {row['target_rank']:>6} p {row['target_probability']:.4f}"
                      f" | {shown}", markup=False)
    order = np.argsort(-np.abs(result.heads), axis=None, kind="stable")[:8]
    heads = ", ".join(f"L{i // result.heads.shape[1]}H{i % result.heads.shape[1]} "
                      f"{result.heads.flat[i]:+.3f}" for i in order)
    console.print(f"direct logit ({result.options['scale']} scale): heads {heads}; MLPs {result.mlp.sum():+.3f}, "
                  f"embedding {result.embed:+.3f}, attention biases {result.attn_bias.sum():+.3f}, offset "
                  f"{result.offset:+.3f}; sum {result.total:.4f}", markup=False)


def _print_importance(result) -> None:
    from workbench.cli.printing import SafeConsole

    console = SafeConsole()
    console.print(f"importance {result.model} over {result.n_prompts} prompt(s) (loss {result.loss:.4f}, normalised "
                  f"{result.options['normalise']}):", markup=False)
    console.print("most important: " + ", ".join(f"L{l}H{h} {result.scores[l, h]:.4f}"
                                                 for l, h in result.ranking[:10]), markup=False)
    if result.curve is not None:
        console.print(f"pruning curve ({result.options['order']} important first): " + ", ".join(
            f"{point['removed']}: {point['loss']:.3f}/{point['accuracy']:.2f}" for point in result.curve)
            + " (heads removed: loss/accuracy)", markup=False)
