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
is 1: all attention is lookback. When C + N is 0 (no mass on either set) the ratio is 0.5.
    "reference"     the released code's convention (`lookback_ratio_reference`): the response header counts
                    as new tokens (C = every input key before it), and a ratio with no new key visible is
                    undefined (NaN; span and window means leave it out). The header is the input's trailing
                    chat-template tokens (`response_header`) or the last `header_tokens` input tokens. Region
                    statistics do not hold a row's attention on single keys, so a trace with a header needs
                    every head's maps or --decomposition; without a header the statistics suffice.
"""

from __future__ import annotations

import numpy as np

import torch

from workbench.errors import InputError
from workbench.traces.metrics import CONTEXT_REGIONS, alpha, lookback_ratio, lookback_ratio_reference, predicting_rows
from workbench.traces.names import tensor_name
from workbench.traces.tokens import REGIONS

VARIANTS: dict[str, tuple[str, ...]] = {
    "context": CONTEXT_REGIONS,
    "image_prompt": ("image", "prompt"),
    "image": ("image",),
    "prompt": ("prompt",),
}


REFERENCE = "reference"  # the released code's convention, a variant of its own (not a region set)


def available_variants(trace) -> list[str]:
    """The variants that make sense for this trace: image ones only when it has image tokens, "reference" only
    when it can be computed exactly (see `header_attention`)."""
    has_image = any(token.region == "image" for token in trace.tokens)
    names = [name for name in VARIANTS if has_image or "image" not in name]
    return names + ([REFERENCE] if _reference_computable(trace, response_header(trace)) else [])


def response_header(trace, header_tokens: int | None = None) -> list[int]:
    """Positions of the response header, which the reference counts as new tokens: the last `header_tokens`
    input tokens, or by default the input's trailing "special" tokens after the last prompt, system or image
    token (a chat template's turn end and assistant header; none for a raw prompt)."""
    start = int(trace.generation.get("start", len(trace.tokens)))
    if header_tokens is not None:
        if not 0 <= header_tokens < start:
            raise InputError(f"--header-tokens must be from 0 to {start - 1} (the input has {start} tokens)")
        return list(range(start - header_tokens, start))
    first = start
    while first > 0 and trace.tokens[first - 1].region == "special":
        first -= 1
    return list(range(first, start)) if first > 0 else []


def _reference_computable(trace, header: list[int]) -> bool:
    if not header:
        return True
    return all(_mapped_all_heads(trace, layer) or trace.has(tensor_name("text", layer, "query"))
               for layer in range(trace.n_layers()))


def _mapped_all_heads(trace, layer: int) -> bool:
    name = tensor_name("text", layer, "map_heads")
    return trace.has(name) and len(trace.tensor(name)) == trace.n_heads()


def header_attention(trace, layer: int, rows: torch.Tensor, header: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mass [head, row], count [row]): each row's attention on the header's keys and how many it sees, from the
    layer's maps (every head mapped) or its --decomposition queries and keys; zeros without a header."""
    count = torch.tensor([sum(1 for key in header if key <= row) for row in rows.tolist()], dtype=torch.float64)
    if not header:
        return torch.zeros(trace.n_heads(), len(rows), dtype=torch.float64), count
    keys = torch.tensor(header)
    if _mapped_all_heads(trace, layer):
        heads = trace.tensor(tensor_name("text", layer, "map_heads")).long()
        maps = trace.tensor(tensor_name("text", layer, "maps"))[:, rows][:, :, keys].double()
        mass = torch.zeros_like(maps)
        mass[heads] = maps
        return mass.sum(-1), count
    if not trace.has(tensor_name("text", layer, "query")):
        raise InputError("the reference Lookback convention needs each generated row's attention on the response "
                         "header's keys: trace with --maps all or --decomposition (or without a chat template)")
    from workbench.analyses.decomposed import attention_rows

    query = trace.tensor(tensor_name("text", layer, "query")).float()
    key = trace.tensor(tensor_name("text", layer, "key")).float()
    return attention_rows(query, key, rows)[:, :, keys].double().sum(-1), count


def token_features(trace, *, variants: list[str] | None = None, header_tokens: int | None = None
                   ) -> dict[str, np.ndarray]:
    """Per generated token features (float32), each [generated token, layer, head] unless noted:

    lookback_<variant>  the lookback ratio for each context variant ("reference": the released code's
                        convention, NaN where undefined; header_tokens overrides `response_header`)
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
    unknown = [v for v in variants if v not in VARIANTS and v != REFERENCE]
    if unknown:
        raise InputError(f"unknown lookback variant {unknown[0]!r}; use {', '.join([*VARIANTS, REFERENCE])}")
    header = response_header(trace, header_tokens) if REFERENCE in variants else []
    for layer in range(n_layers):
        stats = trace.layer(layer)
        region_mass, region_count = stats["region_mass"][:, rows], stats["region_count"][rows]
        for variant in variants:
            if variant == REFERENCE:
                ratio = lookback_ratio_reference(region_mass, region_count, *header_attention(trace, layer, rows, header))
            else:
                ratio = lookback_ratio(region_mass, region_count, VARIANTS[variant])
            out[f"lookback_{variant}"][:, layer] = ratio.T.numpy()
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
