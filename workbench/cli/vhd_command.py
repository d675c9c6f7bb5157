"""`workbench vhd`: vision-aware head divergence of a generation, a traced bundle, a prompt set or a scene QA set."""

from __future__ import annotations

from pathlib import Path

import typer

from workbench.errors import InputError


def vhd_command(
    model: str = typer.Option(..., "--model", "-m", help="A vision-language model (registry name or directory)."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="The prompt (with --image)."),
    image: Path | None = typer.Option(None, "--image", help="The image the prompt is about."),
    bundle: Path | None = typer.Option(None, "--bundle", help="Score a traced bundle's generation (teacher-"
                                                                 "forced) and store results/vhd.json in it."),
    prompts: Path | None = typer.Option(None, "--prompts", help="JSONL of {prompt, image}: rank the vision-aware "
                                                                   "heads over the set."),
    scenes: Path | None = typer.Option(None, "--scenes", help="A scene QA folder (data/scenes): T-VHD AUROC for "
                                                                 "hallucinated answers, rates with and without VHR."),
    limit: int | None = typer.Option(None, "--limit", help="With --scenes: a seeded sample of this many questions."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", "-n", help="Tokens to generate greedily "
                                              "[default: 16; with --scenes, enough for the longest full-sentence "
                                              "answer with the model's tokenizer]."),
    top_k: int | None = typer.Option(None, "--top-k", help="Heads averaged in T-VHD [default: 10% of heads]."),
    distance: str = typer.Option("cosine", "--distance", help="'cosine' (1 - cos) or 'l2'."),
    vhr: bool = typer.Option(False, "--vhr", help="Reinforce vision-aware heads while generating (VHR)."),
    alpha: float = typer.Option(1.5, "--alpha", help="VHR's scale for the selected heads."),
    system: str | None = typer.Option(None, "--system", help="System message for chat templates."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON here ('-': stdout)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads [default: the usable CPUs minus "
                                                                "the load average, at least 1]."),
) -> None:
    """Vision-aware head divergence: per generated token, how much each head's output changes without the image; VHR."""
    if sum(x is not None for x in (prompt, bundle, prompts, scenes)) != 1:
        raise InputError("give exactly one of --prompt (with --image), --bundle, --prompts or --scenes")
    if distance not in ("cosine", "l2"):
        raise InputError("--distance takes 'cosine' or 'l2'")
    if prompt is not None and image is None:
        raise InputError("--prompt needs --image: VHD compares the run with the image to the run without it")
    from workbench import option_checks as check
    from workbench.cli.paths import check_json_output, write_json

    check.count("--max-new-tokens", max_new_tokens, low=1, high=4096)
    if max_new_tokens is None and scenes is None:
        max_new_tokens = 16
    check.count("--limit", limit, low=1)
    check.count("--top-k", top_k, low=1, high=65535)
    check.real("--alpha", alpha, above=0.0, high=1000.0)
    check.count("--threads", threads, low=1, high=4096)
    json_out = check_json_output(json_out, force=force)
    from workbench.threads import apply_threads

    apply_threads(threads)
    from workbench.analyses import divergence
    from workbench.capture import Tracer
    from workbench.cli.printing import SafeConsole

    with SafeConsole(stderr=True).status(f"loading {model}"):
        tracer = Tracer.open(model)
    reinforce = divergence.VHR(alpha=alpha) if vhr else None
    options = {"top_k": top_k, "distance": distance}
    stored = None
    if scenes is not None:
        data = _scenes(tracer, scenes, limit, reinforce, max_new_tokens, options)
    elif prompts is not None:
        from workbench.cli.trace_command import read_prompts

        results = [divergence.vhd(tracer, item["prompt"], item.get("image"), max_new_tokens=max_new_tokens,
                                  system=system, raw=raw, vhr=reinforce, **options) for item in read_prompts(prompts)]
        data = {**divergence.rank_heads(results), "items": [r.to_json() for r in results]}
        _print_ranking(data["ranking"][:10])
    else:
        if bundle is not None:
            import workbench

            trace = workbench.load(bundle)
            result = divergence.analyse(trace, tracer=tracer, image=image, **options)
        else:
            result = divergence.vhd(tracer, prompt, image, max_new_tokens=max_new_tokens, system=system, raw=raw,
                                    vhr=reinforce, **options)
        data = result.to_json()
        if bundle is not None:
            from workbench.cli.paths import store_result

            stored = store_result(trace, "vhd", data)
        _print_result(result)
    write_json(json_out, data)
    if json_out is None or str(json_out) != "-":
        from workbench.cli.paths import where_results_went

        SafeConsole().print(where_results_went(stored, json_out), markup=False)


def _scenes(tracer, folder, limit, reinforce, max_new_tokens, options) -> dict:
    from workbench.cli import vhd_scenes
    from workbench.cli.progress import progress_bars

    questions = vhd_scenes.load_questions(folder, limit)
    with progress_bars() as bars:
        task = bars.add_task("questions", total=len(questions))
        data = vhd_scenes.evaluate(tracer, folder, questions, vhr=reinforce, max_new_tokens=max_new_tokens,
                                    progress=lambda done, total: bars.update(task, completed=done), **options)
    from workbench.cli.printing import SafeConsole

    console = SafeConsole()
    def shown(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    console.print(f"up to {data['max_new_tokens']} new tokens; {data['unfinished']} of {data['questions']} answers "
                  "cut before the end of turn", markup=False)
    for key, score in data["scores"].items():
        console.print(f"{key}: AUROC incorrect vs correct {shown(score['auroc_incorrect_vs_correct'])} "
                      f"({score['n_incorrect']} vs {score['n_correct']}); prior-answer hallucinations vs correct on "
                      f"conflicting {shown(score['auroc_prior_vs_correct_on_conflicting'])}; absent object yes vs no "
                      f"{shown(score['auroc_absent_yes_vs_no'])}; same answer yes, object absent vs present "
                      f"{shown(score['auroc_yes_absent_vs_yes_present'])}", markup=False)
    for line in vhd_scenes.rate_lines(data["rates"]):
        console.print(line, markup=False)
    _print_ranking(data["ranking"])
    return data


def _print_ranking(ranking) -> None:
    from workbench.cli.printing import SafeConsole

    SafeConsole().print("vision-aware heads: " + ", ".join(f"L{r['layer']}H{r['head']} {r['vhd']:.3f}" for r in ranking))


def _print_result(result) -> None:
    from workbench.cli.printing import SafeConsole

    console = SafeConsole()
    console.print(f"vhd {result.model}: generated {result.text!r}; {result.cost['forwards']} forwards in "
                  f"{result.cost['seconds']:.2f} s; T-VHD (top {result.options['top_k']}) per token:")
    console.print("  " + " ".join(f"{t['text']!r}:{float(v):.3f}" for t, v in zip(result.tokens, result.t_vhd)))
    _print_ranking(result.ranking(10))
