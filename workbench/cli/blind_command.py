"""`workbench blind`: blind (AVC) and outlier (DAMRO) image tokens of an input or a traced bundle; with --scenes, the
effect of AVC recalibration and DAMRO outlier removal (--intervene) on the scene questions."""

from __future__ import annotations

from pathlib import Path

import typer

from workbench.errors import InputError


def blind_command(
    bundle: Path | None = typer.Argument(None, help="A NAME.wbtrace folder of a vision-language model: find its "
                                                    "blind / outlier tokens and store results/blind_tokens.json."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model [default: the bundle's]."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="The prompt (with --model and --image)."),
    image: Path | None = typer.Option(None, "--image", help="The image the prompt is about."),
    scenes: Path | None = typer.Option(None, "--scenes", help="A scene QA folder (data/scenes): accuracy and "
                                                                 "hallucination rates, plain and under --intervene."),
    limit: int | None = typer.Option(None, "--limit", help="With --scenes: a seeded sample of this many questions."),
    intervene: str = typer.Option("avc;damro", "--intervene", help="With --scenes or --prompt: decoding "
                                                                   "interventions, ';'-separated (avc:alpha=1, "
                                                                   "damro:top_k=10,alpha=2); 'none' for none."),
    layer_gamma: float = typer.Option(0.5, "--layer-gamma", help="AVC: share of image attention the chosen layers "
                                                                  "reach (reference 0.5)."),
    lamb: float = typer.Option(0.99, "--lamb", help="AVC: blind when attention >= mean + lamb * std (reference 0.99)."),
    top_k: int = typer.Option(10, "--top-k", help="DAMRO: outlier patches by [CLS] attention (reference 10)."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", "-n",
                                               help="Tokens to generate greedily (default 6; with --scenes, "
                                                    "enough for the longest full-sentence answer)."),
    system: str | None = typer.Option(None, "--system", help="System message for chat templates."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON here ('-': stdout)."),
    store: bool = typer.Option(True, "--store/--no-store", help="Write results/blind_tokens.json into the bundle."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """Blind / outlier image tokens (AVC, DAMRO) and the effect of their contrastive-decoding interventions."""
    from workbench import option_checks as check
    from workbench.analyses import blind_tokens
    from workbench.cli.paths import check_json_output, write_json
    from workbench.interventions.spec import DECODING, parse

    if sum(x is not None for x in (bundle, prompt, scenes)) != 1:
        raise InputError("give exactly one of BUNDLE, --prompt (with --model and --image) or --scenes (with --model)")
    if bundle is None and model is None:
        raise InputError("--prompt and --scenes need --model")
    if prompt is not None and image is None:
        raise InputError("--prompt needs --image: blind and outlier tokens are image tokens")
    check.count("--max-new-tokens", max_new_tokens, low=1, high=4096)
    if max_new_tokens is None and scenes is None:
        max_new_tokens = 6
    check.count("--limit", limit, low=1)
    check.count("--top-k", top_k, low=1, high=100_000)
    check.real("--layer-gamma", layer_gamma, above=0.0, high=1.0)
    check.real("--lamb", lamb, low=-100.0, high=100.0)
    blind_tokens.check_options(layer_gamma=layer_gamma, lamb=lamb, top_k=top_k)
    specs = [] if intervene.strip().lower() == "none" else [
        parse(part, kinds=DECODING) for part in intervene.split(";") if part.strip()]
    json_out = check_json_output(json_out, force=force)
    trace = None
    if bundle is not None:
        import workbench

        trace = workbench.load(bundle)
        model = model or trace.model.get("name")
        if not model:
            raise InputError("the bundle names no model; pass the traced model with --model")
    from workbench.capture import Tracer
    from workbench.cli.printing import SafeConsole

    with SafeConsole(stderr=True).status(f"loading {model}"):
        tracer = Tracer.open(str(model))
    if tracer.loaded.kind != "vlm":
        raise InputError(f"{model} takes no image, so it has no blind or outlier image tokens")
    options = {"layer_gamma": layer_gamma, "lamb": lamb, "top_k": top_k}
    stored = None
    if scenes is not None:
        data = _scenes(tracer, scenes, limit, specs, max_new_tokens)
    else:
        if trace is not None:
            result = blind_tokens.analyse(trace, tracer=tracer, image=image, **options)
        else:
            result = blind_tokens.blind_tokens(tracer, prompt, image, system=system, raw=raw, **options)
        data = result.to_json()
        if trace is not None and store:
            from workbench.cli.paths import store_result

            stored = store_result(trace, "blind_tokens", data)
        _print_result(result)
        if prompt is not None and specs:
            data = {**data, "decoding": _answers(tracer, prompt, image, specs, result, max_new_tokens, system, raw)}
    write_json(json_out, data)
    if json_out is None or str(json_out) != "-":
        from workbench.cli.paths import where_results_went

        SafeConsole().print(where_results_went(stored, json_out), markup=False)


def _answers(tracer, prompt, image, specs, found, max_new_tokens, system, raw) -> dict:
    from workbench.analyses.recalibration import generate
    from workbench.cli.printing import SafeConsole

    plain = tracer.generate(prompt, image, max_new_tokens=max_new_tokens, system=system, raw=raw).text
    answers = {"plain": plain}
    for spec in specs:
        answers[spec.name] = generate(tracer, prompt, image, spec, max_new_tokens=max_new_tokens, system=system,
                                      raw=raw, found=found)["text"]
    for mode, text in answers.items():
        SafeConsole().print(f"{mode}: {text!r}", markup=False)
    return answers


def _scenes(tracer, folder, limit, specs, max_new_tokens) -> dict:
    from workbench.cli import vhd_scenes
    from workbench.cli.printing import SafeConsole
    from workbench.cli.progress import progress_bars
    from workbench.cli.recalibration_scenes import evaluate_scenes

    questions = vhd_scenes.load_questions(folder, limit)
    with progress_bars() as bars:
        task = bars.add_task("questions", total=len(questions))
        data = evaluate_scenes(tracer, folder, questions, specs, max_new_tokens=max_new_tokens,
                               progress=lambda done, total: bars.update(task, completed=done))
    console = SafeConsole()
    for line in vhd_scenes.rate_lines(data["rates"]):
        console.print(line, markup=False)
    for spec in specs:
        console.print(f"answers changed by {spec.name}: {data['rates'][f'{spec.name}_answers_changed']}; image tokens "
                      f"its contrast run kept: {data['rates'][f'{spec.name}_mean_tokens_kept']} on average",
                      markup=False)
    return data


def _print_result(result) -> None:
    from workbench.cli.printing import SafeConsole

    console = SafeConsole()
    patch = dict(zip((int(p) for p in result.positions), result.patches))
    console.print(f"blind tokens (AVC, layers {list(result.layers)}): "
                  + (", ".join(f"{p} {patch[p]}" for p in result.blind) or "none"), markup=False)
    console.print(f"outlier tokens (DAMRO, vision layer {result.options['feature_layer']} [CLS] top "
                  f"{len(result.outliers)}): " + ", ".join(f"{p} {patch[p]}" for p in result.outliers), markup=False)
