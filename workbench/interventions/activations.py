"""Record and overwrite activations for ablation and activation patching: per-head attention outputs and residual
streams, one set of replacements per batch row, so a batch of B copies of an input runs B different edits in one
forward.

Sites (axis names as in the trace module):
- "heads": the output of query heads before W_O, [batch, query_pos, head, d_head] as the attention implementation
  returns it (`Runtime.apply`). Overwriting every head of a layer overwrites the attention block's output, since
  W_O (and its bias) is the same in both runs.
- "resid": the residual stream entering text layer l, [batch, query_pos, d_model] (a forward pre-hook on the layer);
  layer index n_layers is the stream after the last layer, i.e. the input of the final norm (a forward hook).

This is the head-edit path of the interventions (`Runtime.apply` for heads, `Runtime.install` for hooks): the
attention implementation hands each layer's output to it while `Tracer.editing(runtime)` is active.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workbench.interventions.runtime import Runtime

SITES = ("heads", "resid")


@dataclass(frozen=True)
class Replacement:
    """Overwrite `site` of `layer` at `positions` (None: all) and `heads` (None: all; "heads" site only) with
    `values`: [query_pos, head, d_head] or [query_pos, d_model], or anything that broadcasts to it (a mean
    [head, d_head], a zero scalar)."""

    site: str
    layer: int
    values: torch.Tensor
    heads: tuple[int, ...] | None = None
    positions: tuple[int, ...] | None = None


class ActivationEdits(Runtime):
    """While active: records the sites of every text layer (record=True) and applies `rows[b]`, the replacements
    of batch row b (set `rows` between forwards; rows beyond its length are left alone)."""

    def __init__(self, layout, *, record: bool = False):
        super().__init__(layout)
        self.record = record
        self.rows: list[Sequence[Replacement]] = []
        self.heads: dict[int, torch.Tensor] = {}   # layer -> [batch, query_pos, head, d_head] (recorded)
        self.resid: dict[int, torch.Tensor] = {}   # layer 0..n_layers -> [batch, query_pos, d_model] (recorded)

    def _wanted(self, site: str, layer: int) -> list[tuple[int, Replacement]]:
        return [(b, r) for b, row in enumerate(self.rows) for r in row if r.site == site and r.layer == layer]

    def apply(self, module, *, query, key, value, attention_mask, scaling, causal, output):
        stack, layer = self.layout.locate(module)
        if stack != "text":
            return output
        wanted = self._wanted("heads", layer)
        if wanted:
            output = _overwrite(output, wanted, head_axis=True)
        if self.record:
            self.heads[layer] = output.detach().clone()
        return output

    def install(self, model) -> list:
        if not self.record and not any(r.site == "resid" for row in self.rows for r in row):
            return []
        layers = self.layout.stacks["text"].layers
        handles = []
        for index, layer_module in enumerate(layers):
            def before(module, args, kwargs, index=index):
                hidden = args[0] if args else kwargs["hidden_states"]
                changed = self._resid(index, hidden)
                if changed is hidden:
                    return None
                if args:
                    return (changed, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": changed}
            handles.append(layer_module.register_forward_pre_hook(before, with_kwargs=True))

        def after(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            changed = self._resid(len(layers), hidden)
            if changed is hidden:
                return None
            return (changed, *output[1:]) if isinstance(output, tuple) else changed
        handles.append(layers[-1].register_forward_hook(after))
        return handles

    def _resid(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        wanted = self._wanted("resid", layer)
        if wanted:
            hidden = _overwrite(hidden, wanted, head_axis=False)
        if self.record:
            self.resid[layer] = hidden.detach().clone()
        return hidden


def _overwrite(tensor: torch.Tensor, wanted: list[tuple[int, Replacement]], *, head_axis: bool) -> torch.Tensor:
    """A copy of `tensor` [batch, query_pos, ...] with each (batch row, replacement) applied."""
    tensor = tensor.clone()
    n = tensor.shape[1]
    for b, replacement in wanted:
        if b >= tensor.shape[0]:
            continue
        values = replacement.values.to(tensor.device, tensor.dtype).expand(tensor.shape[1:])
        positions = list(range(n)) if replacement.positions is None else [p for p in replacement.positions if p < n]
        if not positions:
            continue
        rows = torch.tensor(positions, device=tensor.device)
        if head_axis and replacement.heads is not None:
            heads = torch.tensor(replacement.heads, device=tensor.device)
            tensor[b, rows[:, None], heads[None, :]] = values[rows[:, None], heads[None, :]]
        else:
            tensor[b, rows] = values[rows]
    return tensor
