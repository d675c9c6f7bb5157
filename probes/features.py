"""Per generated token features of one `Trace`, computed from its always-on statistics (no maps needed).

Row convention (the trace's): the token at position p was predicted by query row p - 1, so every feature of
generated token p is read from row p - 1, as in Lookback Lens' released code (step01_extract_attns.py takes
the last query row of each generation step).

Lookback ratio (Chuang et al. 2024; docs/probes.md, 'Lookback Lens'), per layer and head of the text stack
(`workbench.traces.metrics.lookback_ratio`):
    C = mean attention per CONTEXT key, N = mean attention per earlier GENERATED key, ratio = C / (C + N),
    with the means = region_mass / region_count (mean per key, not summed mass).
Context variants (the key sets that count as context; N is always the generated region):
    "context"       every non-generated key (special, system, image, prompt): the reference code's convention,
                    whose context is the whole input before the response
    "image_prompt"  image + prompt keys only (the chat template's scaffolding and system message left out)
    "image"         image keys only (VLMs)
    "prompt"        the user's text only
When no generated key is visible yet (the row that predicts the first generated token) N is 0 and the ratio
is 1: all attention is lookback. When C + N is 0 (no mass on either set) the ratio is 0.5. The reference
instead counts its response header ("\n#Answer#:") as new tokens; region statistics cannot separate a chat
template's header from the rest of its scaffolding, so the workbench uses the paper's definition (both
conventions are documented with `lookback_ratio`).
"""

from __future__ import annotations

import numpy as np

from workbench.traces.metrics import CONTEXT_REGIONS, alpha, lookback_ratio, predicting_rows
from workbench.traces.names import tensor_name
from workbench.traces.tokens import REGIONS

VARIANTS: dict[str, tuple[str, ...]] = {
    "context": CONTEXT_REGIONS,
    "image_prompt": ("image", "prompt"),
    "image": ("image",),
    "prompt": ("prompt",),
}


def available_variants(trace) -> list[str]:
    """The context variants that make sense for this trace: image ones only when it has image tokens."""
    has_image = any(token.region == "image" for token in trace.tokens)
    return [name for name in VARIANTS if has_image or "image" not in name]


def token_features(trace, *, variants: list[str] | None = None) -> dict[str, np.ndarray]:
    """Per generated token features (float32), each [generated token, layer, head] unless noted:

    lookback_<variant>  the lookback ratio for each context variant
    share_image         attention mass of the predicting row on image keys (VLMs)
    entropy             attention entropy of the predicting row (nats)
    logprob [token]     log p of the generated token; pred_entropy [token] the entropy of its prediction
    sink [layer, head]  alpha_0 = key_mass[h, 0] / key_count[0] (Gu et al. 2025), one per generation
    """
    rows = predicting_rows(trace)
    variants = available_variants(trace) if variants is None else variants
    n_layers, n_heads, n = trace.n_layers(), trace.n_heads(), len(rows)
    out = {f"lookback_{v}": np.zeros((n, n_layers, n_heads), np.float32) for v in variants}
    has_image = any(token.region == "image" for token in trace.tokens)
    if has_image:
        out["share_image"] = np.zeros((n, n_layers, n_heads), np.float32)
    out["entropy"] = np.zeros((n, n_layers, n_heads), np.float32)
    out["sink"] = np.zeros((n_layers, n_heads), np.float32)
    for layer in range(n_layers):
        stats = trace.layer(layer)
        region_mass, region_count = stats["region_mass"][:, rows], stats["region_count"][rows]
        for variant in variants:
            out[f"lookback_{variant}"][:, layer] = lookback_ratio(region_mass, region_count,
                                                                   VARIANTS[variant]).T.numpy()
        if has_image:
            out["share_image"][:, layer] = region_mass[..., REGIONS.index("image")].T.float().numpy()
        out["entropy"][:, layer] = stats["entropy"][:, rows].T.float().numpy()
        out["sink"][layer] = alpha(stats["key_mass"][:, :1], stats["key_count"][:1])[:, 0].float().numpy()
    out["logprob"] = trace.tensor("outputs.next_token_logprob")[rows].float().numpy()
    out["pred_entropy"] = trace.tensor("outputs.prediction_entropy")[rows].float().numpy()
    return out


def hidden_means(trace) -> np.ndarray | None:
    """[layer, d_model] mean residual stream entering each layer over the predicting rows (None if not kept)."""
    rows = predicting_rows(trace)
    names = [tensor_name("text", layer, "hidden_in") for layer in range(trace.n_layers())]
    if not len(rows) or not all(trace.has(name) for name in names):
        return None
    return np.stack([trace.tensor(name)[rows].double().mean(0).float().numpy() for name in names])
