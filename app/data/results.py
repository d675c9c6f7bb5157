"""Analysis results stored in a bundle (`results/<name>.json`), read for the app's views.

Every stored result is turned back into its analysis's result object (`workbench.analyses.registry`: the class
its JSON names, `from_json`); views call that object's methods (`head_metrics`, `token_values`, `token_sets`,
its graphs) and never parse an analysis's JSON. This module names, in one table, which analysis each view
reads and which command produces it, and reads defensively what any result may carry in the generic shapes
of docs/app.md (a `head_metrics` block, node-link graphs, token value lists). Anything malformed is skipped
with a warning the page shows, never an exception.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import workbench.probes.scores  # noqa: F401  (registers the reader of results/lookback.json)
from workbench.app.data.metrics import Metric

from workbench.analyses.registry import analysis_of, read_result
from workbench.analyses.result import HeadMetric, Result
from workbench.errors import WorkbenchError


@dataclass(frozen=True)
class Analysis:
    key: str
    analysis: str  # the analysis name its results declare; results/<analysis>.json when stored by the workbench
    title: str
    command: str  # "{bundle}" is replaced by the bundle path


ANALYSES: dict[str, Analysis] = {a.key: a for a in [
    Analysis("sinks", "sinks", "attention sinks (Gu et al., ACT hidden sinks, VAR visual sinks)",
             "workbench sinks {bundle}"),
    Analysis("vhd", "vhd", "vision-aware head divergence (VHD, T-VHD)",
             "workbench vhd --bundle {bundle} --model MODEL --image IMAGE"),
    Analysis("routes", "routes", "information-flow routes (Ferrando & Voita 2024)",
             "workbench routes {bundle}"),
    Analysis("circuits", "circuits", "SVD head-to-head circuits (Franco & Crovella 2024)",
             "workbench circuits {bundle}"),
    Analysis("probe", "lookback", "hallucination probe scores (Lookback Lens)", "workbench trace ... --probe PROBE"),
    Analysis("patching", "patching", "activation patching result",
             "workbench patch --model MODEL --pairs PAIRS.jsonl --store {bundle}"),
    Analysis("ablation", "ablation", "head ablation result",
             "workbench ablate --model MODEL --pairs PAIRS.jsonl --store {bundle}"),
    Analysis("importance", "importance", "head importance (Michel et al. 2019)",
             "workbench importance --model MODEL --prompts PROMPTS.jsonl --curve --store {bundle}"),
    Analysis("lens", "lens", "logit lens / direct logit attribution", "workbench lens {bundle} --pos POS"),
    Analysis("rollout", "rollout", "attention rollout or flow (Abnar & Zuidema 2020)",
             "workbench rollout {bundle} --pos POS"),
    Analysis("blind_tokens", "blind_tokens", "blind (AVC) and outlier (DAMRO) image tokens", "workbench blind {bundle}"),
    Analysis("opera", "opera", "OPERA over-trust scores (knowledge aggregation)", "workbench opera {bundle}"),
    Analysis("basin", "basin", "attention basin over list items (Yi et al. 2025)", "workbench basin {bundle}"),
]}


@dataclass(frozen=True)
class Found:
    """A stored result of one analysis: its file name, the result object (None when it could not be read)
    and what went wrong reading it."""

    name: str
    result: Result | None
    warnings: tuple[str, ...] = ()


def read(name: str, data) -> tuple[Result | None, list[str]]:
    """The result object of results/<name>.json, or None with a warning when it is malformed (None without
    one when no analysis class reads it)."""
    try:
        return read_result(name, data), []
    except Exception as error:  # noqa: BLE001  (a malformed file is a warning on the page, whatever from_json raised)
        reason = str(error) if isinstance(error, WorkbenchError) else f"{type(error).__name__}: {error}"
        message = f"results/{name}.json could not be read as a {analysis_of(name, data)} result ({reason}); rerun it"
        return None, [message]


def present(results: dict) -> set[str]:
    """Analysis names of the stored results."""
    return {analysis_of(name, data) for name, data in results.items()}


def find(results: dict, key: str) -> Found | None:
    """The stored result of an analysis (its canonical file first, e.g. sinks.json before sinks_vision.json),
    or None when the bundle has none."""
    analysis = ANALYSES[key].analysis
    names = sorted((name for name, data in results.items() if analysis_of(name, data) == analysis),
                   key=lambda name: (name != analysis, name))
    if not names:
        return None
    result, warnings = read(names[0], results[names[0]])
    return Found(names[0], result, tuple(warnings))


def find_all(results: dict, key: str) -> list[Found]:
    """Every stored result of an analysis (e.g. results/rollout.json and results/flow.json), canonical file first."""
    analysis = ANALYSES[key].analysis
    names = sorted((name for name, data in results.items() if analysis_of(name, data) == analysis),
                   key=lambda name: (name != analysis, name))
    return [Found(name, *_read_found(name, results[name])) for name in names]


def _read_found(name: str, data) -> tuple[Result | None, tuple[str, ...]]:
    result, warnings = read(name, data)
    return result, tuple(warnings)


def hint(key: str, bundle_path=None, trace=None) -> str:
    """'run `workbench ...` to produce this' for a missing analysis; given the trace, an analysis this bundle
    cannot feed (routes and circuits without the residual decomposition) names the re-trace that can."""
    analysis = ANALYSES[key]
    if trace is not None and key in ("routes", "circuits"):
        from workbench.analyses.decomposed import check_trace

        try:
            check_trace(trace, key)
        except WorkbenchError as error:  # says which flag is missing and prints the full trace command
            return f"This bundle has no {analysis.title}, and {error}."
    command = analysis.command.replace("{bundle}", str(bundle_path) if bundle_path else "BUNDLE")
    return f"This bundle has no {analysis.title}. Run `{command}` to produce it (results/{analysis.analysis}.json)."


# -------------------------------------------------------------------------------------------- scalars
def _int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _float(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class Parsed:
    """A parsed piece plus warnings about what was skipped."""

    value: object = None
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------- head metrics
def head_metrics(results: dict, stack: str, n_layers: int, n_heads: int) -> tuple[dict[str, Metric], list[str]]:
    """Per-head metrics of every stored result: what its result object offers (`head_metrics()`), plus any
    generic "head_metrics" block {name: {values, label, description, stack, zmin, zmax}} (docs/app.md), which
    wins on a name clash. values: a dense [layer][head] list, or a list of {"layer", "head", "value"}."""
    metrics: dict[str, Metric] = {}
    warnings: list[str] = []
    for result_name, data in sorted(results.items()):
        result, problems = read(result_name, data)
        try:
            offered = result.head_metrics() if result is not None else {}
        except Exception as error:  # noqa: BLE001  (one unreadable result must not hide the others)
            offered, problems = {}, [f"results/{result_name}.json: its per-head tables could not be read ({error})"]
        warnings += problems
        for name, metric in offered.items():
            if metric.stack != stack:
                continue
            grid = _fitted(metric, n_layers, n_heads)
            if grid is None:
                warnings.append(f"results/{result_name}.json: {name} is a {' x '.join(map(str, metric.values.shape))} "
                                f"table, not {n_layers} x {n_heads}; skipped")
                continue
            metrics[f"result:{result_name}:{name}"] = Metric(
                f"result:{result_name}:{name}", metric.label, metric.description, grid, source=result_name,
                zmin=metric.zmin, zmax=metric.zmax)
        block = data.get("head_metrics") if isinstance(data, dict) else None
        if block is None:
            continue
        if not isinstance(block, dict):
            warnings.append(f"results/{result_name}.json: head_metrics is not an object; skipped")
            continue
        for name, spec in block.items():
            spec = spec if isinstance(spec, dict) else {"values": spec}
            if str(spec.get("stack", "text")) != stack:
                continue
            grid = _grid(spec.get("values"), n_layers, n_heads)
            if grid is None:
                warnings.append(f"results/{result_name}.json: head_metrics.{name} is not a {n_layers} x {n_heads} "
                                "grid; skipped")
                continue
            metrics[f"result:{result_name}:{name}"] = Metric(
                f"result:{result_name}:{name}", str(spec.get("label", f"{name} ({result_name})")),
                str(spec.get("description", f"from results/{result_name}.json")), grid, source=result_name,
                zmin=_float(spec.get("zmin")), zmax=_float(spec.get("zmax")),
                colorscale=str(spec.get("colorscale", "Viridis")),
            )
    return metrics, warnings


def _fitted(metric: HeadMetric, n_layers: int, n_heads: int) -> np.ndarray | None:
    """A result's [layer, head] values as the model's grid (a sparse metric's smaller grid padded with NaN)."""
    values = np.asarray(metric.values, dtype=np.float64)
    if values.shape == (n_layers, n_heads):
        return values
    if not metric.sparse or values.ndim != 2 or values.shape[0] > n_layers or values.shape[1] > n_heads:
        return None
    grid = np.full((n_layers, n_heads), np.nan)
    grid[:values.shape[0], :values.shape[1]] = values
    return grid


def _grid(values, n_layers: int, n_heads: int) -> np.ndarray | None:
    grid = np.full((n_layers, n_heads), np.nan)
    if isinstance(values, list) and values and all(isinstance(row, list) for row in values):
        if len(values) != n_layers or any(len(row) != n_heads for row in values):
            return None
        for layer, row in enumerate(values):
            for head, value in enumerate(row):
                number = _float(value)
                grid[layer, head] = np.nan if number is None else number
        return grid
    if isinstance(values, list):
        for item in values:
            if not isinstance(item, dict):
                return None
            layer, head, value = _int(item.get("layer")), _int(item.get("head")), _float(item.get("value"))
            if layer is None or head is None or not (0 <= layer < n_layers and 0 <= head < n_heads):
                return None
            grid[layer, head] = np.nan if value is None else value
        return grid if values else None
    return None


# ----------------------------------------------------------------------------------- token values
def token_values(raw, *, n_tokens: int, gen_start: int, gen_end: int) -> Parsed:
    """{position: value} from [{"pos"|"position"|"i", "value"|"score"}], {"pos": value}, or a plain list
    aligned to the generated tokens (or to all tokens)."""
    parsed = Parsed({})
    out: dict[int, float] = parsed.value
    if isinstance(raw, dict):
        items = [{"pos": key, "value": value} for key, value in raw.items()]
    elif isinstance(raw, list) and raw and not isinstance(raw[0], dict):
        if len(raw) == gen_end - gen_start:
            items = [{"pos": gen_start + i, "value": v} for i, v in enumerate(raw)]
        elif len(raw) == n_tokens:
            items = [{"pos": i, "value": v} for i, v in enumerate(raw)]
        else:
            parsed.warnings.append(f"a list of {len(raw)} values matches neither the {gen_end - gen_start} generated "
                                   f"tokens nor all {n_tokens} tokens; skipped")
            return parsed
    elif isinstance(raw, list):
        items = raw
    else:
        return parsed
    skipped = 0
    for item in items:
        if not isinstance(item, dict):
            skipped += 1
            continue
        pos = next((_int(item[k]) for k in ("pos", "position", "i", "token") if k in item), None)
        value = next((_float(item[k]) for k in ("value", "score", "t_vhd", "probability") if k in item), None)
        if pos is None or value is None or not 0 <= pos < n_tokens:
            skipped += 1
            continue
        out[pos] = value
    if skipped:
        parsed.warnings.append(f"{skipped} token values skipped (missing or out-of-range position or value)")
    return parsed


def positions(raw, n_tokens: int) -> list[int]:
    """Token positions from [int] or [{"pos": int, ...}] (e.g. sink or visual-sink tokens)."""
    out = []
    for item in raw if isinstance(raw, list) else []:
        pos = _int(item) if not isinstance(item, dict) else next(
            (_int(item[k]) for k in ("pos", "position", "i", "token") if k in item), None)
        if pos is not None and 0 <= pos < n_tokens:
            out.append(pos)
    return sorted(set(out))


# -------------------------------------------------------------------------------------------- graphs
@dataclass(frozen=True)
class Graph:
    """A node-link graph: nodes {id, ...attrs}, edges {source, target, weight, ...attrs}."""

    nodes: list[dict]
    edges: list[dict]
    attrs: dict


def graph_of(network: nx.DiGraph) -> Parsed:
    """A Graph from a result's networkx graph (checked like node-link JSON)."""
    return graph(nx.node_link_data(network, edges="edges"))


def graph(raw) -> Parsed:
    """A Graph from node-link JSON ({"nodes": [...], "edges"|"links": [...]}, networkx style), checked."""
    parsed = Parsed()
    if not isinstance(raw, dict):
        parsed.warnings.append("graph is not an object")
        return parsed
    raw_nodes = raw.get("nodes")
    raw_edges = raw.get("edges", raw.get("links"))
    if not isinstance(raw_nodes, list) or not isinstance(raw_edges, list):
        parsed.warnings.append("graph lacks a nodes or edges/links list")
        return parsed
    nodes, ids = [], set()
    for node in raw_nodes:
        if isinstance(node, dict) and isinstance(node.get("id"), (str, int)) and not isinstance(node.get("id"), bool):
            clean = {k: v for k, v in node.items() if isinstance(v, (str, int, float, bool)) or v is None}
            clean["id"] = str(node["id"])
            if clean["id"] not in ids:
                ids.add(clean["id"])
                nodes.append(clean)
    edges, skipped = [], len(raw_nodes) - len(nodes)
    for edge in raw_edges:
        if not isinstance(edge, dict) or str(edge.get("source")) not in ids or str(edge.get("target")) not in ids:
            skipped += 1
            continue
        clean = {k: v for k, v in edge.items() if isinstance(v, (str, int, float, bool)) or v is None}
        parts = edge.get("heads")
        if isinstance(parts, (list, tuple)) and len(parts) <= 4096 and all(_float(v) is not None for v in parts):
            clean["heads"] = [float(v) for v in parts]  # per-head parts of a route edge
        clean["source"], clean["target"] = str(edge["source"]), str(edge["target"])
        weight = _float(edge.get("weight", 1.0))
        clean["weight"] = 1.0 if weight is None else weight
        edges.append(clean)
    if skipped:
        parsed.warnings.append(f"{skipped} malformed nodes or edges skipped")
    attrs = raw.get("graph") if isinstance(raw.get("graph"), dict) else {}
    parsed.value = Graph(nodes, edges, {k: v for k, v in raw.items() if k not in ("nodes", "edges", "links")} | attrs)
    return parsed


def route_graphs(result, n_tokens: int) -> Parsed:
    """{root position: Graph} of a routes result's routes (RoutesResult), positions checked against the trace."""
    parsed = Parsed({})
    for route in result.routes:
        one = graph_of(route.graph)
        parsed.warnings += [f"route {route.position}: {w}" for w in one.warnings]
        if not 0 <= route.position < n_tokens:
            parsed.warnings.append(f"route {route.position} is outside the trace's {n_tokens} tokens; skipped")
        elif one.value is not None:
            parsed.value[route.position] = one.value
    return parsed


def routes(data: dict, n_tokens: int) -> Parsed:
    """Routes by target position: {"routes": [graph + {"position"}]} or one graph at the top level."""
    parsed = Parsed({})
    candidates = data.get("routes") if isinstance(data.get("routes"), list) else [data]
    for index, item in enumerate(candidates):
        if not isinstance(item, dict):
            parsed.warnings.append(f"route {index} is not an object; skipped")
            continue
        one = graph(item.get("graph", item) if isinstance(item.get("graph"), dict) and "nodes" in item["graph"] else item)
        parsed.warnings += [f"route {index}: {w}" for w in one.warnings]
        if one.value is None:
            continue
        position = next((_int(source[k]) for source in (item, one.value.attrs)
                         for k in ("position", "target_position", "pos") if k in source), None)
        if position is not None and position < 0:
            position += n_tokens
        if position is None or not 0 <= position < n_tokens:
            parsed.warnings.append(f"route {index} has no valid target position; skipped")
            continue
        parsed.value[position] = one.value
    return parsed
