"""High-norm artifact tokens of a vision encoder (Darcet et al. 2024, "Vision Transformers Need Registers").

ViTs trained without register tokens (DINOv2, OpenCLIP, DeiT-III) recycle a few low-information background patches
as global scratch space: the residual stream of those patches grows to many times the norm of the others from some
middle layer on, and [CLS] attends to them heavily. They are the encoder's own visual sinks.

Norms: per layer l, the L2 norm of every position's residual stream after the layer ([query_pos]: hidden_in of
layer l + 1, and hidden_out after the last layer; a trace made with `--hidden`). A patch is an artifact in layer l
when its norm is above
    rule "relative" (default): factor x the median patch norm of that layer (factor 4). The scale of the norms
        differs from model to model (ViT-S is much smaller than ViT-g), a ratio to the typical patch does not;
    rule "absolute": the paper's fixed cut-off (norm above 150, read off the bimodal histogram of the output
        norms of its large DINOv2 model). Only meaningful for models of that scale.
The paper's criterion is applied at the model output; every layer is reported so one sees where they appear.

Attention they receive, per layer, as shares of a query row's attention summed over the artifact keys and averaged
over heads: from every query (key_mass / query rows, always available), and, where the layer's full maps were kept
(`--maps`), from [CLS] and from the patch rows alone. `uniform_share` (artifacts / positions) is what a row that
attends evenly would give them. Each layer also reports its highest-norm patch (`top`: ratio to the median and the
same shares), flagged or not, so a model without artifacts shows how far it is from having one.
"""

from __future__ import annotations

from typing import Literal

import torch

from workbench.errors import InputError
from workbench.traces.names import tensor_name

PAPER_NORM_THRESHOLD = 150.0
DEFAULT_FACTOR = 4.0


def layer_output_norms(trace) -> list[torch.Tensor | None]:
    """[query_pos] norms of the residual stream after each layer (None where the trace lacks it)."""
    n_layers = trace.n_layers()
    norms: list[torch.Tensor | None] = []
    for layer in range(n_layers):
        name = (tensor_name("text", layer + 1, "hidden_in") if layer + 1 < n_layers
                else tensor_name("text", layer, "hidden_out"))
        norms.append(trace.tensor(name).float().norm(dim=-1) if trace.has(name) else None)
    return norms


def _roles(tokens) -> dict[str, list[int]]:
    from workbench.capture.vision_inputs import position_roles

    return position_roles(tokens)


def _received(trace, layer: int, artifacts: list[int], roles: dict[str, list[int]], n: int) -> dict:
    stats = trace.layer(layer)
    keys = torch.tensor(artifacts, dtype=torch.long)
    everyone = float(stats["key_mass"][:, keys].sum(-1).mean() / n)  # mean over heads of the mean row's share
    out = {"all_share": round(everyone, 6), "cls_share": None, "patch_share": None}
    if "maps" in stats and "map_heads" in stats:
        maps = stats["maps"].float()  # [head, query_pos, key_pos] of the kept heads
        on_artifacts = maps[:, :, keys].sum(-1)  # [head, query_pos]
        if roles["cls"]:
            out["cls_share"] = round(float(on_artifacts[:, roles["cls"][0]].mean()), 6)
        out["patch_share"] = round(float(on_artifacts[:, roles["patch"]].mean()), 6)
        out["map_heads"] = len(stats["map_heads"])
    return out


def find(trace, *, rule: Literal["relative", "absolute"] = "relative", factor: float = DEFAULT_FACTOR,
         threshold: float = PAPER_NORM_THRESHOLD) -> dict:
    """Artifact tokens of a vision-encoder trace (see the module docstring): per layer, the flagged patches with
    their norms, the median patch norm, and the attention the artifacts receive; `tokens` lists the patches flagged
    at the output (the last layer), the paper's criterion."""
    if rule not in ("relative", "absolute"):
        raise InputError(f"artifact rule takes 'relative' or 'absolute', not {rule!r}")
    if trace.model.get("kind") != "vision":
        raise InputError("artifact tokens are defined for vision encoders (trace one with --image and no prompt)")
    norms = layer_output_norms(trace)
    options = {"rule": rule, "factor": factor, "threshold": threshold}
    if norms[-1] is None:
        return {"available": False, "options": options, "layers": [], "tokens": [],
                "reason": "artifact tokens need the residual stream after each layer: trace with --hidden"}
    roles = _roles(trace.tokens)
    patches = torch.tensor(roles["patch"], dtype=torch.long)
    n = len(trace.tokens)
    layers = []
    for layer, norm in enumerate(norms):
        if norm is None:
            continue
        median = float(norm[patches].median())
        limit = factor * median if rule == "relative" else threshold
        flagged = [int(p) for p in patches[norm[patches] > limit].tolist()]
        entry = {"layer": layer, "median_patch_norm": round(median, 4), "limit": round(limit, 4),
                 "cls_norm": round(float(norm[roles["cls"][0]]), 4) if roles["cls"] else None,
                 "artifacts": [{"position": p, "patch": list(trace.tokens[p].patch), "norm": round(float(norm[p]), 4),
                                "ratio": round(float(norm[p]) / median, 3) if median else None} for p in flagged],
                 "uniform_share": round(len(flagged) / n, 6)}
        if flagged:
            entry.update(_received(trace, layer, flagged, roles, n))
        top = int(patches[norm[patches].argmax()])  # the strongest candidate, flagged or not
        ratio = round(float(norm[top]) / median, 3) if median else None
        entry["top"] = {"position": top, "patch": list(trace.tokens[top].patch), "ratio": ratio,
                        **_received(trace, layer, [top], roles, n)}
        layers.append(entry)
    last = layers[-1]
    return {"available": True, "options": options, "layers": layers, "tokens": last["artifacts"],
            "first_layer": next((e["layer"] for e in layers if e["artifacts"]), None),
            "registers": len(roles["register"])}
