"""`workbench sinks`: attention sinks of a traced bundle; plus the `trace --intervene` helpers (ACT, VAR)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from workbench.errors import InputError


def _dims(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(part) for part in text.replace("+", ",").split(",") if part.strip())
    except ValueError:
        raise InputError(f"--dims takes dimensions like '1415,2533', not {text!r}") from None


def sinks(
    bundle: Path = typer.Argument(..., help="A NAME.wbtrace folder (trace with --hidden for sink dimensions and "
                                            "visual sinks, --top-k 8 for image-centric heads)."),
    eps: Optional[float] = typer.Option(None, "--eps", help="Gu et al.'s threshold on alpha_k [default: 0.3, "
                                                             "workbench.traces.metrics.SINK_EPSILON]."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON here ('-': stdout)."),
    stack: str = typer.Option("text", "--stack", help="'text' (language model / encoder) or 'vision' (tower)."),
    query_rows: str = typer.Option("prompt", "--query-rows",
                                   help="Query rows alpha averages: 'prompt' (Gu et al.'s prompt forward) or 'all' "
                                        "(prompt and generated rows)."),
    hidden_rule: str = typer.Option("relative", "--hidden-rule",
                                    help="Hidden sinks (ACT): 'relative' (alpha > --factor / n, paper) or "
                                         "'absolute' (alpha > --threshold, released script)."),
    threshold: float = typer.Option(0.1, "--threshold", help="Absolute hidden-sink threshold."),
    factor: float = typer.Option(5.0, "--factor", help="Relative hidden-sink factor (alpha / n rule)."),
    min_queries: int = typer.Option(16, "--min-queries", help="Keys seen by fewer query rows are not listed."),
    tau: float = typer.Option(20.0, "--tau", help="VAR's threshold on phi for visual sink tokens."),
    var_layers: str = typer.Option("reference", "--var-layers",
                                   help="VAR: 'reference' (sink dims and visual sinks from layer 2, image-centric "
                                        "heads only in layers with a visual sink) or 'all' (every layer)."),
    dims: Optional[str] = typer.Option(None, "--dims", help="Sink dimensions to use instead of finding them."),
    rho: float = typer.Option(0.5, "--rho", help="Image-centric heads: non-sink share of image attention >= rho "
                                                 "(paper convention; the released code's rho is 1 - rho)."),
    artifact_rule: str = typer.Option("relative", "--artifact-rule",
                                      help="Vision encoders' high-norm artifact patches (Darcet et al.): 'relative' "
                                           "(norm > --artifact-factor x the median patch norm) or 'absolute' "
                                           "(norm > --artifact-threshold, the paper's 150)."),
    artifact_factor: float = typer.Option(4.0, "--artifact-factor", help="Relative artifact-norm factor."),
    artifact_threshold: float = typer.Option(150.0, "--artifact-threshold", help="Absolute artifact norm."),
    store: bool = typer.Option(True, "--store/--no-store", help="Write results/sinks.json into the bundle."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """Attention sinks: Sink^eps per token (Gu), hidden sinks (ACT), sink dims, visual sinks, image-centric heads (VAR), kind."""
    import workbench
    from workbench.analyses import sinks as analysis

    if hidden_rule not in ("absolute", "relative"):
        raise InputError("--hidden-rule takes 'relative' or 'absolute'")
    if query_rows not in ("prompt", "all"):
        raise InputError("--query-rows takes 'prompt' or 'all'")
    if var_layers not in ("reference", "all"):
        raise InputError("--var-layers takes 'reference' or 'all'")
    if artifact_rule not in ("relative", "absolute"):
        raise InputError("--artifact-rule takes 'relative' or 'absolute'")
    from workbench import option_checks as check
    from workbench.cli.paths import check_json_output, write_json

    check.real("--eps", eps, above=0.0, high=1.0)
    check.real("--threshold", threshold, above=0.0, high=1.0)
    check.real("--factor", factor, above=0.0, high=1e6)
    check.count("--min-queries", min_queries, low=1)
    check.real("--tau", tau, low=0.0, high=1e9)
    check.real("--rho", rho, low=0.0, high=1.0)
    check.real("--artifact-factor", artifact_factor, above=0.0, high=1e6)
    check.real("--artifact-threshold", artifact_threshold, above=0.0, high=1e12)
    json_out = check_json_output(json_out, force=force)
    trace = workbench.load(bundle)
    if eps is None:
        from workbench.traces.metrics import SINK_EPSILON

        eps = SINK_EPSILON
    result = analysis.analyse(trace, eps=eps, stack=stack, query_rows=query_rows, hidden_rule=hidden_rule,
                              hidden_threshold=threshold, hidden_factor=factor, min_queries=min_queries, tau=tau,
                              dims=_dims(dims), var_layers=var_layers, rho=rho, artifact_rule=artifact_rule,
                              artifact_factor=artifact_factor, artifact_threshold=artifact_threshold)
    data = result.to_json()
    name = "sinks" if stack == "text" else f"sinks_{stack}"
    stored = None
    if store:
        from workbench.cli.paths import store_result

        stored = store_result(trace, name, data)
    write_json(json_out, data)
    if json_out is None or str(json_out) != "-":
        from workbench.cli.paths import where_results_went
        from workbench.cli.printing import SafeConsole

        _summary(result)
        SafeConsole().print(where_results_went(stored, json_out), markup=False)


def _summary(result) -> None:
    from workbench.cli.printing import SafeConsole

    console = SafeConsole()
    o = result.options
    console.print(f"sinks {result.model} ({result.stack}): kind {result.kind['kind']} "
                  f"({result.kind['reason']}); eps={o['eps']}; alpha over {o['query_rows']} query rows "
                  f"({o['keys']} keys)")
    for token in result.sink_tokens[:8]:
        console.print(f"  position {token['position']:>4} {token['text']!r:<14} Sink^eps {token['sink_percent']:6.2f}% "
                      f"({token['heads']} heads, mean alpha {token['mean_alpha']:.3f})")
    hidden = result.hidden_sinks
    console.print(f"hidden sinks ({hidden['rule']}, > {hidden['thresholds'][hidden['rule']]:.4g}): keys "
                  f"{hidden['keys'][:12]} in {len(hidden['heads'])} heads")
    if result.sink_dims is not None:
        console.print(f"sink dimensions {result.sink_dims['dims']}")
    if result.visual_sinks is not None:
        found = [(v["position"], v["patch"], v["max_phi"]) for v in result.visual_sinks["visual"]]
        console.print(f"visual sinks (phi > {result.visual_sinks['tau']:g}, layers >= "
                      f"{result.visual_sinks['first_layer']}): {found or 'none'}")
    if result.image_centric is not None:
        centric = result.image_centric
        heads = ", ".join(f"L{layer}H{head}" for layer, head in centric.get("image_centric") or []) or "none"
        console.print(f"image-centric heads ({o['var_layers']} layers): "
                      f"{heads if centric['available'] else centric['reason']}")
    if result.artifacts is not None and result.artifacts["available"]:
        _artifact_summary(console, result.artifacts)
    for note in result.notes:
        console.print(f"note {note}")


def _artifact_summary(console, found: dict) -> None:
    """One line per layer with artifact patches: how many, their norms against the median, attention received."""
    o = found["options"]
    rule = f"norm > {o['factor']:g} x median patch norm" if o["rule"] == "relative" else f"norm > {o['threshold']:g}"
    top = found["layers"][-1]["top"]
    console.print(f"artifact tokens ({rule}): {len(found['tokens'])} at the output, first in layer "
                  f"{found['first_layer']}; the output's highest-norm patch {tuple(top['patch'])} is "
                  f"{top['ratio']:.2f} x the median")
    for entry in found["layers"]:
        if not entry["artifacts"]:
            continue
        cls, patch, every = ("n/a" if entry.get(key) is None else f"{entry[key]:.3f}"
                             for key in ("cls_share", "patch_share", "all_share"))
        console.print(f"  layer {entry['layer']:>2}: {len(entry['artifacts'])} patches "
                      f"{[tuple(a['patch']) for a in entry['artifacts']][:6]}, max norm "
                      f"{max(a['norm'] for a in entry['artifacts']):.1f} vs median {entry['median_patch_norm']:.1f}; "
                      f"attention share from [CLS] {cls}, patches {patch}, all {every} (uniform "
                      f"{entry['uniform_share']:.3f})")


# -- `workbench trace --intervene` ---------------------------------------------------------------------------------
def resolve_intervention(text: str | None, tracer, item: dict, *, system, raw):
    """The intervention spec for one traced input (VAR without dims gets them from a probe forward)."""
    if not text:
        return None
    from workbench.interventions import VAR, parse

    spec = parse(text)
    if isinstance(spec, VAR) and not spec.dims:
        from workbench.analyses.sinks import calibrate_var

        spec = calibrate_var(tracer, item["prompt"], item.get("image"), spec, system=system, raw=raw)
    return spec


def attach_effect(result, tracer, item: dict, spec, *, max_new_tokens: int, system, raw) -> None:
    """Store what the intervention changed (next-token distribution, answer) as results/intervention.json."""
    if spec is None:
        return
    from workbench.interventions.effect import effect

    data = effect(tracer, item["prompt"], item.get("image"), intervention=spec, max_new_tokens=max_new_tokens,
                  system=system, raw=raw)
    result.add_result("intervention", data)
    if data.get("available"):
        from workbench.cli.printing import SafeConsole

        SafeConsole(stderr=True).print(
            f"intervention {spec.name}: KL(plain || intervened) at the next token "
            f"{data['next_token']['kl_plain_to_intervened']:.3g}; answer {data['answer']['plain']!r} -> "
            f"{data['answer']['intervened']!r}")
