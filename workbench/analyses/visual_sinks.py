"""Sink dimensions, visual sink tokens and image-centric heads (VAR: Kang et al. 2025, "See What You Are Told:
Visual Attention Sink in Large Multimodal Models"; reference MICV-yonsei/VisAttnSink, src/logic/logic.py).

Shapes: hidden_in [query_pos, d_model] per layer; r[t, d] = |x_td| / RMS(x_t) (RMS without a norm weight, eps 1e-6,
as the reference's DimProspector); phi_l(t) = max_{d in D_sink} r_l[t, d].

Sink dimensions are found, not looked up: a value x_td of a high-attention token t (a Gu sink in some head) is
massive when |x_td| >= contrast * median_t' |x_t'd| (the same dimension over all tokens of that layer; Sun et
al.'s massive activations are ~1000x the median) and r[t, d] >= floor (it carries a real share of the token's
norm). D_sink = the dimensions massive on a sink token in at least half as many layers as the best dimension.
The contrast matters: small models (SmolLM2) carry outlier channels that are large on every token, and those
are not sink dimensions.

Layers (the reference's rule, the default of `sinks.analyse`): its DimProspector looks for sink tokens only in the
hidden states entering layers 2 and later of the prompt forward, and HeadFork forks heads (image-centric) only in
a layer where a visual sink was found; layers 0-1 and layers without a visual sink have none. The wider rule
("all" layers) searches from layer 0 and scores heads in every layer, a layer without a visual sink counting the
whole image attention as non-sink.
"""

from __future__ import annotations

import torch

from workbench.interventions import phi as var_phi
from workbench.traces.names import tensor_name
from workbench.traces.tokens import REGIONS

IMAGE = REGIONS.index("image")


def _relative(hidden: torch.Tensor) -> torch.Tensor:
    hidden = hidden.float()
    return hidden.abs() / hidden.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()


def hidden_layers(trace) -> list[int]:
    return [layer for layer in range(trace.n_layers()) if trace.has(tensor_name("text", layer, "hidden_in"))]


def sink_dimensions(trace, candidates: list[int], *, contrast: float = 10.0, floor: float = 5.0,
                    min_layer_share: float = 0.5, first_layer: int = 0) -> dict:
    """D_sink from the residual stream entering every layer >= first_layer (needs hidden_in) at the
    high-attention tokens."""
    found: dict[int, dict] = {}
    layers = [layer for layer in hidden_layers(trace) if layer >= first_layer]
    for layer in layers:
        hidden = trace.tensor(tensor_name("text", layer, "hidden_in")).float()
        if not candidates:
            break
        magnitude = hidden.abs()
        median = magnitude.median(0).values  # [d_model]
        ratio = _relative(hidden)
        rows = torch.tensor(candidates)
        massive = (magnitude[rows] >= contrast * median) & (ratio[rows] >= floor)  # [candidate, d_model]
        for index, dim in massive.nonzero().tolist():
            entry = found.setdefault(dim, {"dim": dim, "layers": set(), "tokens": set(), "max_r": 0.0})
            entry["layers"].add(layer)
            entry["tokens"].add(candidates[index])
            entry["max_r"] = max(entry["max_r"], float(ratio[candidates[index], dim]))
    best = max((len(e["layers"]) for e in found.values()), default=0)
    ranked = sorted(found.values(), key=lambda e: (-len(e["layers"]), -e["max_r"], e["dim"]))
    table = [{"dim": e["dim"], "layers": sorted(e["layers"]), "tokens": sorted(e["tokens"]),
              "max_r": round(e["max_r"], 4), "selected": len(e["layers"]) >= min_layer_share * best}
             for e in ranked]
    return {"dims": [e["dim"] for e in table if e["selected"]], "candidates": list(candidates), "table": table,
            "layers_searched": layers}


def phi_by_layer(trace, dims) -> dict[int, torch.Tensor]:
    """layer -> phi [query_pos] of the hidden state entering it (VAR's phi over the sink dimensions)."""
    return {layer: var_phi(trace.tensor(tensor_name("text", layer, "hidden_in")), dims) for layer in hidden_layers(trace)}


def visual_sinks(trace, phis: dict[int, torch.Tensor], *, tau: float, first_layer: int) -> dict:
    """Image tokens with phi > tau entering layers >= first_layer (VAR), and the text tokens that pass too."""
    regions = trace.regions
    by_token: dict[int, dict] = {}
    for layer, values in phis.items():
        if layer < first_layer:
            continue
        for position in (values > tau).nonzero().flatten().tolist():
            entry = by_token.setdefault(position, {"position": position, "layers": [], "max_phi": 0.0})
            entry["layers"].append(layer)
            entry["max_phi"] = round(max(entry["max_phi"], float(values[position])), 4)
    visual, text = [], []
    for position, entry in sorted(by_token.items()):
        token = trace.tokens[position]
        entry.update(text=token.text, region=token.region, patch=list(token.patch) if token.patch else None)
        (visual if int(regions[position]) == IMAGE else text).append(entry)
    return {"visual": visual, "text": text, "tau": tau, "first_layer": first_layer,
            "max_phi_image": round(max((float(v[regions == IMAGE].max()) for v in phis.values()
                                        if bool((regions == IMAGE).any())), default=0.0), 4)}


def _sink_mass_rows(trace, layer: int, rows: torch.Tensor, keys: list[int]) -> tuple[torch.Tensor | None, str]:
    """[head, len(rows)] attention each row puts on `keys`, from maps, the decomposition (exact) or top-k."""
    stats = trace.layer(layer)
    n_heads = trace.n_heads()
    keys_t = torch.tensor(keys, dtype=torch.long)
    if not keys:
        return torch.zeros(n_heads, len(rows)), "none needed"
    if "maps" in stats and len(stats["map_heads"]) == n_heads:
        return stats["maps"].float()[:, rows][:, :, keys_t].sum(-1), "maps"
    if "query" in stats and "key" in stats:
        query, key = stats["query"].float(), stats["key"].float()  # query already carries the softmax scaling
        group = n_heads // key.shape[0]
        key = key.repeat_interleave(group, dim=0)
        scores = query[:, rows] @ key.transpose(-1, -2)  # [head, row, key_pos]
        visible = torch.arange(key.shape[1])[None, :] <= rows[:, None]
        probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), -1)
        return probs[..., keys_t].sum(-1), "decomposition"
    if "top_index" in stats:
        index, weight = stats["top_index"][:, rows], stats["top_weight"][:, rows].float()
        return (weight * torch.isin(index, keys_t)).sum(-1), "top_k (lower bound)"
    return None, "unavailable"


def image_centric_heads(trace, phis: dict[int, torch.Tensor], *, tau: float, rho: float, summ: float,
                        first_layer: int = 2, need_visual_sink: bool = True) -> dict:
    """Per (layer, head): over the text query rows after the image, the share of rows where the head is
    image-centric (image attention >= summ and non-sink share of it >= rho, paper convention). Image attention
    comes from the always-on region_mass; the sink part needs maps, the decomposition or top-k (see module doc).
    Heads are forked only in layers >= first_layer, and with need_visual_sink only where the layer has a visual
    sink (the reference); other layers' heads get centric_rows 0 and `forked` False.
    """
    regions = trace.regions
    image_positions = (regions == IMAGE).nonzero().flatten()
    if not len(image_positions):
        return {"available": False, "reason": "the input has no image tokens", "heads": []}
    rows = torch.arange(int(image_positions.max()) + 1, len(trace.tokens))
    if not len(rows):
        return {"available": False, "reason": "no text query follows the image", "heads": []}
    heads, sources = [], set()
    for layer in range(trace.n_layers()):
        stats = trace.layer(layer)
        image_mass = stats["region_mass"].float()[:, rows, IMAGE]  # [head, row]
        values = phis.get(layer) if layer >= first_layer else None
        sinks = [] if values is None else [p for p in image_positions.tolist() if float(values[p]) > tau]
        forked = layer >= first_layer and (bool(sinks) or not need_visual_sink)
        sink_mass, source = _sink_mass_rows(trace, layer, rows, sinks)
        sources.add(source)
        if sink_mass is None:
            return {"available": False, "heads": [],
                    "reason": "the per-row attention on the visual sinks needs maps, the decomposition or top-k "
                              "statistics: trace with --top-k 8 (or --maps / --decomposition)"}
        non_sink = 1 - sink_mass / image_mass.clamp_min(1e-30)
        centric = (image_mass >= summ) & (non_sink >= rho) & forked
        for head in range(image_mass.shape[0]):
            heads.append({"layer": layer, "head": head, "visual_sinks": sinks, "forked": forked,
                          "image_share": round(float(image_mass[head].mean()), 6),
                          "non_sink_share": round(float(non_sink[head][image_mass[head] > 0].mean()), 6)
                          if bool((image_mass[head] > 0).any()) else None,
                          "centric_rows": round(float(centric[head].float().mean()), 6)})
    return {"available": True, "rows": [int(rows[0]), int(rows[-1]) + 1], "rho": rho,
            "layers": "reference" if need_visual_sink else "all", "first_layer": first_layer,
            "code_rho": round(1 - rho, 6), "summ": summ, "sources": sorted(sources),
            "image_centric": [[h["layer"], h["head"]] for h in heads if h["centric_rows"] >= 0.5], "heads": heads}
