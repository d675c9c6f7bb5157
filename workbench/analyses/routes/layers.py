"""Per-layer inputs of the routes computation, read from a trace captured with `decomposition=True`.

Attention rows are rebuilt from the stored (scaled) queries and keys with a causal mask; the rebuild is
checked against the stored attention output (`attn_out`), so a mask or architecture the decomposition does
not model shows up as an error instead of a silently wrong graph.
"""

from __future__ import annotations

from typing import Literal

import torch

from workbench.analyses.decomposed import attention_rows
from workbench.errors import WorkbenchError
from workbench.traces.names import tensor_name

MAX_REBUILD_ERROR = 1e-3  # relative to the largest |attn_out| of the rows checked

Bias = Literal["share", "exclude"]


def _name(layer: int, stat: str) -> str:
    return tensor_name("text", layer, stat)


class LayerInputs:
    """Everything one layer contributes to the routes computation, loaded once per layer."""

    def __init__(self, trace, layer: int, *, bias: Bias):
        self.layer = layer
        self.query = trace.tensor(_name(layer, "query")).float()
        self.key = trace.tensor(_name(layer, "key")).float()
        value = trace.tensor(_name(layer, "value")).float()
        self.hidden_in = trace.tensor(_name(layer, "hidden_in")).float()
        self.mid = self.hidden_in + trace.tensor(_name(layer, "attn_out")).float()  # residual after attention
        last = layer == trace.n_layers() - 1
        self.hidden_out = trace.tensor(_name(layer, "hidden_out") if last else _name(layer + 1, "hidden_in")).float()
        weight = trace.tensor(_name(layer, "o_weight")).float()  # [d_model, head, d_head]
        self.o_bias = trace.tensor(_name(layer, "o_bias")).float()
        heads = weight.shape[1]
        group = heads // value.shape[0]
        # vo_jh = v_j^{h // group} W_O^h: [head, key_pos, d_model]; O(n H d_model), the per-layer floor.
        self.value_out = torch.einsum("hjd,mhd->hjm", value.repeat_interleave(group, 0), weight)
        self.bias_excluded = bias == "exclude"
        if not self.bias_excluded:
            self.value_out += self.o_bias / heads  # each part carries its attention's share of b_O
        self.value_out_max = self.value_out.abs().amax(-1)
        self.heads = heads

    def rows(self, positions: torch.Tensor) -> torch.Tensor:
        return attention_rows(self.query, self.key, positions)

    def check_rebuild(self, positions: torch.Tensor, attention: torch.Tensor) -> float:
        """Relative max error of sum_{j,h} x_jh (+ b_O if excluded) against the stored attention output."""
        rebuilt = torch.einsum("hmj,hjd->md", attention, self.value_out)
        if self.bias_excluded:
            rebuilt = rebuilt + self.o_bias
        stored = self.mid[positions] - self.hidden_in[positions]
        error = float((rebuilt - stored).abs().max() / stored.abs().max().clamp_min(1e-6))
        if error > MAX_REBUILD_ERROR:
            raise WorkbenchError(
                f"layer {self.layer}: the attention output cannot be rebuilt from the trace's queries, keys and values "
                f"(relative error {error:.2g}); routes support causal pre-norm decoders without sliding windows, "
                "soft-capping or post-attention norms")
        return error
