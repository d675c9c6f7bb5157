"""A head mask on the interventions' head-edit path: each text head's output (before W_O) times mask[layer, head].

With a mask of ones that requires grad, the loss's gradient with respect to it is each head's importance score
(Michel et al. 2019); a mask of zeros at some heads is their zero-ablation (the same edit as the ablation's
method "zero": W_O's bias, which is not per head, stays).
"""

from __future__ import annotations

import torch

from workbench.interventions.runtime import Runtime


class HeadMask(Runtime):
    """While active (`Tracer.editing` / `Tracer.logits(edit=...)`): output[..., head, :] *= mask[layer, head].
    mask: [layer, head] (autograd flows through it when it requires grad)."""

    def __init__(self, layout, mask: torch.Tensor):
        super().__init__(layout)
        stack = layout.stacks["text"]
        if tuple(mask.shape) != (stack.n_layers, stack.n_heads):
            raise ValueError(f"the head mask is {tuple(mask.shape)}, the model has {stack.n_layers} x {stack.n_heads}")
        self.mask = mask

    def apply(self, module, *, query, key, value, attention_mask, scaling, causal, output):
        stack, layer = self.layout.locate(module)
        if stack != "text":
            return output
        # output [batch, query_pos, head, d_head]
        return output * self.mask[layer].to(output.device, output.dtype)[None, None, :, None]
