"""Capture-time attention interventions: ACT calibration and VAR redistribution (off unless asked for).

An intervention is a frozen spec (`ACT`, `VAR`, parsed from `act:beta=0.4` / `var:rho=0.5,p=0.6`) whose
`start()` returns a runtime for one input. While `intervening(model, runtime)` is active the workbench
attention implementation hands every layer's output to `runtime.apply(...)`; a runtime that changes attention
weights recomputes them eagerly for the heads it touches (softmax of q.k in fp32, as SDPA would) and replaces
those heads' output rows with P' @ V. Rows it leaves alone keep SDPA's bit-exact output, and with no runtime
active the attention path is exactly the default one. The statistics a capture records are computed from the
queries and keys, so they describe the attention BEFORE the intervention; outputs, hidden states, head
outputs, logits and the generation reflect it. Each runtime reports what it moved (`report()`).

- ACT (Yu et al. 2024, "Unveiling and Harnessing Hidden Attention Sinks", GATECH-EIC/ACT): in the selected
  heads, key columns other than position 0 whose Gu importance alpha_k (mean over the queries that see k)
  exceeds the threshold are scaled by beta; each row's freed mass goes to its other keys in proportion to
  their attention. Sinks are found on the full (prompt) forward and kept for later generation steps.
- VAR (Kang et al. 2025, "See What You Are Told", MICV-yonsei/VisAttnSink): sink tokens of layer l are the
  tokens whose hidden state entering l has phi(x) = max_{d in dims} |x_d| / RMS(x) > tau; a (head, query)
  is image-centric when its image attention >= summ and the non-sink share of it >= rho (paper convention;
  the released code's `rho` is 1 - rho); there the sink columns are scaled by p and the freed mass goes to
  the non-sink image tokens in proportion to their attention. Layers from `first_layer`, all but the last.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, fields

import torch

from workbench.errors import InputError

_active: contextvars.ContextVar = contextvars.ContextVar("workbench_intervention", default=None)


def active():
    """The runtime the attention implementation must apply now (None: the default path)."""
    return _active.get()


@contextlib.contextmanager
def intervening(model, runtime):
    """Route `model`'s attention through the workbench implementation and apply `runtime` (None: no-op)."""
    if runtime is None:
        yield None
        return
    from workbench.capture.backend import routed

    with routed(model, _active, runtime, lambda: runtime.install(model)):
        yield runtime


# -- eager attention for the heads an intervention touches ---------------------------------------------------
def visibility(attention_mask, *, causal: bool, n_queries: int, n_keys: int) -> torch.Tensor:
    """[batch or 1, 1, query_pos, key_pos] bool: which keys each query sees, read as SDPA reads the mask."""
    if attention_mask is None:
        visible = torch.ones(n_queries, n_keys, dtype=torch.bool)
        if causal and n_queries > 1:  # SDPA's is_causal: top-left aligned
            visible = visible.tril()
        return visible[None, None]
    mask = attention_mask[..., :n_keys]
    return (mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2).cpu()


def probabilities(query, key, attention_mask, *, scaling: float, causal: bool, heads=None) -> torch.Tensor:
    """Post-softmax attention [batch, head, query_pos, key_pos] (fp32) of `heads` (None: all), GQA expanded."""
    n_heads, n_kv = query.shape[1], key.shape[1]
    heads = list(range(n_heads)) if heads is None else list(heads)
    kv = [h // (n_heads // n_kv) for h in heads]
    scores = query[:, heads].float() @ key[:, kv].float().transpose(-1, -2) * scaling
    visible = visibility(attention_mask, causal=causal, n_queries=query.shape[2], n_keys=key.shape[2])
    scores = scores.masked_fill(~visible.to(scores.device), float("-inf"))
    return torch.softmax(scores, -1).nan_to_num(0.0)


def head_values(value, heads, n_heads: int) -> torch.Tensor:
    """[batch, len(heads), key_pos, d_head] values of query heads `heads` (GQA expanded), fp32."""
    group = n_heads // value.shape[1]
    return value[:, [h // group for h in heads]].float()


def _replace_rows(output, heads, new_probs, value, rows) -> torch.Tensor:
    """output [batch, query_pos, head, d_head] with rows[b, i, q] of heads[i] recomputed as new_probs @ value."""
    if not bool(rows.any()):
        return output
    output = output.clone()
    recomputed = new_probs @ head_values(value, heads, output.shape[2])  # [batch, h, query_pos, d_head]
    for index, head in enumerate(heads):
        keep = rows[:, index, :, None].to(output.device)
        output[:, :, head] = torch.where(keep, recomputed[:, index].to(output.dtype), output[:, :, head])
    return output


class Runtime:
    """What the attention implementation calls while an intervention is active, for one input."""

    def __init__(self, layout):
        self.layout = layout
        self.moved: dict[tuple[int, int], list[float]] = {}  # (layer, head) -> [rows changed, mass moved]

    def install(self, model) -> list:
        return []

    def apply(self, module, *, query, key, value, attention_mask, scaling, causal, output):
        raise NotImplementedError

    def _count(self, layer: int, head: int, rows: int, mass: float) -> None:
        entry = self.moved.setdefault((layer, head), [0, 0.0])
        entry[0] += rows
        entry[1] += mass

    def report(self) -> dict:
        """Per (layer, head) touched: query rows changed and attention mass moved, summed over forwards."""
        heads = [{"layer": layer, "head": head, "rows": int(rows), "mass_moved": round(mass, 6)}
                 for (layer, head), (rows, mass) in sorted(self.moved.items()) if rows]
        return {"heads": heads, "rows_changed": sum(h["rows"] for h in heads),
                "mass_moved": round(sum(h["mass_moved"] for h in heads), 6)}


# -- ACT --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ACT:
    """ACT attention calibration. layers/heads None = all; the released scripts calibrate from layer 2 on.

    rule "absolute": alpha_k > threshold (released code, 0.1); "relative": alpha_k > factor / n (paper).
    min_queries: keys seen by fewer query rows are never sinks (a late key's alpha is a handful of rows).
    """

    beta: float = 0.4
    threshold: float = 0.1
    rule: str = "absolute"
    factor: float = 5.0
    first_layer: int = 2
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    min_queries: int = 16

    name = "act"

    def __post_init__(self):
        if not 0.0 <= self.beta <= 1.0:
            raise InputError(f"act: beta must lie in [0, 1], not {self.beta}")
        if self.rule not in ("absolute", "relative"):
            raise InputError(f"act: rule must be 'absolute' or 'relative', not {self.rule!r}")

    def wants(self, layer: int, n_heads: int) -> list[int]:
        if layer < self.first_layer or (self.layers is not None and layer not in self.layers):
            return []
        return [h for h in range(n_heads) if self.heads is None or h in self.heads]

    def start(self, layout, *, image_positions=()) -> _ACTRuntime:
        return _ACTRuntime(self, layout)

    def to_json(self) -> dict:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in fields(self)}}


def effective_min_queries(min_queries: int, n_keys: int) -> int:
    """The min_queries guard, relaxed on short inputs to a quarter of the sequence (at least 1)."""
    return max(1, min(min_queries, n_keys // 4))


class _ACTRuntime(Runtime):
    def __init__(self, spec: ACT, layout):
        super().__init__(layout)
        self.spec = spec
        self.sinks: dict[int, torch.Tensor] = {}  # layer -> [batch, head (selected), key_pos] bool

    def apply(self, module, *, query, key, value, attention_mask, scaling, causal, output):
        stack, layer = self.layout.locate(module)
        heads = self.spec.wants(layer, query.shape[1]) if stack == "text" else []
        if not heads:
            return output
        n_queries, n_keys = query.shape[2], key.shape[2]
        probs = probabilities(query, key, attention_mask, scaling=scaling, causal=causal, heads=heads)
        if n_queries == n_keys:  # a full forward: find this input's sinks
            visible = visibility(attention_mask, causal=causal, n_queries=n_queries, n_keys=n_keys).to(probs.device)
            count = visible.sum(-2)  # [batch, 1, key_pos]
            alpha = probs.sum(-2) / count.clamp_min(1)
            limit = self.spec.threshold if self.spec.rule == "absolute" else self.spec.factor / n_keys
            sinks = (alpha > limit) & (count >= effective_min_queries(self.spec.min_queries, n_keys))
            sinks[..., 0] = False
            self.sinks[layer] = sinks
        sinks = self.sinks.get(layer)
        if sinks is None or not bool(sinks.any()):
            return output
        columns = torch.zeros(*sinks.shape[:2], n_keys, dtype=torch.bool, device=probs.device)
        columns[..., : min(n_keys, sinks.shape[-1])] = sinks[..., :n_keys]
        columns = columns[:, :, None, :]  # [batch, head, 1, key_pos]
        sink_mass = (probs * columns).sum(-1, keepdim=True)
        rest = probs.masked_fill(columns, 0.0)
        rest_sum = rest.sum(-1, keepdim=True)
        rows = (sink_mass > 0) & (rest_sum > 0)
        freed = (1 - self.spec.beta) * sink_mass
        new = torch.where(columns, probs * self.spec.beta, probs + freed * rest / rest_sum.clamp_min(1e-30))
        new = torch.where(rows, new, probs)
        for index, head in enumerate(heads):
            changed = rows[:, index, :, 0]
            self._count(layer, head, int(changed.sum()), float((freed[:, index, :, 0] * changed).sum()))
        return _replace_rows(output, heads, new, value, rows[..., 0])


# -- VAR --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VAR:
    """VAR visual attention redistribution. dims: the sink dimensions (find them with
    `workbench.analyses.sinks.sink_dimensions`, or `sinks.calibrate_var`); rho in the paper's convention.
    text_sinks: also take mass from text sink tokens (e.g. BOS), as the released code does.
    """

    p: float = 0.6
    rho: float = 0.5
    summ: float = 0.2
    tau: float = 20.0
    dims: tuple[int, ...] | None = None
    first_layer: int = 2
    except_last_layer: bool = True
    text_sinks: bool = True

    name = "var"

    def __post_init__(self):
        if not 0.0 <= self.p <= 1.0 or not 0.0 <= self.rho <= 1.0:
            raise InputError("var: p and rho must lie in [0, 1]")

    @property
    def code_rho(self) -> float:
        """The released code's rho (a bound on the sink share) for this paper rho."""
        return 1.0 - self.rho

    def start(self, layout, *, image_positions=()) -> _VARRuntime:
        if not self.dims:
            raise InputError("var needs its sink dimensions: pass dims=D1,D2 or let `workbench trace --intervene var` "
                             "find them (workbench.analyses.sinks.calibrate_var)")
        return _VARRuntime(self, layout, image_positions)

    def to_json(self) -> dict:
        return {"name": self.name, "code_rho": round(self.code_rho, 6),
                **{f.name: getattr(self, f.name) for f in fields(self)}}


def phi(hidden: torch.Tensor, dims, eps: float = 1e-6) -> torch.Tensor:
    """VAR's phi(x) = max_{d in dims} |x_d| / RMS(x) for hidden [..., d_model] -> [...]."""
    hidden = hidden.float()
    rms = hidden.pow(2).mean(-1, keepdim=True).add(eps).sqrt()
    return (hidden[..., list(dims)].abs() / rms).amax(-1)


class _VARRuntime(Runtime):
    def __init__(self, spec: VAR, layout, image_positions):
        super().__init__(layout)
        self.spec = spec
        self.image = torch.tensor(sorted(image_positions), dtype=torch.long)
        stack = layout.stacks["text"]
        self.n_layers = stack.n_layers
        self.seen = [0] * stack.n_layers
        self.sink_positions: list[set[int]] = [set() for _ in range(stack.n_layers)]

    def install(self, model) -> list:
        handles = []
        for index, layer_module in enumerate(self.layout.stacks["text"].layers):
            def hook(module, args, kwargs, index=index):
                hidden = args[0] if args else kwargs["hidden_states"]
                values = phi(hidden[0].detach(), self.spec.dims)
                start = self.seen[index]
                self.seen[index] += hidden.shape[1]
                self.sink_positions[index].update(start + int(i) for i in (values > self.spec.tau).nonzero().flatten())
            handles.append(layer_module.register_forward_pre_hook(hook, with_kwargs=True))
        return handles

    def apply(self, module, *, query, key, value, attention_mask, scaling, causal, output):
        stack, layer = self.layout.locate(module)
        spec = self.spec
        if stack != "text" or layer < spec.first_layer or not len(self.image):
            return output
        if spec.except_last_layer and layer == self.n_layers - 1:
            return output
        n_queries, n_keys = query.shape[2], key.shape[2]
        sinks = sorted(p for p in self.sink_positions[layer] if p < n_keys)
        image = self.image[self.image < n_keys]
        visual = [p for p in sinks if p in set(image.tolist())]
        if not visual:  # as in the released code: no visual sink in this layer, no head is image-centric
            return output
        taken = sinks if spec.text_sinks else visual
        heads = list(range(query.shape[1]))
        probs = probabilities(query, key, attention_mask, scaling=scaling, causal=causal)
        image_mass = probs[..., image].sum(-1)
        sink_share = probs[..., visual].sum(-1) / image_mass.clamp_min(1e-30)
        positions = torch.arange(n_keys - n_queries, n_keys)
        after_image = (positions > int(image.max()))[None, None, :].to(probs.device)
        non_sink = image[~torch.isin(image, torch.tensor(visual))]
        non_sink_mass = probs[..., non_sink].sum(-1)
        rows = (image_mass >= spec.summ) & (1 - sink_share >= spec.rho) & after_image & (non_sink_mass > 0)
        freed = (1 - spec.p) * probs[..., taken].sum(-1)
        new = probs.clone()
        new[..., taken] = probs[..., taken] * spec.p
        new[..., non_sink] += freed[..., None] * probs[..., non_sink] / non_sink_mass.clamp_min(1e-30)[..., None]
        for head in heads:
            changed = rows[:, head]
            self._count(layer, head, int(changed.sum()), float((freed[:, head] * changed).sum()))
        return _replace_rows(output, heads, new, value, rows)


# -- parsing ----------------------------------------------------------------------------------------------------
SPECS = {"act": ACT, "var": VAR}


def parse(text: str):
    """'act', 'act:beta=0.4,threshold=0.1,layers=2,3', 'var:rho=0.5,p=0.6,dims=1415,2533' -> ACT / VAR."""
    name, _, options = text.strip().partition(":")
    spec = SPECS.get(name.strip().lower())
    if spec is None:
        raise InputError(f"unknown intervention {name!r}; use act:... or var:... (e.g. var:rho=0.5,p=0.6)")
    pairs: list[list[str]] = []
    for piece in filter(None, (part.strip() for part in options.split(","))):
        if "=" in piece:
            pairs.append(piece.split("=", 1))
        elif pairs:  # a list value continues: layers=2,3
            pairs[-1][1] += "," + piece
        else:
            raise InputError(f"cannot read {piece!r} in --intervene {text!r}; write NAME:key=value,key=value")
    known = {f.name: f for f in fields(spec)}
    values = {}
    for key, raw in pairs:
        key = key.strip()
        if key not in known:
            raise InputError(f"{name} has no option {key!r}; options: {', '.join(known)}")
        values[key] = _convert(known[key].type, raw.strip(), f"{name}:{key}")
    return spec(**values)


def _convert(annotation, raw: str, what: str):
    try:
        if "tuple" in str(annotation):
            return tuple(int(part) for part in raw.replace("+", ",").split(",") if part)
        if "bool" in str(annotation):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if "int" in str(annotation):
            return int(raw)
        if "float" in str(annotation):
            return float(raw)
        return raw
    except ValueError:
        raise InputError(f"cannot read {raw!r} for {what}") from None
