"""Logit lens (nostalgebraist 2020) and direct logit attribution, for one position of one input.

- Logit lens: the residual stream entering each layer l (l = 0 is the embedding) and after the last layer, read
  through the model's final norm and unembedding (`readout`): top tokens with probabilities, and the rank,
  probability and logit of a target token. The row after the last layer is the model's own prediction.
- Direct logit attribution: the final residual is the sum of its components, embedding + per layer (every head's
  output through its slice of W_O, the attention block's bias, the MLP block's output). Each component's direct
  effect on the target logit is  c . (weight * W_U[target]) / scale  (centred first for a LayerNorm), with the
  scale frozen at the final residual's, as TransformerLens's `apply_ln_to_stack` does by default. These sum to
  the target logit minus the offset  bias . W_U[target] + b_U[target]  (the norm's bias and the unembedding's).
  scale="recompute" puts each component through the norm on its own statistics instead (TransformerLens's
  recompute_ln=True, the lens of one component): these do not sum to the logit.

Supported: pre-norm decoders whose layers add the attention block's output and then the MLP block's output (GPT-2,
Llama, Mistral, Qwen2); the result reports how far the components' sum is from the recorded final residual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch

from workbench.analyses.causal.sweep import token_ids
from workbench.analyses.readout import lens_logits, norm_terms, rank_of, readout
from workbench.analyses.result import HeadMetric, Result, stored_version
from workbench.errors import BundleError, InputError
from workbench.interventions.activations import ActivationEdits

__all__ = ["SCALES", "LensResult", "analyse", "check_known_tokens"]

METHOD = ("logit lens (nostalgebraist 2020) and direct logit attribution (final-norm scale frozen at the final "
          "residual, as TransformerLens's apply_ln_to_stack)")
Scale = Literal["final", "recompute"]
SCALES = ("final", "recompute")
TOP = 10


@dataclass(frozen=True)
class LensResult(Result):
    """layers: one entry per residual read (entering layer 0 .. n_layers - 1, then "after the last layer"), each
    {layer, label, top: [[text, p]], target_rank, target_probability, target_logit}; heads [layer, head] and
    mlp, attn_bias [layer] (float64): direct contributions to the target logit; embed, offset, logit: floats."""

    analysis: ClassVar[str] = "lens"
    schema_version: ClassVar[int] = 1

    model: str
    position: int
    token: str
    target: dict
    options: dict
    layers: tuple
    heads: np.ndarray = field(compare=False, repr=False)
    mlp: np.ndarray = field(compare=False, repr=False)
    attn_bias: np.ndarray = field(compare=False, repr=False)
    embed: float = 0.0
    offset: float = 0.0
    logit: float = 0.0
    residual_error: float = 0.0

    @property
    def total(self) -> float:
        """Sum of every direct contribution plus the offset (the target logit, with scale="final")."""
        return float(self.heads.sum() + self.mlp.sum() + self.attn_bias.sum() + self.embed + self.offset)

    def head_metrics(self) -> dict[str, HeadMetric]:
        return {"direct_logit": HeadMetric(self.heads, f"direct logit of {self.target.get('text')!r}",
                                           f"each head's direct contribution to the target logit at position "
                                           f"{self.position} (direct logit attribution)")}

    def to_json(self) -> dict:
        return {"analysis": self.analysis, "schema_version": self.schema_version, "method": METHOD,
                "model": self.model, "position": self.position, "token": self.token, "target": self.target,
                "options": self.options, "layers": list(self.layers),
                "attribution": {"heads": np.round(self.heads, 8).tolist(), "mlp": np.round(self.mlp, 8).tolist(),
                                "attn_bias": np.round(self.attn_bias, 8).tolist(), "embed": self.embed,
                                "offset": self.offset, "logit": self.logit, "total": self.total,
                                "residual_error": self.residual_error}}

    @classmethod
    def from_json(cls, data: dict) -> LensResult:
        stored_version(data, cls)
        parts = data["attribution"]
        heads = np.asarray(parts["heads"], dtype=np.float64)
        mlp = np.asarray(parts["mlp"], dtype=np.float64)
        if heads.ndim != 2 or mlp.shape != (heads.shape[0],):
            raise BundleError(f"the lens result's heads {heads.shape} and mlp {mlp.shape} do not match")
        return cls(model=str(data.get("model", "?")), position=int(data["position"]), token=str(data.get("token", "")),
                   target=dict(data["target"]), options=dict(data.get("options") or {}),
                   layers=tuple(data.get("layers") or ()), heads=heads, mlp=mlp,
                   attn_bias=np.asarray(parts["attn_bias"], dtype=np.float64), embed=float(parts["embed"]),
                   offset=float(parts["offset"]), logit=float(parts["logit"]),
                   residual_error=float(parts.get("residual_error", 0.0)))


class _Recording(ActivationEdits):
    """The causal tools' recording runtime (head outputs before W_O, residual streams), plus each layer's MLP
    output, which the attribution needs as a component of its own."""

    def __init__(self, layout):
        super().__init__(layout, record=True)
        self.mlp: dict[int, torch.Tensor] = {}

    def install(self, model) -> list:
        handles = super().install(model)
        for index, layer in enumerate(self.layout.stacks["text"].layers):
            mlp = getattr(layer, "mlp", None)
            if mlp is None:
                for handle in handles:
                    handle.remove()
                raise InputError(f"{type(layer).__name__} has no 'mlp' block; direct logit attribution needs one")

            def record(module, args, output, index=index):
                self.mlp[index] = (output[0] if isinstance(output, tuple) else output).detach().clone()
            handles.append(mlp.register_forward_hook(record))
        return handles


def analyse(tracer, prompt: str | None = None, *, ids: torch.Tensor | None = None, position: int = -1,
            target: str | int | None = None, scale: Scale = "final", top: int = TOP) -> LensResult:
    """Logit lens and direct logit attribution at `position` (negative counts from the end) of `prompt` (fed as is)
    or of token ids [1, query_pos]; target: a one-token text, a token id, or None for the model's top prediction."""
    if scale not in SCALES:
        raise InputError(f"the scale must be one of {', '.join(SCALES)}, not {scale!r}")
    if tracer.loaded.kind == "encoder":
        raise InputError(f"{tracer.loaded.name} is an encoder; the logit lens reads a causal LM's predictions")
    if (prompt is None) == (ids is None):
        raise InputError("give a prompt or token ids")
    if ids is None:
        ids = token_ids(tracer, prompt)
        check_known_tokens(tracer.loaded.tokenizer, prompt, ids[0], what="the prompt")
    n = ids.shape[1]
    if not -n <= position < n:
        raise InputError(f"position {position} is outside the input's {n} tokens (0..{n - 1}, or -1 for the last)")
    position %= n
    # A causal model's row `position` depends on tokens 0..position only: run those, and read the last row.
    ids = ids[:, :position + 1]
    recording = _Recording(tracer.layout)
    logits = tracer.last_logits(ids, edit=recording)[0]  # [vocab]
    tokenizer = tracer.loaded.tokenizer
    target_id = _target(tokenizer, target, logits)
    hf_model = tracer.loaded.model
    norm, unembedding = readout(hf_model)
    n_layers = tracer.layout.stacks["text"].n_layers
    streams = torch.stack([recording.resid[layer][0, -1] for layer in range(n_layers + 1)]).float()  # [layer+1, d]
    read = lens_logits(streams, hf_model)  # [layer + 1, vocab]
    layers = [_lens_row(tokenizer, layer, n_layers, read[layer], target_id, top) for layer in range(n_layers + 1)]

    direction = unembedding.weight[target_id].detach().double().cpu()  # W_U[target], [d_model]
    unembedding_bias = getattr(unembedding, "bias", None)
    terms = norm_terms(norm, streams[-1])
    offset = float(terms.bias @ direction) + (0.0 if unembedding_bias is None else float(unembedding_bias[target_id]))
    head_vectors, biases, mlps = [], [], []
    for layer in range(n_layers):
        outputs = recording.heads[layer][0, -1].double().cpu()  # [head, d_head]
        w_o = tracer.layout.output_projection("text", layer).detach().double().cpu()  # [d_model, head * d_head]
        w_o = w_o.reshape(w_o.shape[0], outputs.shape[0], -1)  # [d_model, head, d_head]
        head_vectors.append(torch.einsum("mhd,hd->hm", w_o, outputs))
        bias = getattr(tracer.layout.output_projection_module("text", layer), "bias", None)
        biases.append(torch.zeros(w_o.shape[0], dtype=torch.float64) if bias is None else bias.detach().double().cpu())
        mlps.append(recording.mlp[layer][0, -1].double().cpu())
    heads, biases, mlps = torch.stack(head_vectors), torch.stack(biases), torch.stack(mlps)
    embed = streams[0].double()
    rebuilt = embed + heads.sum((0, 1)) + biases.sum(0) + mlps.sum(0)
    residual_error = float((rebuilt - streams[-1].double()).abs().max())
    if scale == "final":
        def attribute(vectors):
            return (terms.scaled(vectors) * terms.weight) @ direction
    else:
        def attribute(vectors):
            return _through_norm(norm, vectors, terms.bias) @ direction
    options = {"scale": scale, "top": top, "head_output": "before W_O, through the head's slice of W_O",
               "offset": "final norm bias . W_U[target] + unembedding bias[target]"}
    return LensResult(
        model=tracer.loaded.name, position=position, token=tokenizer.decode([int(ids[0, -1])]),
        target={"id": target_id, "text": tokenizer.decode([target_id]), "chosen": "given" if target is not None
                else "top prediction"},
        options=options, layers=tuple(layers), heads=attribute(heads).numpy(), mlp=attribute(mlps).numpy(),
        attn_bias=attribute(biases).numpy(), embed=float(attribute(embed[None])[0]), offset=offset,
        logit=float(logits[target_id]), residual_error=residual_error)


def _target(tokenizer, target, logits: torch.Tensor) -> int:
    if target is None:
        return int(logits.argmax())
    if isinstance(target, int):
        if not 0 <= target < logits.numel():
            raise InputError(f"token id {target} is outside the vocabulary (0..{logits.numel() - 1})")
        return target
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise InputError(f"the target {target!r} is {len(ids)} tokens for this model "
                         f"({[tokenizer.decode([i]) for i in ids]}); give one token (a word inside a sentence usually "
                         "needs its leading space)")
    check_known_tokens(tokenizer, target, ids, what="the target")
    return int(ids[0])


def check_known_tokens(tokenizer, text: str, ids, *, what: str) -> None:
    """Refuse a text the tokenizer could only read as its unknown token (a word outside a small vocabulary): the
    model would be asked about <unk>, not about the text."""
    unknown = getattr(tokenizer, "unk_token_id", None)
    if unknown is None or unknown not in [int(i) for i in ids] or str(tokenizer.unk_token) in text:
        return
    raise InputError(f"{what} {text[:40]!r} holds text outside this model's vocabulary "
                     f"(it reads as {tokenizer.unk_token}); use tokens the model knows")


def _lens_row(tokenizer, layer: int, n_layers: int, logits: torch.Tensor, target: int, top: int) -> dict:
    probabilities = logits.softmax(-1)
    values, tokens = probabilities.topk(min(top, probabilities.numel()))
    return {"layer": layer, "label": f"entering layer {layer}" if layer < n_layers else "after the last layer",
            "top": [[tokenizer.decode([int(t)]), round(float(v), 6)] for t, v in zip(tokens, values)],
            "target_rank": rank_of(logits, target), "target_probability": float(probabilities[target]),
            "target_logit": float(logits[target])}


def _through_norm(norm, vectors: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """[..., d_model] each vector through the final norm on its own statistics, the norm's bias taken off (fp64)."""
    parameter = next(norm.parameters())
    with torch.inference_mode():
        out = norm(vectors.to(parameter.device, parameter.dtype)).double().cpu()
    return out - bias
