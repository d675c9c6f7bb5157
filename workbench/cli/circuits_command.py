"""`workbench circuits`: SVD circuit tracing (Franco & Crovella 2024) over a traced bundle's firings."""

from __future__ import annotations

from pathlib import Path

import typer


def circuits(
    bundle: Path = typer.Argument(..., help="A NAME.wbtrace folder traced with --decomposition."),
    firing_threshold: float = typer.Option(0.5, "--firing-threshold", help="Minimum attention A_ij of a firing."),
    coverage: float = typer.Option(0.7, "--coverage", help="Share of the upstream-head contribution kept per side."),
    component_threshold: float = typer.Option(1.0, "--component-threshold",
                                              help="Share of a firing's score its kept singular components reach."),
    min_share: float = typer.Option(0.02, "--min-share", help="Smallest share of a side an upstream edge may carry."),
    attribution: str = typer.Option("score", "--attribution",
                                    help="'score' (additive share of the kept score) or 'projection' (reference)."),
    basis: str = typer.Option("reference", "--basis",
                              help="Omega's basis: 'reference' (the released code's TransformerLens-folded weights on "
                                   "ln1.hook_normalized) or 'raw' (the norm's output with the model's own W_Q, W_K)."),
    model: str | None = typer.Option(None, "--model", "-m",
                                        help="The traced model's weights [default: the model named in the bundle]."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON here ('-': stdout)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
    store: bool = typer.Option(True, "--store/--no-store", help="Write results/circuits.json into the bundle."),
) -> None:
    """Circuits: which upstream heads feed each head's firings through its query (Q) or key (K) side."""
    import workbench
    from workbench import option_checks as check
    from workbench.analyses import circuits as analysis
    from workbench.analyses.circuits import check_basis
    from workbench.cli.paths import store_result, where_results_went
    from workbench.errors import InputError

    check_basis(basis)  # before the bundle and the weights load
    from workbench.cli.paths import check_json_output, is_stdout, write_json

    json_out = check_json_output(json_out, force=force)
    check.real("--firing-threshold", firing_threshold, above=0.0, high=1.0)
    check.real("--coverage", coverage, above=0.0, high=1.0)
    check.real("--component-threshold", component_threshold, above=0.0, high=1.0)
    check.real("--min-share", min_share, low=0.0, high=1.0)
    if attribution not in ("score", "projection"):
        raise InputError(f"--attribution must be 'score' or 'projection', got {attribution!r}")
    trace = workbench.load(bundle)
    loaded = _load_model(model, trace)
    result = analysis.analyse(trace, model=loaded, firing_threshold=firing_threshold, coverage=coverage,
                              component_threshold=component_threshold, min_share=min_share, attribution=attribution,
                              basis=basis)
    data = result.to_json()
    stored = store_result(trace, "circuits", data) if store else None
    write_json(json_out, data)
    if not is_stdout(json_out):
        from workbench.cli.printing import SafeConsole

        _summary(result, trace)
        SafeConsole().print(where_results_went(stored, json_out), markup=False)


def _load_model(name: str | None, trace):
    from workbench.cli.printing import SafeConsole
    from workbench.errors import WorkbenchError
    from workbench.models import load_model

    candidates = [name] if name else [trace.model.get("name"), trace.model.get("source")]
    error = None
    with SafeConsole(stderr=True).status("loading the traced model's weights"):
        for candidate in [c for c in candidates if c]:
            try:
                return load_model(candidate, dtype=trace.model.get("dtype", "float32"))
            except WorkbenchError as failure:
                error = failure
    raise type(error)(f"{error}; pass the traced model with --model") if error else WorkbenchError(
        "the bundle names no model; pass the traced model with --model")


def _summary(result, trace) -> None:
    from workbench.cli.printing import SafeConsole

    console = SafeConsole()
    stats = result.stats
    mean = stats["components_kept_mean"]
    console.print(f"circuits {result.model} ({result.options.get('basis', 'raw')} basis): {stats['firings']} firings, "
                  f"{'no' if mean is None else f'{mean:.1f}'} singular components kept on average "
                  f"(max {stats['components_kept_max']}), RoPE {'offset-dependent Omega' if stats['rope'] else 'no'}, "
                  f"score reconstruction error {stats['max_reconstruction_error']:.1e}")
    graph = result.graph
    downstream = sorted((data["firings"], node) for node, data in graph.nodes(data=True) if data["firings"])
    for firings, node in sorted(downstream, reverse=True)[:12]:
        layer, head = (int(part) for part in node[1:].split("H"))
        edges = result.edges_into(layer, head)[:4]
        text = ", ".join(f"{source} {data['sides'].upper()} {data['weight']:.2f}" for source, data in edges)
        console.print(f"  {node} ({firings} firings) <- {text or 'no upstream head'}")
