"""`workbench routes`: information-flow routes (Ferrando & Voita 2024) of a traced bundle's predictions."""

from __future__ import annotations

from pathlib import Path

import typer

from workbench.errors import InputError


def parse_position(text: str):
    """'last', '-1', '3,7,9', 'generated' or 'all' -> what routes.analyse takes."""
    if text in ("last", "generated", "all"):
        return text
    if len(text) > 1000:
        raise InputError(f"--position is {len(text)} characters long; give a few positions, 'generated' or 'all'")
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError(f"--position takes 'last', an integer (-1 = the last row), a list like '3,7,9', "
                         f"'generated' or 'all'; got {text!r}") from None
    return values[0] if len(values) == 1 else values


NODE_LEGEND = ("nodes: X0_t = embedding of token t, A{l}_t = after the attention of layer l, M{l}_t = the FFN "
               "of layer l, I{l}_t = after layer l; t is a token position, its text in quotes")


def _position(node: str) -> int:
    """The token position of a route node id such as 'A1_13'."""
    return int(node.rsplit("_", 1)[1])


def _token(trace, position: int, limit: int = 20) -> str:
    """The token's text, quoted so spaces and newlines show (shortened past `limit` characters)."""
    text = trace.tokens[position].text
    return repr(text if len(text) <= limit else text[:limit - 1] + "…")


def routes(
    bundle: Path = typer.Argument(..., help="A NAME.wbtrace folder traced with --decomposition."),
    position: str = typer.Option("last", "--position", "-p",
                                 help="Query row(s) whose prediction to explain: 'last' (the row that predicted "
                                      "the trace's last token), a row (-1 = the last row, whose prediction lies "
                                      "past the trace), '3,7,9', 'generated' or 'all'."),
    threshold: float = typer.Option(0.04, "--threshold", "-t", help="Contribution threshold tau."),
    renormalise: bool = typer.Option(True, "--renormalise/--no-renormalise",
                                     help="Zero parts <= tau and renormalise (reference app default), or cut "
                                          "raw edges at tau."),
    bias: str = typer.Option("share", "--bias", help="'share' b_O among the parts or 'exclude' it (reference)."),
    head_types: bool = typer.Option(True, "--head-types/--no-head-types",
                                    help="Also score previous-token / induction / subword-merging patterns."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON here ('-': stdout)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
    store: bool = typer.Option(True, "--store/--no-store", help="Write results/routes.json into the bundle."),
) -> None:
    """Routes: the subgraph of token representations a prediction draws on, with head usage and typed heads."""
    import workbench
    from workbench import option_checks as check
    from workbench.analyses import routes as analysis

    check.real("--threshold", threshold, low=0.0, high=1.0)
    from workbench.cli.paths import check_json_output, is_stdout, write_json

    json_out = check_json_output(json_out, force=force)
    position = parse_position(position)
    trace = workbench.load(bundle)
    result = analysis.analyse(trace, position=position, threshold=threshold,
                              renormalise=renormalise, bias=bias, head_types=head_types)
    data = result.to_json()
    stored = None
    if store:
        from workbench.cli.paths import store_result

        stored = store_result(trace, "routes", data)
    write_json(json_out, data)
    if not is_stdout(json_out):
        from workbench.cli.paths import where_results_went
        from workbench.cli.printing import SafeConsole

        _summary(result, trace)
        SafeConsole().print(where_results_went(stored, json_out), markup=False)


def _summary(result, trace) -> None:
    from workbench.cli.printing import SafeConsole

    console = SafeConsole()
    console.print(f"routes {result.model}: tau={result.options['threshold']} "
                  f"renormalise={result.options['renormalise']}; {result.stats['attention_rows_computed']} "
                  f"attention rows computed, {result.stats['pruned_fraction']:.1%} of parts pruned by the bound")
    console.print(NODE_LEGEND, markup=False)
    for route in result.routes:
        predicted = repr(route.predicted["text"]) if route.predicted else "the next token (past the end of the trace)"
        graph = route.graph
        tokens = sorted({data["position"] for _, data in graph.nodes(data=True)})
        console.print(f"position {route.position} {_token(trace, route.position)} predicts {predicted}: "
                      f"{graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges, draws on tokens "
                      f"{tokens[:20]}{' ...' if len(tokens) > 20 else ''}", markup=False)
        attention = [(data["weight"], source, target) for source, target, data in graph.edges(data=True)
                     if data.get("kind", "").startswith("attention") and _position(source) != _position(target)]
        for weight, source, target in sorted(attention, reverse=True)[:5]:
            console.print(f"  {source} {_token(trace, _position(source))} -> {target} "
                          f"{_token(trace, _position(target))}  {weight:.3f}", markup=False)
    usage = result.head_usage["routes"]
    ranked = sorted(((count, layer, head) for layer, row in enumerate(usage) for head, count in enumerate(row)
                     if count), reverse=True)[:10]
    if ranked:
        console.print("heads carrying route edges (routes): " + ", ".join(f"L{l}H{h} ({c})" for c, l, h in ranked))
    if result.head_patterns is not None:
        typed = result.head_patterns.types()
        if typed:
            console.print("typed heads: " + ", ".join(f"L{l}H{h} {'/'.join(k)}" for (l, h), k in typed.items()))
