"""`workbench basin BUNDLE`: attention received by each list item (user span) vs its place in the list."""

from __future__ import annotations

from pathlib import Path

import typer

from workbench.errors import InputError


def basin(
    bundle: Path = typer.Argument(..., help="A NAME.wbtrace folder traced with --span or --span-markers (3+ items)."),
    rows: str = typer.Option("after", "--rows", help="Query rows averaged: 'after' (every row after the last item: "
                                                      "question and answer) or 'generated'."),
    per: str = typer.Option("item", "--per", help="'item' (the mass on the whole item) or 'token' (per token of it)."),
    items: str | None = typer.Option(None, "--items", help="Comma-separated span names to treat as the list "
                                                              "[default: every span, in prompt order]."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON here ('-': stdout)."),
    store: bool = typer.Option(True, "--store/--no-store", help="Write results/basin.json into the bundle."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """Attention basin (Yi et al. 2025): attention per list item by position, and its U-score (ends vs middle)."""
    import workbench
    from workbench.analyses import basin as analysis
    from workbench.cli.paths import check_json_output, is_stdout, store_result, where_results_went, write_json
    from workbench.cli.printing import SafeConsole

    if rows not in analysis.ROWS:
        raise InputError(f"--rows takes {', '.join(analysis.ROWS)}, not {rows[:40]!r}")
    if per not in ("item", "token"):
        raise InputError(f"--per takes item or token, not {per[:40]!r}")
    names = [name.strip() for name in items.split(",")] if items is not None else None
    if names is not None and (not all(names) or len(set(names)) != len(names)):
        raise InputError(f"--items {items[:40]!r} must name distinct spans, separated by commas")
    json_out = check_json_output(json_out, force=force)
    trace = workbench.load(bundle)
    result = analysis.analyse(trace, rows=rows, per=per, items=names)
    data = result.to_json()
    stored = store_result(trace, "basin", data) if store else None
    write_json(json_out, data)
    if not is_stdout(json_out):
        _summary(result)
        SafeConsole().print(where_results_went(stored, json_out), markup=False)


def _summary(result) -> None:
    from workbench.cli.printing import SafeConsole

    console = SafeConsole()
    score = result.u_score
    verdict = "basin: both ends above the middle" if score > 0 else "no basin"
    console.print(f"basin {result.model}: U-score {score:+.3f} ({verdict}) over {len(result.items)} items, query rows "
                  f"{result.rows[0]}-{result.rows[1] - 1}, attention per {result.options['per']}", markup=False)
    profile = result.profile
    top = max(profile.max(), 1e-12)
    for item, value in zip(result.items, profile):
        bar = "#" * round(30 * value / top)
        console.print(f"  {item['name'][:24]:>24} tokens {item['tokens'][0]:>5}-{item['tokens'][1] - 1:<5} "
                      f"{value:.4f} {bar}", markup=False)
