"""The model's readout: its final norm and unembedding, the one logit-lens path of the workbench.

Every reading of a residual vector as next-token logits goes through here: the logit lens of `lens.py`, the route
nodes of the app (`app/data/route_lens.py`) and direct logit attribution, which also needs the final norm split
into its parts (`norm_terms`): y = (x - mean x) / scale * weight + bias for LayerNorm, x / scale * weight for
RMSNorm (mean left out), with scale = sqrt(mean of the squares + eps) of the (centred) vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

import torch

from workbench.errors import InputError

__all__ = ["NormTerms", "lens_logits", "lens_probabilities", "norm_terms", "rank_of", "readout"]

# where transformers keeps the final norm of the decoders the decomposition supports (Llama family, Gemma,
# Qwen2, Mistral; GPT-2; LLaVA's language model)
_FINAL_NORMS = ("model.norm", "transformer.ln_f", "model.language_model.norm", "language_model.model.norm")


def readout(hf_model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(final norm, unembedding) modules of a transformers causal LM (or VLM)."""
    unembedding = hf_model.get_output_embeddings()
    for path in _FINAL_NORMS:
        try:
            norm = attrgetter(path)(hf_model)
        except AttributeError:
            continue
        if unembedding is not None:
            return norm, unembedding
    raise InputError(f"{type(hf_model).__name__} has no final norm and unembedding the logit lens knows")


def lens_logits(rows: torch.Tensor, hf_model) -> torch.Tensor:
    """[rows, vocab] logits (fp32) of residual vectors rows [rows, d_model] through the final norm and unembedding."""
    norm, unembedding = readout(hf_model)
    parameter = next(unembedding.parameters())
    with torch.inference_mode():
        return unembedding(norm(rows.to(parameter.device, parameter.dtype))).float().cpu()


def lens_probabilities(rows: torch.Tensor, hf_model) -> torch.Tensor:
    """[rows, vocab] softmax of `lens_logits`."""
    return lens_logits(rows, hf_model).softmax(-1)


def rank_of(scores: torch.Tensor, token: int) -> int:
    """Rank of `token` among scores [vocab] (1 = the highest; ties count in its favour)."""
    return int((scores > scores[token]).sum()) + 1


@dataclass(frozen=True)
class NormTerms:
    """The final norm applied to one residual vector x: y = (x - centre * mean x) / scale * weight + bias."""

    centre: bool          # LayerNorm subtracts the mean; RMSNorm does not
    scale: float          # sqrt(mean((x - centre * mean x)^2) + eps) of the final residual
    weight: torch.Tensor  # [d_model] fp64 (Gemma's (1 + w) already added)
    bias: torch.Tensor    # [d_model] fp64, zeros for RMSNorm

    def scaled(self, components: torch.Tensor) -> torch.Tensor:
        """components [..., d_model] centred (LayerNorm) and divided by the final residual's scale, as
        TransformerLens's apply_ln_to_stack does by default (the frozen scale of the whole residual)."""
        components = components.double()
        if self.centre:
            components = components - components.mean(-1, keepdim=True)
        return components / self.scale


def norm_terms(norm: torch.nn.Module, final: torch.Tensor) -> NormTerms:
    """The parts of `norm` applied to the final residual `final` [d_model], checked: they must rebuild the norm's own
    output within 1e-4 (relative), or the model's norm is one this split does not know (refused)."""
    x = final.double().cpu()
    weight = getattr(norm, "weight", None)
    if weight is None:
        raise InputError(f"the final norm {type(norm).__name__} has no weight the attribution can read")
    weight = weight.detach().double().cpu()
    if "gemma" in type(norm).__name__.lower():
        weight = 1.0 + weight  # Gemma's RMSNorm scales by (1 + w)
    centre = isinstance(norm, torch.nn.LayerNorm)
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
    bias = getattr(norm, "bias", None)
    bias = torch.zeros_like(weight) if bias is None else bias.detach().double().cpu()
    centred = x - x.mean() if centre else x
    terms = NormTerms(centre, float(torch.sqrt(centred.pow(2).mean() + eps)), weight, bias)
    parameter = next(norm.parameters())
    with torch.inference_mode():
        actual = norm(final.to(parameter.device, parameter.dtype)[None]).double().cpu()[0]
    rebuilt = terms.scaled(x) * weight + bias
    if (rebuilt - actual).abs().max() > 1e-4 * max(1.0, float(actual.abs().max())):
        raise InputError(f"the final norm {type(norm).__name__} is neither a LayerNorm nor an RMSNorm; direct logit "
                         "attribution cannot split it")
    return terms
