"""Attention sinks of one traced input: which tokens soak up attention, in which heads, and of what kind.

- Gu et al. 2025, "When Attention Sink Emerges in Language Models" (sail-sg/Attention-Sink,
  eval_sink_open_source.py::compute_attention_sink): alpha_k = key_mass / key_count per (layer, head) (the mean
  over the queries that see k), Sink_k^eps = 100 * fraction of (layer, head) with alpha_k > eps (eps = 0.3).
  query_rows "prompt" (default, the reference's prompt forward): only the prompt's query rows, over the prompt's
  keys; "all": the generated rows too, over every key (`traces.metrics.key_columns`).
- ACT, Yu et al. 2024, "Unveiling and Harnessing Hidden Attention Sinks" (GATECH-EIC/ACT): hidden sinks are keys
  other than position 0 with alpha_k above factor / n (the paper's alpha / n rule, factor 5, the default here) or
  above an absolute threshold (the released script's rule, 0.1). The absolute rule is degenerate on short inputs:
  a near-uniform causal head gives early keys alpha about (H_n - H_k) / (n - k), above 0.1 for n below ~30. The
  relative rule in turn flags early keys of near-uniform heads on long inputs (H_n > factor + 1, n above ~230).
  The column mean is the same alpha as Gu's, as in the released code.
- VAR, Kang et al. 2025 (MICV-yonsei/VisAttnSink): sink dimensions, visual sink tokens, image-centric heads
  (see visual_sinks.py); var_layers "reference" (default) searches from layer 2 on and forks heads only in layers
  with a visual sink, "all" searches every layer and scores heads in every layer.
- Ruscio et al., "What are you sinking? A geometric approach on attention sink": the sink kind (rule below).
- Darcet et al. 2024, "Vision Transformers Need Registers": on a vision-encoder trace, the high-norm artifact
  patches and the attention they receive (artifact_tokens.py; artifact_rule "relative" | "absolute").

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

from workbench.analyses import artifact_tokens as artifacts_mod
from workbench.analyses import visual_sinks as visual
from workbench.analyses.result import HeadMetric, Result, stored_version
from workbench.errors import BundleError, InputError
from workbench.interventions import VAR, effective_min_queries
from workbench.traces.metrics import QUERY_ROWS, SINK_EPSILON, key_columns, sink_mask, sink_percent
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
    artifacts: dict | None = None  # vision encoders only (artifact_tokens.find)

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
            **({"artifacts": self.artifacts} if self.artifacts is not None else {}),
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
                   image_centric=data.get("image_centric"), notes=tuple(data.get("notes") or ()),
                   artifacts=data.get("artifacts"))

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
        rows = f"{self.options.get('query_rows', 'all')} rows"  # which query rows the alphas average
        counts = np.zeros(shape)
        for entry in self.hidden_sinks.get(rule) or []:
            counts[entry["layer"], entry["head"]] += 1
        out = {
            "top_alpha": HeadMetric(grid((h["layer"], h["head"], h["top_alpha"]) for h in self.heads),
                                    f"max alpha over keys ({rows})",
                                    f"largest Gu et al. alpha of any key, averaged over the {rows} (sinks analysis)",
                                    self.stack, 0, 1),
            "sink_keys": HeadMetric(grid((h["layer"], h["head"], len(h["sink_keys"])) for h in self.heads),
                                    f"sink keys (alpha > eps, {rows})",
                                    f"number of keys with alpha above eps, alpha over the {rows} (sinks analysis)",
                                    self.stack),
            "hidden_sinks": HeadMetric(counts, f"hidden sinks (ACT, {rule} rule)",
                                       f"keys after position 0 above the {rule} threshold, alpha over the {rows} "
                                       "(ACT hidden sinks)", self.stack),
        }
        centric = self.image_centric or {}
        if centric.get("available") and centric.get("heads"):
            out["image_centric_rows"] = HeadMetric(
                grid((h["layer"], h["head"], h["centric_rows"]) for h in centric["heads"]),
                f"image-centric rows (VAR, {centric.get('layers', 'all')} layers)",
                f"share of text rows where the head is image-centric (paper rho = {centric.get('rho')}; layers: "
                f"{centric.get('layers', 'all')})", self.stack, 0, 1)
        return out

    def token_sets(self) -> dict[str, list[int]]:
        """Positions of the listed sink tokens and of VAR's visual sink tokens (image tokens)."""
        out = {"sink_tokens": sorted(entry["position"] for entry in self.sink_tokens)}
        if self.visual_sinks is not None:
            out["visual_sinks"] = sorted(entry["position"] for entry in self.visual_sinks.get("visual", []))
        if self.artifacts is not None:
            out["artifact_tokens"] = sorted(entry["position"] for entry in self.artifacts.get("tokens", []))
        return out


def gu_alpha(trace, stack: str = "text", query_rows: Literal["prompt", "all"] = "prompt") -> torch.Tensor:
    """alpha [layer, head, key_pos] of every layer (Gu et al.), key mass / key count over the chosen query rows:
    "prompt" (the reference's prompt forward: the prompt's rows and keys only) or "all" (every row and key)."""
    return _alpha_and_count(trace, stack, query_rows)[0]


def _prompt_length(trace, stack: str) -> int | None:
    """Number of prompt positions when the trace has generated rows (else None: every row is a prompt row)."""
    start, end = int(trace.generation.get("start", 0)), int(trace.generation.get("end", 0))
    return start if stack == "text" and end > start >= 1 else None


def _alpha_and_count(trace, stack: str, query_rows: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha [layer, head, key_pos], key_count [key_pos] of layer 0) over the chosen query rows."""
    if query_rows not in QUERY_ROWS:
        raise InputError(f"query_rows takes {' or '.join(repr(q) for q in QUERY_ROWS)}, not {query_rows!r}")
    prompt = _prompt_length(trace, stack)
    layers, count = [], None
    for layer in range(trace.n_layers(stack)):
        stats = trace.layer(layer, stack)
        if "key_mass" not in stats:
            raise InputError(f"the trace has no attention statistics for {stack} layer {layer}; trace it again")
        columns = key_columns(stats, query_rows, generated=prompt is not None)
        if columns is None:
            raise InputError("this bundle has generated tokens but no prompt-row statistics (it was traced by an "
                             "older workbench): trace it again, or pass --query-rows all (Python: query_rows='all') "
                             "to average over the prompt and generated rows")
        mass, counts = columns
        if query_rows == "prompt" and prompt is not None:  # the reference sees the prompt's keys only
            mass, counts = mass[..., :prompt], counts[..., :prompt]
        layers.append(layer_alpha(mass, counts))
        count = counts if count is None else count
    return torch.stack(layers), count


def analyse(trace, *, eps: float = SINK_EPSILON, stack: Literal["text", "vision"] = "text",
            query_rows: Literal["prompt", "all"] = "prompt",
            hidden_rule: Literal["relative", "absolute"] = "relative", hidden_threshold: float = 0.1,
            hidden_factor: float = 5.0, min_queries: int = 16, central_share: float = 2 / 3,
            dims: tuple[int, ...] | None = None, contrast: float = 10.0, floor: float = 5.0, tau: float = 20.0,
            var_layers: Literal["reference", "all"] = "reference", visual_first_layer: int = 2, rho: float = 0.5,
            summ: float = 0.2, artifact_rule: Literal["relative", "absolute"] = "relative",
            artifact_factor: float = artifacts_mod.DEFAULT_FACTOR,
            artifact_threshold: float = artifacts_mod.PAPER_NORM_THRESHOLD) -> SinksResult:
    """Attention sinks of `trace` (see the module docstring for every rule and which statistics it needs).

    Conventions by name, the reference's the default: query_rows "prompt" | "all" (Gu alpha), hidden_rule
    "relative" | "absolute" (ACT), var_layers "reference" | "all" (VAR; "reference" starts at visual_first_layer),
    artifact_rule "relative" (norm > artifact_factor x the median patch norm) | "absolute" (norm > artifact_threshold,
    the paper's 150) for the artifact tokens of a vision encoder.

    >>> import workbench
    >>> probe = ("Attention sinks are easy to see in a planted model. "
    ...          "The period in this prompt is a hidden sink and every later token looks at it")
    >>> result = analyse(workbench.trace("planted-sink", probe, raw=True))
    >>> [(s["text"], round(s["sink_percent"], 1)) for s in result.sink_tokens]   # Sink^0.3 in percent
    [('<|bos|>', 16.7), ('.', 8.3)]
    >>> result.kind["kind"], result.hidden_sinks["absolute"][0]["key"]   # the planted hidden sink: the '.'
    ('distributed', 51)
    """
    if stack not in trace.stacks:
        raise InputError(f"the trace has no {stack!r} stack; it has {', '.join(trace.stacks)}")
    if hidden_rule not in ("relative", "absolute"):
        raise InputError(f"hidden_rule takes 'relative' or 'absolute', not {hidden_rule!r}")
    if var_layers not in ("reference", "all"):
        raise InputError(f"var_layers takes 'reference' or 'all', not {var_layers!r}")
    alpha, count = _alpha_and_count(trace, stack, query_rows)
    n = alpha.shape[-1]
    guard = count >= effective_min_queries(min_queries, n)
    listed = sink_mask(alpha, eps) & guard
    percent = sink_percent(alpha, eps)
    tokens = trace.tokens if stack == "text" else None
    options = {"eps": eps, "query_rows": query_rows, "query_rows_count": int(count[0]) if n else 0, "keys": n,
               "hidden_rule": hidden_rule, "hidden_threshold": hidden_threshold,
               "hidden_factor": hidden_factor, "min_queries": effective_min_queries(min_queries, n),
               "central_share": central_share, "contrast": contrast, "floor": floor, "tau": tau,
               "var_layers": var_layers, "visual_first_layer": visual_first_layer if var_layers == "reference" else 0,
               "rho": rho, "code_rho": round(1 - rho, 6), "summ": summ}
    notes = []
    result = {
        "model": trace.model.get("name", "?"), "stack": stack, "options": options, "alpha": alpha.float(),
        "sink_percent": percent.float(), "sink_tokens": tuple(_sink_tokens(alpha, listed, percent, tokens)),
        "layers": tuple(_layer_table(alpha, listed)), "heads": tuple(_head_table(alpha, listed)),
        "hidden_sinks": _hidden_sinks(alpha, guard, hidden_threshold, hidden_factor, hidden_rule),
        "kind": _kind(alpha, listed, count, central_share, tokens),
    }
    if trace.model.get("kind") == "vision":  # a standalone image encoder: Darcet et al.'s artifacts, not VAR
        result["artifacts"] = artifacts_mod.find(trace, rule=artifact_rule, factor=artifact_factor,
                                                 threshold=artifact_threshold)
        if not result["artifacts"]["available"]:
            notes.append(result["artifacts"]["reason"])
    elif stack == "vision":  # a VLM trace keeps the language model's residual stream, never the tower's
        notes.append("artifact tokens need the tower's residual stream, which a VLM trace does not keep: trace the "
                     "tower alone (workbench.models.towers.tower_encoder, hidden_states=True)")
    elif stack == "text":
        first = visual_first_layer if var_layers == "reference" else 0
        extra, extra_notes = _visual_part(trace, result["sink_tokens"], dims, contrast, floor, tau, first,
                                          var_layers == "reference", rho, summ)
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


def _visual_part(trace, sink_tokens, dims, contrast, floor, tau, first_layer, need_visual_sink, rho, summ):
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
    found = visual.sink_dimensions(trace, [t["position"] for t in sink_tokens], contrast=contrast, floor=floor,
                                   first_layer=first_layer)
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
        out["image_centric"] = visual.image_centric_heads(trace, phis, tau=tau, rho=rho, summ=summ,
                                                          first_layer=first_layer, need_visual_sink=need_visual_sink)
    return out, notes


def calibrate_var(tracer, prompt: str, image=None, spec: VAR | None = None, *, system: str | None = None,
                  raw: bool = False) -> VAR:
    """A VAR intervention with its sink dimensions found on this input (one extra prompt forward, no generation).

    tracer: a `workbench.capture.Tracer` of the model."""
    spec = spec or VAR()
    if spec.dims:
        return spec
    probe = tracer.trace(prompt, image, hidden_states=True, system=system, raw=raw)
    found = analyse(probe, tau=spec.tau, visual_first_layer=spec.first_layer).sink_dims or {}
    if not found.get("dims"):
        raise InputError("no sink dimension stands out on this input, so VAR has nothing to act on; pass them "
                         "explicitly, e.g. --intervene var:dims=1415,2533")
    return dataclasses.replace(spec, dims=tuple(found["dims"]))
