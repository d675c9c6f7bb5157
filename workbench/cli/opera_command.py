"""`workbench opera`: OPERA's over-trust score (knowledge aggregation columns) of a generation, a traced bundle's
generation (teacher-forced) or the scene captions."""

from __future__ import annotations

from pathlib import Path

import typer

from workbench.errors import InputError


def opera_command(
    bundle: Path | None = typer.Argument(None, help="A NAME.wbtrace folder: score its generation (teacher-forced) "
                                                    "and store results/opera.json in it."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model [default: the bundle's]."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="Generate from this prompt (with --model)."),
    image: Path | None = typer.Option(None, "--image", help="The image the prompt is about (vision-language models)."),
    scenes: Path | None = typer.Option(None, "--scenes", help="A scene QA folder (data/scenes): scores at "
                                                                 "hallucinated vs grounded caption objects."),
    limit: int | None = typer.Option(None, "--limit", help="With --scenes: a seeded sample of this many captions."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n", help="Tokens to generate greedily."),
    layer: int = typer.Option(-1, "--layer", help="Attention layer scored (-1 = the last, as the reference)."),
    scale: float = typer.Option(50.0, "--scale", help="Scale applied to the window attention (reference: 50)."),
    window: int | None = typer.Option(None, "--window", help="Score over the last N generated tokens only "
                                                               "[default: the whole response, as the reference]."),
    threshold: int = typer.Option(15, "--threshold", help="Retrospection when one summary column was the argmax "
                                                            "more than this many steps (reference: 15)."),
    system: str | None = typer.Option(None, "--system", help="System message for chat templates."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON here ('-': stdout)."),
    store: bool = typer.Option(True, "--store/--no-store", help="Write results/opera.json into the bundle."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """OPERA knowledge aggregation: per generated token, the over-trust score and the summary token it forms on."""
    from workbench import option_checks as check
    from workbench.analyses import opera
    from workbench.cli.paths import check_json_output, write_json

    if sum(x is not None for x in (bundle, prompt, scenes)) != 1:
        raise InputError("give exactly one of BUNDLE, --prompt (with --model) or --scenes (with --model)")
    if bundle is None and model is None:
        raise InputError("--prompt and --scenes need --model")
    check.count("--max-new-tokens", max_new_tokens, low=1, high=4096)
    check.count("--limit", limit, low=1)
    check.count("--window", window, low=1, high=1_000_000)
    check.count("--threshold", threshold, low=0, high=1_000_000)
    check.real("--scale", scale, above=0.0, high=1e6)
    opera.check_options(scale=scale, window=window, threshold=threshold)
    json_out = check_json_output(json_out, force=force)
    options = {"layer": layer, "scale": scale, "window": window, "threshold": threshold}
    trace = None
    if bundle is not None:
        import workbench

        trace = workbench.load(bundle)
        if trace.generation.get("end", 0) <= trace.generation.get("start", 0):
            raise InputError("the bundle holds no generated tokens; trace with --max-new-tokens N")
        model = model or trace.model.get("name")
        if not model:
            raise InputError("the bundle names no model; pass the traced model with --model")
    from workbench.capture import Tracer
    from workbench.cli.printing import SafeConsole

    with SafeConsole(stderr=True).status(f"loading {model}"):
        tracer = Tracer.open(str(model))
    stored = None
    if scenes is not None:
        data = _scenes(tracer, scenes, limit, max_new_tokens, options)
    else:
        if trace is not None:
            result = opera.analyse(trace, tracer=tracer, image=image, **options)
        else:
            result = opera.opera(tracer, prompt, image, max_new_tokens=max_new_tokens, system=system, raw=raw,
                                 **options)
        data = result.to_json()
        if trace is not None and store:
            from workbench.cli.paths import store_result

            stored = store_result(trace, "opera", data)
        _print_result(result)
    write_json(json_out, data)
    if json_out is None or str(json_out) != "-":
        from workbench.cli.paths import where_results_went

        SafeConsole().print(where_results_went(stored, json_out), markup=False)


def _scenes(tracer, folder, limit, max_new_tokens, options) -> dict:
    from workbench.cli import opera_scenes
    from workbench.cli.printing import SafeConsole
    from workbench.cli.progress import progress_bars

    with progress_bars() as bars:
        task = bars.add_task("captions", total=limit)
        data = opera_scenes.evaluate(tracer, folder, limit=limit, max_new_tokens=max_new_tokens,
                                     progress=lambda done, total: bars.update(task, completed=done, total=total),
                                     **options)
    console = SafeConsole()
    for kind in ("hallucinated", "grounded"):
        part = data[kind]
        console.print(f"{kind} objects: {part['n']}; summary column before the word {part['summary_before']}; "
                      f"retrospection so far {part['retrospection']}; mean log10 score {part['mean_log10_score']}",
                      markup=False)
    console.print(f"AUROC (hallucinated object scores higher): {data['auroc_hallucinated_higher']}", markup=False)
    return data


def _print_result(result) -> None:
    from workbench.cli.printing import SafeConsole

    console = SafeConsole()
    console.print(f"opera {result.model} (layer {result.options['layer']}): generated {result.text!r}; "
                  f"{int(result.retrospection.sum())} steps would trigger retrospection", markup=False)
    for token, score, column in zip(result.tokens, result.log10_score, result.summary):
        console.print(f"  {token['position']:>5} {token['text']!r:<16} log10 score {score:8.3f}  summary at {column}",
                      markup=False)
