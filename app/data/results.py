"""Analysis results stored in a bundle (`results/<name>.json`), read defensively for the app's views.

The analyses are written by other parts of the workbench; this module names, in one table, which result
file(s) each view reads and which command produces them, and parses the JSON shapes documented in
docs/app.md. Anything malformed is skipped with a warning the page shows, never an exception.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from workbench.app.data.metrics import Metric


@dataclass(frozen=True)
class Analysis:
    key: str
    names: tuple[str, ...]  # accepted result names (results/<name>.json), first = canonical
    title: str
    command: str  # "{bundle}" is replaced by the bundle path


ANALYSES: dict[str, Analysis] = {a.key: a for a in [
    Analysis("sinks", ("sinks",), "attention sinks (Gu et al., ACT hidden sinks, VAR visual sinks)",
             "workbench sinks {bundle}"),
    Analysis("vhd", ("vhd", "divergence"), "vision-aware head divergence (VHD, T-VHD)",
             "workbench vhd --bundle {bundle} --model MODEL --image IMAGE"),
    Analysis("routes", ("routes",), "information-flow routes (Ferrando & Voita 2024)",
             "workbench routes {bundle} --position -1 --threshold 0.04"),
    Analysis("circuits", ("circuits",), "SVD head-to-head circuits (Franco & Crovella 2024)",
             "workbench circuits {bundle}"),
    Analysis("probe", ("lookback", "probe", "lookback_lens", "probes", "hallucination"),
             "hallucination probe scores (Lookback Lens)", "workbench trace ... --probe PROBE"),
]}


def find(results: dict, key: str) -> tuple[str, dict] | None:
    """(result name, data) of an analysis in a trace's results, or None."""
    for name in ANALYSES[key].names:
        data = results.get(name)
        if isinstance(data, dict):
            return name, data
    return None


def hint(key: str, bundle_path=None) -> str:
    """'run `workbench ...` to produce this' for a missing analysis."""
    analysis = ANALYSES[key]
    command = analysis.command.replace("{bundle}", str(bundle_path) if bundle_path else "BUNDLE")
    return f"This bundle has no {analysis.title}. Run `{command}` to produce it (results/{analysis.names[0]}.json)."


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
    """Metrics any result offers under "head_metrics": {name: {values, label, description, stack, zmin, zmax}}.

    values: a dense [layer][head] list, or a list of {"layer", "head", "value"}.
    """
    metrics: dict[str, Metric] = {}
    warnings: list[str] = []
    for result_name, data in sorted(results.items()):
        block = data.get("head_metrics") if isinstance(data, dict) else None
        if isinstance(data, dict):
            block = {**_known_head_metrics(data), **(block if isinstance(block, dict) else {})} or block
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


def _known_head_metrics(data: dict) -> dict:
    """Per-head tables inside the results the workbench's analyses write (sinks, vhd, routes, circuits), as
    head_metrics specs, so the Model view offers them without the analyses knowing about the app."""
    out: dict = {}
    analysis = data.get("analysis")
    if analysis == "routes" and isinstance(data.get("heads"), dict):
        n_routes = len(data.get("routes") or []) or 1
        usage = data["heads"].get("usage") if isinstance(data["heads"].get("usage"), dict) else {}
        if isinstance(usage.get("routes"), list):
            frequency = [[(v / n_routes if isinstance(v, (int, float)) else None) for v in row]
                         if isinstance(row, list) else row for row in usage["routes"]]
            out["route_frequency"] = {"values": frequency, "label": "route frequency", "zmin": 0, "zmax": 1,
                                      "description": f"share of the {n_routes} stored routes with an edge this head "
                                                     "carries above the threshold (Ferrando & Voita 2024)"}
        if isinstance(usage.get("weight"), list):
            out["route_weight"] = {"values": usage["weight"], "label": "route contribution",
                                   "description": "summed contribution of the head's parts on route edges"}
        patterns = data["heads"].get("patterns")
        scores = patterns.get("scores") if isinstance(patterns, dict) else None
        for kind, table in (scores or {}).items() if isinstance(scores, dict) else ():
            if isinstance(table, list):
                out[f"pattern_{kind}"] = {"values": table, "label": f"{kind.replace('_', '-')} score", "zmin": 0,
                                          "zmax": 1, "description": f"{kind.replace('_', ' ')} pattern score "
                                                                    "(typed heads of the routes analysis)"}
    if analysis == "sinks":
        stack = str(data.get("stack", "text"))
        heads = [h for h in data.get("heads") or [] if isinstance(h, dict)]
        if heads:
            out["top_alpha"] = {"stack": stack, "label": "max alpha over keys", "zmin": 0, "zmax": 1, "values": [
                {"layer": h.get("layer"), "head": h.get("head"), "value": h.get("top_alpha")} for h in heads],
                "description": "largest Gu et al. alpha of any key (results/sinks.json)"}
            out["sink_keys"] = {"stack": stack, "label": "sink keys (alpha > eps)", "values": [
                {"layer": h.get("layer"), "head": h.get("head"),
                 "value": len(h["sink_keys"]) if isinstance(h.get("sink_keys"), list) else None} for h in heads],
                "description": "number of keys with alpha above eps (results/sinks.json)"}
        hidden = data.get("hidden_sinks") if isinstance(data.get("hidden_sinks"), dict) else {}
        entries = hidden.get(hidden.get("rule"), []) if isinstance(hidden.get(hidden.get("rule")), list) else []
        counts: dict[tuple, int] = {}
        for entry in entries:
            if isinstance(entry, dict):
                key = (entry.get("layer"), entry.get("head"))
                counts[key] = counts.get(key, 0) + 1
        if heads or counts:
            out["hidden_sinks"] = {"stack": stack, "label": "hidden sinks (ACT)", "values": [
                {"layer": h.get("layer"), "head": h.get("head"), "value": counts.get((h.get("layer"), h.get("head")), 0)}
                for h in heads] or [{"layer": k[0], "head": k[1], "value": v} for k, v in counts.items()],
                "description": f"keys after position 0 above the {hidden.get('rule')} threshold (ACT hidden sinks)"}
        centric = data.get("image_centric") if isinstance(data.get("image_centric"), dict) else {}
        rows = [h for h in centric.get("heads") or [] if isinstance(h, dict)] if centric.get("available") else []
        if rows:
            out["image_centric_rows"] = {"stack": stack, "label": "image-centric rows (VAR)", "zmin": 0, "zmax": 1,
                                         "values": [{"layer": h.get("layer"), "head": h.get("head"),
                                                     "value": h.get("centric_rows")} for h in rows],
                                         "description": "share of text rows where the head is image-centric "
                                                        f"(paper rho = {centric.get('rho')})"}
    if analysis == "vhd" and isinstance(data.get("vhd"), list) and data["vhd"]:
        try:
            values = np.asarray(data["vhd"], dtype=np.float64)  # [step, layer, head]
            if values.ndim == 3:
                out["vhd"] = {"values": np.nanmean(values, axis=0).tolist(), "label": "VHD (mean over tokens)",
                              "description": "vision-aware head divergence averaged over the generated tokens"}
        except (TypeError, ValueError):
            pass
    if analysis == "circuits" and isinstance(data.get("graph"), dict):
        nodes = [n for n in data["graph"].get("nodes", []) if isinstance(n, dict)]
        items = [{"layer": n.get("layer"), "head": n.get("head"), "value": n.get("firings")} for n in nodes]
        if items:
            out["circuit_firings"] = {"values": items, "label": "circuit firings", "sparse": True,
                                      "description": "firings (A_ij >= threshold) of each head in the SVD circuit "
                                                     "analysis; blank = none"}
    return out


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


def aligned_values(payload: dict, field: str) -> object:
    """`payload[field]`, paired with `payload["tokens"][i]["position"]` when both are lists of the same length
    (the VHD result's per-step values)."""
    values, tokens = payload.get(field), payload.get("tokens")
    if isinstance(values, list) and isinstance(tokens, list) and len(values) == len(tokens) and all(
            isinstance(t, dict) and "position" in t for t in tokens):
        return [{"pos": t["position"], "value": v} for t, v in zip(tokens, values)]
    return values


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
