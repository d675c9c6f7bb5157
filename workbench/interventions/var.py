"""VAR visual-attention redistribution (Kang et al. 2025, "See What You Are Told", MICV-yonsei/VisAttnSink): sink
tokens by phi(x) > tau, image-centric heads, sink attention scaled by p and the freed mass handed to the non-sink
image tokens."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from workbench.errors import InputError
from workbench.interventions.eager import probabilities, replace_rows
from workbench.interventions.runtime import Runtime


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
        return replace_rows(output, heads, new, value, rows)
