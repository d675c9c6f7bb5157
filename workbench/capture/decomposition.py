"""What `CapturePlan.decomposition` keeps: the pieces that split the residual stream into parts.

Information-flow routes (Ferrando & Voita 2024) and SVD circuit tracing (Franco & Crovella 2024) need,
per text layer, the attention weights of any query row, every key's value, W_O, and the residual stream
before attention, after attention and after the FFN. Full maps would cost O(n^2) per head; instead this
keeps the O(n) inputs the maps are rebuilt from, per text layer:

    query [head, query_pos, d_head]     post-RoPE query times the softmax scaling (query . key = score)
    key, value [kv_head, key_pos, d_head]   post-RoPE key and value as SDPA saw them (GQA not expanded)
    attn_out [query_pos, d_model]       the attention block's output added to the residual (bias included)
    o_weight [d_model, head, d_head], o_bias [d_model]   W_O per head and its bias (zeros when none)
    hidden_out [query_pos, d_model]     last layer only: the residual after the last layer (before the final norm)

with `hidden_in` (the residual entering each layer) kept by the recorder. Supported for pre-norm decoders
whose layer adds the attention block's output and then the FFN output to the residual (GPT-2, Llama,
Mistral, Qwen2, LLaVA's language model); analyses check the decomposition and report its error.
"""

from __future__ import annotations

import torch

AXES = {
    "query": ("head", "query_pos", "d_head"),
    "key": ("kv_head", "key_pos", "d_head"),
    "value": ("kv_head", "key_pos", "d_head"),
    "attn_out": ("query_pos", "d_model"),
    "hidden_out": ("query_pos", "d_model"),
    "o_weight": ("d_model", "head", "d_head"),
    "o_bias": ("d_model",),
}


class DecompositionStore:
    """Buffers for the decomposition tensors of the text stack, filled by the recorder."""

    def __init__(self, layout, capacity: int):
        self.layout = layout
        self.stack = layout.stacks["text"]
        self.capacity = capacity
        self.buffers: dict[int, dict[str, torch.Tensor]] = {}

    def _layer(self, layer: int) -> dict[str, torch.Tensor]:
        return self.buffers.setdefault(layer, {})

    def install_hooks(self, recorder) -> list:
        """Forward hooks on each text layer's W_O module (attn_out) and on the last layer (hidden_out)."""
        handles = []
        d_model = self.stack.d_model
        for index in range(self.stack.n_layers):
            def on_projection(module, args, output, index=index):
                out = output[0] if isinstance(output, tuple) else output
                buffer = self._layer(index)
                if "attn_out" not in buffer:
                    buffer["attn_out"] = torch.zeros(self.capacity, d_model)
                rows = slice(recorder.step_start, recorder.step_start + out.shape[1])
                buffer["attn_out"][rows] = out[0].detach().float().cpu()
            module = self.layout.output_projection_module("text", index)
            handles.append(module.register_forward_hook(on_projection))

        last = self.stack.n_layers - 1

        def on_last_layer(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            buffer = self._layer(last)
            if "hidden_out" not in buffer:
                buffer["hidden_out"] = torch.zeros(self.capacity, d_model)
            rows = slice(recorder.step_start, recorder.step_start + out.shape[1])
            buffer["hidden_out"][rows] = out[0].detach().float().cpu()
        handles.append(self.stack.layers[last].register_forward_hook(on_last_layer))
        return handles

    def on_attention(self, layer: int, start: int, key_start: int, query, key, value, scaling: float) -> None:
        """query [batch, head, new query_pos, d_head] from position `start`; key/value [batch, kv_head, key_pos,
        d_head] from position `key_start` (all keys so far, or a sliding-window cache's last window)."""
        if value is None:
            raise RuntimeError("decomposition capture needs the attention values; this backend does not pass them")
        buffer = self._layer(layer)
        heads, kv_heads, d_head = query.shape[1], key.shape[1], query.shape[-1]
        if "query" not in buffer:
            buffer["query"] = torch.zeros(heads, self.capacity, d_head)
            buffer["key"] = torch.zeros(kv_heads, self.capacity, d_head)
            buffer["value"] = torch.zeros(kv_heads, self.capacity, value.shape[-1])
        n_queries, n_keys = query.shape[2], key.shape[2]
        buffer["query"][:, start:start + n_queries] = (query[0].detach().float() * scaling).cpu()
        buffer["key"][:, key_start:key_start + n_keys] = key[0].detach().float().cpu()
        buffer["value"][:, key_start:key_start + n_keys] = value[0].detach().float().cpu()

    def tensors(self, length: int, name) -> dict[str, tuple[torch.Tensor, tuple[str, ...]]]:
        """Everything kept, trimmed to `length` positions, plus W_O and its bias; name(layer, stat) -> tensor name."""
        out = {}
        for layer, buffer in sorted(self.buffers.items()):
            for stat, tensor in buffer.items():
                out[name(layer, stat)] = (tensor.narrow(1 if stat in ("query", "key", "value") else 0, 0, length)
                                          .contiguous(), AXES[stat])
            projection = self.layout.output_projection_module("text", layer)
            weight = self.layout.output_projection("text", layer).detach().float()  # [d_model, head * d_head]
            heads = self.stack.n_heads
            out[name(layer, "o_weight")] = (weight.reshape(weight.shape[0], heads, -1).clone(), AXES["o_weight"])
            bias = getattr(projection, "bias", None)
            bias = bias.detach().float().clone() if bias is not None else torch.zeros(weight.shape[0])
            out[name(layer, "o_bias")] = (bias, AXES["o_bias"])
        return out
