"""`workbench rollout` (attention rollout / flow, Abnar & Zuidema 2020) and `workbench funnel` (PyramidKV's funnel)."""

from __future__ import annotations

from pathlib import Path

import typer

from workbench.errors import InputError


def _tracer_for(trace, model: str | None):
    """A Tracer of the bundle's model (or --model), loaded only when the bundle lacks the maps an analysis needs."""
    from workbench.capture import Tracer
    from workbench.cli.printing import SafeConsole

    name = model or trace.model.get("name")
    if not name:
        raise InputError("the bundle names no model; pass the traced model with --model")
    with SafeConsole(stderr=True).status(f"loading {name} to recompute the attention maps"):
        return Tracer.open(str(name), dtype=trace.model.get("dtype", "float32"))


def _finish(trace, name: str, data: dict, json_out, store: bool, summary) -> None:
    from workbench.cli.paths import is_stdout, store_result, where_results_went, write_json
    from workbench.cli.printing import SafeConsole

    stored = store_result(trace, name, data) if store else None
    write_json(json_out, data)
    if not is_stdout(json_out):
        summary()
        SafeConsole().print(where_results_went(stored, json_out), markup=False)


def rollout(
    bundle: Path = typer.Argument(..., help="A NAME.wbtrace folder (maps are recomputed through the model unless "
                                            "it was traced with --maps all:all)."),
    pos: int = typer.Option(-1, "--pos", "-p", help="Output position whose input relevance to compute (-1 = last)."),
    method: str = typer.Option("rollout", "--method", help="'rollout' (products of A~) or 'flow' (max-flow)."),
    residual: bool = typer.Option(True, "--residual/--no-residual",
                                  help="Add the identity and renormalise rows (the paper's default)."),
    normalise: bool = typer.Option(True, "--normalise/--raw-flow", help="Flow: divide by the sum (released code)."),
    max_flow_tokens: int = typer.Option(64, "--max-flow-tokens", help="Largest flow graph, in positions."),
    stack: str = typer.Option("text", "--stack", help="'text' (language model / encoder) or 'vision' (tower)."),
    model: str | None = typer.Option(None, "--model", help="Model to recompute maps with [default: the bundle's]."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON here ('-': stdout)."),
    store: bool = typer.Option(True, "--store/--no-store", help="Write results/rollout.json (flow.json) into the bundle."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """Attention rollout / flow: how much each input token contributes to one position (Abnar & Zuidema 2020)."""
    import workbench
    from workbench import option_checks as check
    from workbench.analyses import rollout as analysis
    from workbench.analyses.layer_maps import n_positions, stores_all_maps
    from workbench.cli.paths import check_json_output

    if method not in ("rollout", "flow"):
        raise InputError(f"--method takes 'rollout' or 'flow', not {method!r}")
    if stack not in ("text", "vision"):
        raise InputError(f"--stack takes 'text' or 'vision', not {stack!r}")
    check.count("--max-flow-tokens", max_flow_tokens, low=2, high=100_000)
    json_out = check_json_output(json_out, force=force)
    trace = workbench.load(bundle)
    if stack not in trace.stacks:
        raise InputError(f"the bundle has no {stack!r} stack; it has {', '.join(trace.stacks)}")
    n = n_positions(trace, stack)
    if not -n <= pos < n:
        raise InputError(f"--pos {pos} is outside the bundle's {n} positions (0..{n - 1}, or -1 for the last)")
    size = analysis.flow_positions(trace, pos % n, stack)
    if method == "flow" and size > max_flow_tokens:
        raise InputError(f"attention flow over {size} positions exceeds --max-flow-tokens {max_flow_tokens} (one "
                         "max-flow per token in Python): use --method rollout, an earlier --pos, or raise the bound")
    tracer = None
    if not stores_all_maps(trace, stack):
        from workbench.interventions import recorded

        recorded(trace.meta)  # an intervention record that cannot be rebuilt is refused before the model loads
        tracer = _tracer_for(trace, model)
    from workbench.cli.progress import progress_bars

    with progress_bars() as bars:
        tasks = {}

        def progress(stage: str, done: int, total: int) -> None:
            label = "attention maps (layers)" if stage == "maps" else "max-flow (input tokens)"
            if stage not in tasks:
                tasks[stage] = bars.add_task(label, total=total)
            bars.update(tasks[stage], completed=done, total=total)

        result = analysis.analyse(trace, position=pos, method=method, residual=residual, normalise=normalise,
                                  stack=stack, tracer=tracer, max_flow_tokens=max_flow_tokens, progress=progress)
    name = method if stack == "text" else f"{method}_{stack}"
    _finish(trace, name, result.to_json(), json_out, store, lambda: _rollout_summary(result))


def _rollout_summary(result) -> None:
    from workbench.cli.printing import SafeConsole

    console = SafeConsole()
    console.print(f"{result.method} {result.model} ({result.stack}), position {result.position}, maps "
                  f"{result.maps}, residual {result.options['residual']}", markup=False)
    for entry in result.tokens:
        console.print(f"  position {entry['position']:>5} {entry.get('text', '')!r:<16} {entry['relevance']:.4f}",
                      markup=False)
    if result.patch_grid is not None:
        rows, cols = result.patch_grid.shape
        console.print(f"image patches: {rows} x {cols} grid, share of the relevance on the image "
                      f"{_finite_sum(result.patch_grid):.3f} (results JSON: patch_grid)", markup=False)
    for note in result.notes:
        console.print(f"note {note}", markup=False)


def _finite_sum(grid) -> float:
    import numpy as np

    return float(np.nansum(grid))


def funnel(
    bundle: Path = typer.Argument(..., help="A NAME.wbtrace folder (statistics suffice; maps add mass_share)."),
    mass: float = typer.Option(0.9, "--mass", help="mass_share: share of keys holding this much of a row's mass."),
    score_on: str = typer.Option("entropy", "--score-on", help="Spread the funnel score ranks: 'entropy', "
                                                               "'normalised_entropy' or 'mass_share'."),
    recompute: bool = typer.Option(False, "--recompute", help="Recompute maps through the model for mass_share "
                                                              "when the bundle stores none (inputs up to 4,096)."),
    stack: str = typer.Option("text", "--stack", help="'text' (language model / encoder) or 'vision' (tower)."),
    model: str | None = typer.Option(None, "--model", help="Model to recompute maps with [default: the bundle's]."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON here ('-': stdout)."),
    store: bool = typer.Option(True, "--store/--no-store", help="Write results/funnel.json into the bundle."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """PyramidKV's funnel: per-layer spread of attention and whether it falls with depth (Spearman score)."""
    import workbench
    from workbench import option_checks as check
    from workbench.analyses import funnel as analysis
    from workbench.analyses.layer_maps import n_positions, stores_all_maps
    from workbench.cli.paths import check_json_output

    check.real("--mass", mass, above=0.0, high=1.0)
    if score_on not in analysis.SPREADS:
        raise InputError(f"--score-on takes {', '.join(analysis.SPREADS)}, not {score_on!r}")
    if stack not in ("text", "vision"):
        raise InputError(f"--stack takes 'text' or 'vision', not {stack!r}")
    json_out = check_json_output(json_out, force=force)
    trace = workbench.load(bundle)
    if stack not in trace.stacks:
        raise InputError(f"the bundle has no {stack!r} stack; it has {', '.join(trace.stacks)}")
    has_maps = stores_all_maps(trace, stack)
    long = n_positions(trace, stack) > analysis.MAX_MAP_TOKENS
    if score_on == "mass_share" and not has_maps and (not recompute or long):
        raise InputError("--score-on mass_share needs full maps: pass --recompute (inputs up to 4,096 positions) "
                         "or trace with --maps all:all")
    tracer = None
    if recompute and not has_maps and not long:
        from workbench.interventions import recorded

        recorded(trace.meta)
        tracer = _tracer_for(trace, model)
    result = analysis.analyse(trace, stack=stack, mass=mass, score_on=score_on, tracer=tracer)
    name = "funnel" if stack == "text" else f"funnel_{stack}"
    _finish(trace, name, result.to_json(), json_out, store, lambda: _funnel_summary(result))


def _funnel_summary(result) -> None:
    from workbench.cli.printing import SafeConsole

    console = SafeConsole()
    def shown(value) -> str:
        return "none (constant spread)" if value is None else f"{value:+.3f}"

    scores = ", ".join(f"{name} {shown(value)}" for name, value in result.scores.items())
    console.print(f"funnel {result.model} ({result.stack}): score {shown(result.score)} on "
                  f"{result.options['score_on']} (Spearman with depth; negative = spread falls) [{scores}]",
                  markup=False)
    for row in result.layers:
        share = f", {row['mass_share']:.3f} of keys hold {result.options['mass']:.0%}" if "mass_share" in row else ""
        console.print(f"  layer {row['layer']:>3}: entropy {row['entropy']:.3f} nats, normalised "
                      f"{row['normalised_entropy']:.3f}{share}", markup=False)
    for note in result.notes:
        console.print(f"note {note}", markup=False)
