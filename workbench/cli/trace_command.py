"""`workbench trace`: trace one prompt or a JSONL file of prompts into bundles (and JSON exports)."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import typer

from workbench.cli.paths import check_bundle_output, check_json_output, is_stdout, output_folder, write_json
from workbench.errors import InputError

# Prompts per padded forward with --prompts: on CPU, batches of 8 short prompts (~45 tokens) do 1.7x less work than
# one at a time and 16 only ~10% less again (benchmarks/RESULTS.md), while memory and padding waste grow with it.
DEFAULT_BATCH_SIZE = 8


def read_prompts(path: Path) -> list[dict]:
    """Every line of a prompt set, checked before anything is traced (format: workbench/datasets/prompt_lines.py)."""
    from workbench.datasets.prompt_lines import read_prompt_lines

    return [line.as_item() for line in read_prompt_lines(path)]


def trace(
    model: str = typer.Option(..., "--model", "-m", help="Registry name (see `workbench models`), local dir or hub id."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="The prompt text."),
    prompt_file: Path | None = typer.Option(None, "--prompt-file", help="Read the prompt from a text file."),
    prompts: Path | None = typer.Option(None, "--prompts", help="JSONL file of prompts (one bundle each)."),
    image: Path | None = typer.Option(None, "--image", help="Image for a vision-language model."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", "-n",
                                                 help="Tokens to generate greedily [default: 16; 0 for encoders]."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Bundle path (a folder for --prompts)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the JSON export here ('-': stdout)."),
    maps: str | None = typer.Option(None, "--maps", help="Keep full maps: LAYERS:HEADS, e.g. 'all', '0-3:all', '5:0,2'."),
    vision_maps: str | None = typer.Option(None, "--vision-maps", help="Same for the vision tower."),
    max_map_memory: str | None = typer.Option(None, "--max-map-memory",
                                                 help="Refuse --maps estimated above this (e.g. 2GB, unlimited) "
                                                      "[default: $WORKBENCH_MAX_MAP_MEMORY or half the free RAM]."),
    hidden: bool = typer.Option(False, "--hidden", help="Keep the residual stream entering every layer."),
    head_outputs: str | None = typer.Option(None, "--head-outputs",
                                               help="Keep per-head outputs at 'all', 'generated', 'last' or '3,7,9'."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most attended keys of every query."),
    decomposition: bool = typer.Option(False, "--decomposition",
                                       help="Keep queries, keys, values, attention outputs and W_O per layer "
                                            "(needed by `workbench routes` and `workbench circuits`)."),
    intervene: str | None = typer.Option(None, "--intervene",
                                            help="Intervene on attention while tracing: 'act:beta=0.4' (ACT) or "
                                                 "'var:rho=0.5,p=0.6' (VAR); its effect goes to "
                                                 "results/intervention.json. See docs/analyses/sinks.md. On a VLM, "
                                                 "'avc:alpha=1' / 'damro:top_k=10' decode contrastively against "
                                                 "blind / outlier image tokens (docs/analyses/blind-tokens.md)."),
    system: str | None = typer.Option(None, "--system", help="System message for chat templates."),
    span: list[str] | None = typer.Option(None, "--span", help="Measure a span of the prompt like a region: "
                                                                "NAME=START:END characters (repeatable)."),
    span_markers: str | None = typer.Option(None, "--span-markers", help="Spans between markers, e.g. "
                                                                         "'<doc>,</doc>' (named item_0, item_1, ...)."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template."),
    max_length: int | None = typer.Option(None, "--max-length", help="Allow inputs past the model's context."),
    rope_scaling: str | None = typer.Option(None, "--rope-scaling",
                                               help="Scale RoPE to --max-length: linear, dynamic or yarn."),
    kernel: str = typer.Option("auto", "--kernel", help=(
        "auto: one-pass CPU kernel (output + statistics) where it applies, else two-pass; "
        "torch: SDPA's bit-identical output + two-pass statistics; dense; triton.")),
    backend: str = typer.Option("hf", "--backend", help="hf (transformers capture), nnsight or lens (TransformerLens)."),
    remote: bool = typer.Option(False, "--remote", help="Run the model on NDIF (--backend nnsight, NDIF_API_KEY)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    force: bool = typer.Option(False, "--force", help="Replace existing outputs."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads [default: the usable CPUs minus "
                                                                "the load average, at least 1]."),
    probe: Path | None = typer.Option(None, "--probe", help="Lookback Lens probe: store per-token hallucination "
                                                               "scores as results/lookback.json."),
    batch_size: int | None = typer.Option(None, "--batch-size", help=(
        "With --prompts: prompts traced together in one left-padded forward (each bundle as if traced alone) "
        f"[default: {DEFAULT_BATCH_SIZE}; fewer where their logits would outgrow one long prompt's; lines with "
        "spans, an intervention or decomposition are traced one at a time].")),
) -> None:
    """Trace a prompt (and image) through a model into a NAME.wbtrace bundle; optionally export JSON."""
    if _is_vision_encoder(model):  # an image in, no text: checked from the registry / config before loading
        if prompt is not None or prompt_file is not None or prompts is not None:
            raise InputError(f"{model} is a vision encoder and takes an image only; drop --prompt / --prompt-file / "
                             "--prompts and pass --image IMG")
        if image is None:
            raise InputError(f"{model} is a vision encoder; pass an image with --image IMG")
        prompt = ""
    elif sum(x is not None for x in (prompt, prompt_file, prompts)) != 1:
        raise InputError("give exactly one of --prompt TEXT, --prompt-file FILE or --prompts FILE.jsonl")
    if prompt_file is not None:
        if not prompt_file.is_file():
            raise InputError(f"prompt file {prompt_file} does not exist")
        try:
            prompt = prompt_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{prompt_file} is not UTF-8 text") from None
    from workbench import option_checks as options
    from workbench.capture.backends import check_backend
    from workbench.capture.plan import CapturePlan

    # Every option is checked here, before any weights load: a typo fails in a second with one line.
    options.count("--max-new-tokens", max_new_tokens, high=1_000_000)
    options.count("--max-length", max_length, low=1, high=options.MAX_COUNT)
    options.count("--threads", threads, low=1, high=4096)
    options.count("--batch-size", batch_size, low=1, high=4096)
    if batch_size is not None and prompts is None:
        raise InputError("--batch-size applies to --prompts FILE.jsonl (several prompts); drop it for one prompt")
    _check_model_options(dtype, rope_scaling, max_length)
    check_backend(backend, remote=remote)
    plan = CapturePlan.build(maps=maps, vision_maps=vision_maps, hidden_states=hidden, head_outputs=head_outputs,
                             top_k=top_k, decomposition=decomposition, kernel=kernel, max_map_memory=max_map_memory,
                             device=_checked_device(device))
    decoding = None
    if intervene:
        from workbench.interventions.spec import CAPTURE, parse

        decoding = parse(intervene, kinds=CAPTURE)
        decoding = decoding if getattr(decoding, "decoding", False) else None
    items = read_prompts(prompts) if prompts else [
        {"prompt": prompt, "image": str(image) if image else None, "name": None}]
    if prompts and image:
        raise InputError("with --prompts, give images per line in the JSONL file instead of --image")
    if decoding is not None:
        _check_decoding(decoding, model, backend, items)
    _attach_spans(items, span, span_markers, backend)
    jobs = _plan_outputs(items, model, out, json_out, force, many=prompts is not None)
    if not remote:  # against the model's config: wrong layers or heads fail before the weights load
        from workbench.capture.tracer import check_before_loading

        check_before_loading(plan, model)
    lens = __import__("workbench.probes.probe", fromlist=["Probe"]).Probe.load(probe).lookback() if probe else None
    from workbench.capture import Tracer
    from workbench.cli.printing import SafeConsole
    from workbench.threads import apply_threads

    apply_threads(threads)
    # The first SmolLM2 load converts its GGUF weights (~20 s); later loads take about a second.
    with SafeConsole(stderr=True).status(f"loading {model}"):
        tracer = Tracer.open(model, backend=backend, remote=remote, device=device, dtype=dtype,
                             rope_scaling=rope_scaling, max_length=max_length, copy_model=False)
    loaded = tracer.loaded

    from workbench.cli.progress import progress_bars
    from workbench.cli.sinks_command import attach_effect, resolve_intervention

    with progress_bars() as bars:
        overall = bars.add_task("inputs", total=len(jobs)) if len(jobs) > 1 else None
        def new_tokens_of(item: dict) -> int:
            new_tokens = item.get("max_new_tokens", max_new_tokens)
            return new_tokens if new_tokens is not None else 0 if loaded.kind in ("encoder", "vision") else 16

        def finish(result, item, bundle_path, json_path) -> None:
            if lens is not None:
                result.add_result("lookback", lens.score_trace(result))
            if bundle_path is not None:
                result.save(bundle_path, force=force)
            if json_path is not None:
                write_json(json_path, result.to_json())
            if overall is not None:
                bars.advance(overall)
            _report(result, bundle_path, json_path)

        size = 1 if intervene or decomposition else batch_size or DEFAULT_BATCH_SIZE
        for batch in _batches(jobs, size, key=lambda item: (new_tokens_of(item), item.get("system", system))):
            if len(batch) > 1:  # one padded forward; each bundle equals the prompt traced alone
                step_task = bars.add_task(f"{len(batch)} prompts", total=None)
                results = tracer.trace_batch(
                    [item["prompt"] for item, _, _ in batch], [item.get("image") for item, _, _ in batch], plan=plan,
                    max_new_tokens=new_tokens_of(batch[0][0]), system=batch[0][0].get("system", system), raw=raw,
                    max_length=max_length,
                    progress=lambda done, total, task=step_task: bars.update(task, completed=done, total=total))
                bars.remove_task(step_task)
                for (item, bundle_path, json_path), result in zip(batch, results, strict=True):
                    finish(result, item, bundle_path, json_path)
                continue
            item, bundle_path, json_path = batch[0]
            step_task = bars.add_task(f"{item.get('name') or 'trace'}", total=None)
            new_tokens = new_tokens_of(item)
            if decoding is not None:  # tokens from the contrastive decoding, attention of the plain run over them
                from workbench.analyses.recalibration import trace as trace_decoded

                result = trace_decoded(
                    tracer, item["prompt"], item.get("image"), decoding, plan=plan, max_new_tokens=new_tokens,
                    system=item.get("system", system), raw=raw, max_length=max_length, spans=item.get("spans"),
                    progress=lambda done, total, task=step_task: bars.update(task, completed=done, total=total))
                bars.remove_task(step_task)
                _report_decoding(result)
                finish(result, item, bundle_path, json_path)
                continue
            spec = resolve_intervention(intervene, tracer, item, system=item.get("system", system), raw=raw)
            result = tracer.trace(
                item["prompt"], item.get("image"), plan=plan, max_new_tokens=new_tokens, intervention=spec,
                system=item.get("system", system), raw=raw, max_length=max_length, spans=item.get("spans"),
                progress=lambda done, total, task=step_task: bars.update(task, completed=done, total=total),
            )
            bars.remove_task(step_task)
            attach_effect(result, tracer, item, spec, max_new_tokens=new_tokens, system=item.get("system", system),
                          raw=raw)
            finish(result, item, bundle_path, json_path)


def _batches(jobs: list, size: int, *, key) -> list[list]:
    """Consecutive jobs traced together: up to `size` whose items agree in `key(item)` (tokens to generate, system
    message) and carry no spans; an item with spans is a batch of its own."""
    batches: list[list] = []
    for job in jobs:
        last = batches[-1] if batches else None
        if (last is not None and len(last) < size and not job[0].get("spans") and not last[0][0].get("spans")
                and key(job[0]) == key(last[0][0])):
            last.append(job)
        else:
            batches.append([job])
    return batches


def _attach_spans(items: list[dict], ranges: list[str] | None, markers: str | None, backend: str) -> None:
    """Every item's spans (--span, --span-markers or its line's "spans"), checked against its prompt now."""
    from workbench.capture.spans import check_spans, marker_spans, parse_span_option, spans_from_json

    given = [parse_span_option(text) for text in ranges or []]
    if given and markers is not None:
        raise InputError("give --span or --span-markers, not both")
    for item in items:
        where = f"prompt {item['name']!r}" if item.get("name") else "the prompt"
        listed = spans_from_json(item["spans"], where) if item.get("spans") is not None else None
        if listed is not None and (given or markers is not None):
            raise InputError(f'{where} lists its own "spans"; drop --span / --span-markers')
        spans = listed if listed is not None else given or (marker_spans(item["prompt"], markers) if markers else None)
        item["spans"] = check_spans(spans, item["prompt"], what="--span" if given else "spans") if spans else None
        if spans and backend != "hf":
            raise InputError(f"spans are captured by the hf backend only, not {backend}; use --backend hf")


def _check_decoding(spec, model: str, backend: str, items: list[dict]) -> None:
    """AVC / DAMRO contrast image tokens: a VLM (known from the registry or its config, before loading), an image
    for every input, and the hf backend, whose decoder runs the contrast sequence."""
    from workbench.models.loading import model_kind, read_config
    from workbench.models.registry import REGISTRY

    config = None if model in REGISTRY else read_config(model)
    kind = REGISTRY[model].kind if model in REGISTRY else model_kind(config) if config is not None else None
    if kind is not None and kind != "vlm":
        raise InputError(f"--intervene {spec.name} contrasts image tokens, but {model} takes no image; use a "
                         "vision-language model (e.g. llava-scenes) or an attention intervention (act, var)")
    if backend != "hf":
        raise InputError(f"--intervene {spec.name} decodes with the hf backend only, not {backend}; use --backend hf")
    missing = [item.get("name") or "the prompt" for item in items if not item.get("image")]
    if missing:
        raise InputError(f"--intervene {spec.name} contrasts image tokens: {missing[0]} has no image (pass --image, "
                         'or "image" on every --prompts line)')


def _report_decoding(result) -> None:
    from workbench.cli.printing import SafeConsole

    record = result.meta["capture"]["intervention"]
    SafeConsole(stderr=True).print(f"intervention {record['name']}: contrastive decoding against image tokens "
                                   f"{record['report']['kept']}", markup=False)


def _is_vision_encoder(model: str) -> bool:
    """Whether `model` is an image encoder (a registry one of kind "vision", or a folder / cached hub id whose config
    says so), known without loading any weights."""
    from workbench.errors import WorkbenchError
    from workbench.models.loading import model_kind, read_config
    from workbench.models.registry import REGISTRY

    if model in REGISTRY:
        return REGISTRY[model].kind == "vision"
    try:
        config = read_config(model)
    except WorkbenchError:
        return False  # an unknown name: loading reports it, with the closest names
    
    return config is not None and model_kind(config) == "vision"


def _check_model_options(dtype: str, rope_scaling: str | None, max_length: int | None) -> None:
    from workbench.models.loading import DTYPES, ROPE_SCALINGS

    if dtype not in DTYPES:
        raise InputError(f"unknown --dtype {dtype[:40]!r}; use one of {', '.join(DTYPES)}")
    if rope_scaling is not None and rope_scaling not in ROPE_SCALINGS:
        raise InputError(f"unknown --rope-scaling {rope_scaling[:40]!r}; use one of {', '.join(ROPE_SCALINGS)}")
    if rope_scaling is not None and not max_length:
        raise InputError("--rope-scaling needs --max-length N, the length to scale the context to")


def _checked_device(device: str) -> str:
    """`device` if torch can run on it here; one-line InputError otherwise (before anything loads)."""
    import re

    if not re.fullmatch(r"cpu|cuda(:[0-9]{1,2})?|mps", device or ""):
        raise InputError(f"unknown --device {str(device)[:40]!r}; use cpu, cuda, cuda:N or mps")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise InputError("--device mps: Apple's MPS is not available on this machine; use --device cpu")
    return device


def _plan_outputs(items, model, out, json_out, force, *, many):
    """Decide every output path and check them all before any model is loaded (the policy: cli/paths.py)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe_model = re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/"))[-40:]
    if not many:
        bundle = out
        if out is None and json_out is None:
            bundle = Path(f"traces/{safe_model}-{stamp}.wbtrace")
            output_folder(bundle.parent, what="traces folder")
        bundle = check_bundle_output(bundle, force=force) if bundle is not None else None
        return [(items[0], bundle, check_json_output(json_out, force=force))]
    if is_stdout(out) or is_stdout(json_out):
        raise InputError("with --prompts, --out and --json name folders (one file per prompt), not standard output")
    folder = output_folder(out or Path(f"traces/{safe_model}-{stamp}"), what="--out folder")
    json_folder = output_folder(json_out, what="--json folder") if json_out is not None else None
    jobs = []
    for item in items:
        bundle = check_bundle_output(folder / f"{item['name']}.wbtrace", force=force)
        json_path = None
        if json_folder is not None:
            json_path = check_json_output(json_folder / f"{item['name']}.json", force=force)
        jobs.append((item, bundle, json_path))
    return jobs


def _report(result, bundle_path, json_path) -> None:
    import sys

    from workbench.cli.printing import SafeConsole

    console = SafeConsole(stderr=True)
    counts: dict[str, int] = {}
    for token in result.tokens:
        counts[token.region] = counts.get(token.region, 0) + 1
    where = ", ".join(str(p) for p in (bundle_path, json_path) if p is not None and str(p) != "-")
    health = "" if result.checks.get("healthy", True) else " (numerics check failed, see `workbench info`)"
    # an encoder (text or image) generates nothing: no "generated ''" line for it
    generated = "" if result.model.get("kind") in ("encoder", "vision") else \
        f"; generated {result.generation['text']!r}"
    console.print(f"{result.model['name']}: {len(result.tokens)} tokens "
                  f"({', '.join(f'{k} {v}' for k, v in counts.items())}){generated}"
                  f"{health}" + (f" -> {where}" if where else ""))
    sys.stderr.flush()
