"""Attention sinks of one traced input: which tokens soak up attention, in which heads, and of what kind.

- Gu et al. 2025, "When Attention Sink Emerges in Language Models" (sail-sg/Attention-Sink,
  eval_sink_open_source.py::compute_attention_sink): alpha_k = key_mass / key_count per (layer, head) (the mean
  over the queries that see k), Sink_k^eps = 100 * fraction of (layer, head) with alpha_k > eps (eps = 0.3).
- ACT, Yu et al. 2024, "Unveiling and Harnessing Hidden Attention Sinks" (GATECH-EIC/ACT): hidden sinks are keys
  other than position 0 with alpha_k above an absolute threshold (released code: 0.1, the default here) or above
  factor / n (the paper's alpha / n rule, factor 5; it also flags early keys of near-uniform causal heads, whose
  alpha is about H_n / n). The column mean is the same alpha as Gu's, as in the released code.
- VAR, Kang et al. 2025 (MICV-yonsei/VisAttnSink): sink dimensions, visual sink tokens, image-centric heads
  (see visual_sinks.py).
- Ruscio et al., "What are you sinking? A geometric approach on attention sink": the sink kind (rule below).

Statistics needed: key_mass and key_count (always kept) for alpha, Sink^eps, hidden sinks and the kind;
hidden_in (`--hidden`) for sink dimensions and visual sinks; region_mass (always) plus per-row attention on the
sinks (top-k, maps or the decomposition) for image-centric heads. Never full maps.

A late key's alpha averages only the few query rows that see it (the last key's alpha is its own self-attention),
so keys seen by fewer than min_queries rows (16, or a quarter of a short input) are not listed as sinks;
Sink_k^eps itself is reported for every key, exactly as Gu et al. define it.

Sink kind (a documented rule, per input): "none" when no listed key is a sink in any head; "bidirectional" when
attention is not causal (every query sees every key, as in BERT-style encoders, where Ruscio et al. find the
[CLS]/[SEP] reference frame); otherwise "centralized" when one token holds >= central_share (2/3) of the sink
mass (the sum of alpha over the (layer, head, key) entries above eps), else "distributed".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch

from workbench.analyses import visual_sinks as visual
from workbench.analyses.result import HeadMetric, Result, stored_version
from workbench.errors import BundleError, InputError
from workbench.interventions import VAR, effective_min_queries
from workbench.traces.metrics import SINK_EPSILON, sink_mask, sink_percent
from workbench.traces.metrics import alpha as layer_alpha

__all__ = ["SinksResult", "analyse", "calibrate_var", "gu_alpha", "sink_percent"]

METHOD = ("Gu et al. 2025 (alpha, Sink^eps); ACT, Yu et al. 2024 (hidden sinks); VAR, Kang et al. 2025 (sink "
          "dimensions, visual sinks, image-centric heads); Ruscio et al. (sink kind)")


@dataclass(frozen=True)
class SinksResult(Result):
    """What `analyse` found. alpha [layer, head, key_pos] and sink_percent [key_pos] are tensors; alpha is not
    stored in the JSON (None in a result read back with `from_json`)."""

    analysis: ClassVar[str] = "sinks"
    schema_version: ClassVar[int] = 1

    model: str
    stack: str
    options: dict
    alpha: torch.Tensor | None = field(compare=False, repr=False)
    sink_percent: torch.Tensor = field(compare=False, repr=False)
    sink_tokens: tuple
    layers: tuple
    heads: tuple
    hidden_sinks: dict
    kind: dict
    sink_dims: dict | None = None
    visual_sinks: dict | None = None
    image_centric: dict | None = None
    notes: tuple = ()

    @property
    def sink_heads(self) -> list[tuple[int, int, int]]:
        """(layer, head, key) with alpha_k > eps among the listed keys."""
        return [(h["layer"], h["head"], key) for h in self.heads for key in h["sink_keys"]]

    def to_json(self) -> dict:
        return {
            "analysis": self.analysis, "schema_version": self.schema_version, "method": METHOD, "model": self.model,
            "stack": self.stack, "options": self.options,
            "sink_percent": [round(float(v), 6) for v in self.sink_percent], "sink_tokens": list(self.sink_tokens),
            "layers": list(self.layers), "heads": list(self.heads), "hidden_sinks": self.hidden_sinks,
            "kind": self.kind, "sink_dims": self.sink_dims, "visual_sinks": self.visual_sinks,
            "image_centric": self.image_centric, "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: dict) -> SinksResult:
        stored_version(data, cls)
        heads = tuple(data["heads"])
        if not all(isinstance(h, dict) and isinstance(h.get("layer"), int) and isinstance(h.get("head"), int)
                   for h in heads):
            raise BundleError("the sinks result's heads must be {layer, head, top_alpha, sink_keys, ...} objects")
        hidden = dict(data.get("hidden_sinks") or {})
        if isinstance(hidden.get("heads"), list):  # JSON turned the (layer, head) tuples into lists
            hidden["heads"] = [tuple(item) for item in hidden["heads"]]
        return cls(model=str(data.get("model", "?")), stack=str(data.get("stack", "text")),
                   options=dict(data.get("options") or {}), alpha=None,
                   sink_percent=torch.tensor(data.get("sink_percent") or [], dtype=torch.float32),
                   sink_tokens=tuple(data.get("sink_tokens") or ()), layers=tuple(data.get("layers") or ()),
                   heads=heads, hidden_sinks=hidden, kind=dict(data.get("kind") or {}),
                   sink_dims=data.get("sink_dims"), visual_sinks=data.get("visual_sinks"),
                   image_centric=data.get("image_centric"), notes=tuple(data.get("notes") or ()))

    def head_metrics(self) -> dict[str, HeadMetric]:
        """Max alpha and sink keys per head (Gu et al.), hidden sinks (ACT) and image-centric rows (VAR)."""
        if not self.heads:
            return {}
        shape = (1 + max(h["layer"] for h in self.heads), 1 + max(h["head"] for h in self.heads))

        def grid(items) -> np.ndarray:  # (layer, head, value) -> [layer, head], NaN where missing
            values = np.full(shape, np.nan)
            for layer, head, value in items:
                values[layer, head] = np.nan if value is None else value
            return values

        rule = self.hidden_sinks.get("rule")
        counts = np.zeros(shape)
        for entry in self.hidden_sinks.get(rule) or []:
            counts[entry["layer"], entry["head"]] += 1
        out = {
            "top_alpha": HeadMetric(grid((h["layer"], h["head"], h["top_alpha"]) for h in self.heads),
                                    "max alpha over keys", "largest Gu et al. alpha of any key (sinks analysis)",
                                    self.stack, 0, 1),
            "sink_keys": HeadMetric(grid((h["layer"], h["head"], len(h["sink_keys"])) for h in self.heads),
                                    "sink keys (alpha > eps)", "number of keys with alpha above eps (sinks analysis)",
                                    self.stack),
            "hidden_sinks": HeadMetric(counts, "hidden sinks (ACT)",
                                       f"keys after position 0 above the {rule} threshold (ACT hidden sinks)", self.stack),
        }
        centric = self.image_centric or {}
        if centric.get("available") and centric.get("heads"):
            out["image_centric_rows"] = HeadMetric(
                grid((h["layer"], h["head"], h["centric_rows"]) for h in centric["heads"]), "image-centric rows (VAR)",
                f"share of text rows where the head is image-centric (paper rho = {centric.get('rho')})", self.stack,
                0, 1)
        return out

    def token_sets(self) -> dict[str, list[int]]:
        """Positions of the listed sink tokens and of VAR's visual sink tokens (image tokens)."""
        out = {"sink_tokens": sorted(entry["position"] for entry in self.sink_tokens)}
        if self.visual_sinks is not None:
            out["visual_sinks"] = sorted(entry["position"] for entry in self.visual_sinks.get("visual", []))
        return out


def gu_alpha(trace, stack: str = "text") -> torch.Tensor:
    """alpha [layer, head, key_pos] of every layer (Gu et al.), from key_mass / key_count."""
    layers = []
    for layer in range(trace.n_layers(stack)):
        stats = trace.layer(layer, stack)
        if "key_mass" not in stats:
            raise InputError(f"the trace has no attention statistics for {stack} layer {layer}; trace it again")
        layers.append(layer_alpha(stats["key_mass"], stats["key_count"]))
    return torch.stack(layers)


def analyse(trace, *, eps: float = SINK_EPSILON, stack: Literal["text", "vision"] = "text",
            hidden_rule: Literal["absolute", "relative"] = "absolute", hidden_threshold: float = 0.1,
            hidden_factor: float = 5.0, min_queries: int = 16, central_share: float = 2 / 3,
            dims: tuple[int, ...] | None = None, contrast: float = 10.0, floor: float = 5.0, tau: float = 20.0,
            visual_first_layer: int = 2, rho: float = 0.5, summ: float = 0.2) -> SinksResult:
    """Attention sinks of `trace` (see the module docstring for every rule and which statistics it needs).

    >>> import workbench
    >>> probe = ("Attention sinks are easy to see in a planted model. "
    ...          "The period in this prompt is a hidden sink and every later token looks at it")
    >>> result = analyse(workbench.trace("planted-sink", probe, raw=True))
    >>> [(s["text"], round(s["sink_percent"], 1)) for s in result.sink_tokens]   # Sink^0.3 in percent
    [('<|bos|>', 16.7), ('.', 8.3)]
    >>> result.kind["kind"], result.hidden_sinks["heads"]      # the planted hidden sink head (2, 2)
    ('distributed', [(2, 2)])
    """
    if stack not in trace.stacks:
        raise InputError(f"the trace has no {stack!r} stack; it has {', '.join(trace.stacks)}")
    alpha = gu_alpha(trace, stack)
    n = alpha.shape[-1]
    count = trace.layer(0, stack)["key_count"]
    guard = count >= effective_min_queries(min_queries, n)
    listed = sink_mask(alpha, eps) & guard
    percent = sink_percent(alpha, eps)
    tokens = trace.tokens if stack == "text" else None
    options = {"eps": eps, "hidden_rule": hidden_rule, "hidden_threshold": hidden_threshold,
               "hidden_factor": hidden_factor, "min_queries": effective_min_queries(min_queries, n),
               "central_share": central_share, "contrast": contrast, "floor": floor, "tau": tau,
               "visual_first_layer": visual_first_layer, "rho": rho, "code_rho": round(1 - rho, 6), "summ": summ}
    notes = []
    result = {
        "model": trace.model.get("name", "?"), "stack": stack, "options": options, "alpha": alpha.float(),
        "sink_percent": percent.float(), "sink_tokens": tuple(_sink_tokens(alpha, listed, percent, tokens)),
        "layers": tuple(_layer_table(alpha, listed)), "heads": tuple(_head_table(alpha, listed)),
        "hidden_sinks": _hidden_sinks(alpha, guard, hidden_threshold, hidden_factor, hidden_rule),
        "kind": _kind(alpha, listed, count, central_share, tokens),
    }
    if stack == "text":
        extra, extra_notes = _visual_part(trace, result["sink_tokens"], dims, contrast, floor, tau,
                                          visual_first_layer, rho, summ)
        result.update(extra)
        notes += extra_notes
    return SinksResult(**result, notes=tuple(notes))


def _token_info(tokens, position: int) -> dict:
    if tokens is None:
        return {"text": "[CLS]" if position == 0 else f"patch {position - 1}", "region": "special" if position == 0
                else "image"}
    token = tokens[position]
    return {"text": token.text, "region": token.region, "patch": list(token.patch) if token.patch else None}


def _sink_tokens(alpha, listed, percent, tokens) -> list[dict]:
    keys = listed.any(0).any(0).nonzero().flatten().tolist()
    entries = [{"position": k, **_token_info(tokens, k), "sink_percent": round(float(percent[k]), 6),
                "heads": int(listed[..., k].sum()), "mean_alpha": round(float(alpha[..., k].mean()), 6),
                "max_alpha": round(float(alpha[..., k].max()), 6)} for k in keys]
    return sorted(entries, key=lambda e: (-e["sink_percent"], e["position"]))


def _layer_table(alpha, listed) -> list[dict]:
    rows = []
    for layer in range(alpha.shape[0]):
        totals = alpha[layer].mean(0)
        rows.append({"layer": layer, "sink_heads": int(listed[layer].any(-1).sum()),
                     "first_token_heads": int(listed[layer, :, 0].sum()),
                     "mean_alpha_first": round(float(alpha[layer, :, 0].mean()), 6),
                     "top_key": int(totals.argmax()), "top_key_mean_alpha": round(float(totals.max()), 6)})
    return rows


def _head_table(alpha, listed) -> list[dict]:
    rows = []
    for layer in range(alpha.shape[0]):
        for head in range(alpha.shape[1]):
            values = alpha[layer, head]
            rows.append({"layer": layer, "head": head, "alpha_first": round(float(values[0]), 6),
                         "top_key": int(values.argmax()), "top_alpha": round(float(values.max()), 6),
                         "sink_keys": listed[layer, head].nonzero().flatten().tolist()})
    return rows


def _hidden_sinks(alpha, guard, threshold, factor, rule) -> dict:
    """ACT hidden sinks per (layer, head): key > 0 above the threshold, under both rules (rule = the default)."""
    n = alpha.shape[-1]
    limits = {"absolute": threshold, "relative": factor / n}
    out = {"rule": rule, "thresholds": {name: round(value, 6) for name, value in limits.items()}}
    for name, limit in limits.items():
        hits = (alpha > limit) & guard
        hits[..., 0] = False
        out[name] = [{"layer": l, "head": h, "key": k, "alpha": round(float(alpha[l, h, k]), 6)}
                     for l, h, k in hits.nonzero().tolist()]
    out["heads"] = sorted({(e["layer"], e["head"]) for e in out[rule]})
    out["keys"] = sorted({e["key"] for e in out[rule]})
    return out


def _kind(alpha, listed, count, central_share, tokens) -> dict:
    mass = (alpha * listed).sum((0, 1))  # [key_pos]
    total = float(mass.sum())
    causal = bool(count[0] > count[-1])
    frame = [{"position": k, **_token_info(tokens, k), "share": round(float(mass[k]) / total, 6)}
             for k in mass.argsort(descending=True).tolist() if total and mass[k] >= 0.05 * total]
    if total == 0:
        kind, reason = "none", "no key has alpha above eps in any head"
    elif not causal:
        kind, reason = "bidirectional", "attention is not causal (every query sees every key): an encoder"
    elif frame[0]["share"] >= central_share:
        kind, reason = "centralized", f"one token holds {frame[0]['share']:.0%} of the sink mass"
    else:
        kind, reason = "distributed", f"the top token holds only {frame[0]['share']:.0%} of the sink mass"
    return {"kind": kind, "reason": reason, "causal": causal, "frame": frame, "rule": "see workbench.analyses.sinks"}


def _visual_part(trace, sink_tokens, dims, contrast, floor, tau, first_layer, rho, summ):
    notes = []
    has_image = any(t.region == "image" for t in trace.tokens)
    if not visual.hidden_layers(trace):
        notes.append("sink dimensions and visual sinks need the residual stream: trace with --hidden")
        unavailable = {"available": False, "heads": [], "reason": "finding the visual sinks needs --hidden"}
        return ({"image_centric": unavailable} if has_image else {}), notes
    d_model = trace.dims["stacks"]["text"]["d_model"]
    if d_model ** 0.5 <= tau:
        notes.append(f"phi <= sqrt(d_model) = {d_model ** 0.5:.1f} in this model, so tau = {tau:g} can never be "
                     "exceeded: pass a smaller tau to look for visual sinks")
    found = visual.sink_dimensions(trace, [t["position"] for t in sink_tokens], contrast=contrast, floor=floor)
    if dims:
        found["dims"], found["given"] = list(dims), True
    out = {"sink_dims": found}
    if found["dims"]:
        phis = visual.phi_by_layer(trace, found["dims"])
        out["visual_sinks"] = visual.visual_sinks(trace, phis, tau=tau, first_layer=first_layer)
    else:
        phis = {}
        notes.append("no sink dimension found, so no token can be a VAR sink")
    if has_image:
        out["image_centric"] = visual.image_centric_heads(trace, phis, tau=tau, rho=rho, summ=summ)
    return out, notes


def calibrate_var(tracer, prompt: str, image=None, spec: VAR | None = None, *, system: str | None = None,
                  raw: bool = False) -> VAR:
    """A VAR intervention with its sink dimensions found on this input (one extra prompt forward, no generation).

    tracer: a `workbench.capture.Tracer` of the model."""
    spec = spec or VAR()
    if spec.dims:
        return spec
    probe = tracer.trace(prompt, image, hidden_states=True, system=system, raw=raw)
    found = analyse(probe, tau=spec.tau).sink_dims or {}
    if not found.get("dims"):
        raise InputError("no sink dimension stands out on this input, so VAR has nothing to act on; pass them "
                         "explicitly, e.g. --intervene var:dims=1415,2533")
    return dataclasses.replace(spec, dims=tuple(found["dims"]))
