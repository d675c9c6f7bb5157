"""What the nodes of an information-flow route hold, read through the logit lens (nostalgebraist 2020): each
node's vector through the model's final norm and unembedding, as its top tokens with probabilities.

    >>> lens = node_tokens(trace, ["X0_3", "A5_3", "M5_3", "I29_3"], model=loaded)   # {node id: [(token, p)]}
    >>> one = node_lens(trace, "A5_3", model=loaded, watch=trace.tokens[4].id)    # NodeLens: top, watched rank

The vectors come from the trace's decomposition tensors, no forward pass: X0_t is the residual entering
layer 0, A{l}_t that residual plus the attention block's output, I{l}_t the residual entering layer l + 1 (the
stored last-layer output for the last layer), and the FFN block M{l}_t is I{l}_t - A{l}_t (what the block
adds, read through the same norm and unembedding: the tokens it promotes). Only the final norm and the
unembedding come from the model (`workbench.analyses.readout`, the workbench's one logit-lens path), so the app
loads it by the bundle's model name like a recompute does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from workbench.analyses.readout import lens_probabilities, rank_of
from workbench.errors import InputError
from workbench.traces.names import tensor_name

TOP_TOKENS = 5
_NODE = re.compile(r"([XAMI])(\d+)_(\d+)")


def _parse(node_id: str) -> tuple[str, int, int]:
    match = _NODE.fullmatch(node_id)
    if match is None:
        raise InputError(f"{node_id!r} is not a route node (X0_t, A{{l}}_t, M{{l}}_t or I{{l}}_t)")
    return match[1], int(match[2]), int(match[3])


def node_vectors(trace, node_ids) -> dict[str, torch.Tensor]:
    """{node id: [d_model]} of route nodes, from the trace's stored residual decomposition (fp32)."""
    if not trace.has(tensor_name("text", 0, "hidden_in")) or not trace.has(tensor_name("text", 0, "attn_out")):
        raise InputError("the node contents need the residual decomposition (trace with --decomposition)")
    last = trace.n_layers() - 1
    loaded: dict[tuple[int, str], torch.Tensor] = {}

    def read(layer: int, stat: str) -> torch.Tensor:
        if (layer, stat) not in loaded:
            loaded[(layer, stat)] = trace.tensor(tensor_name("text", layer, stat)).float()  # [query_pos, d_model]
        return loaded[(layer, stat)]

    def after_attention(layer: int, position: int) -> torch.Tensor:
        return read(layer, "hidden_in")[position] + read(layer, "attn_out")[position]

    def after_ffn(layer: int, position: int) -> torch.Tensor:
        return read(layer + 1, "hidden_in")[position] if layer < last else read(layer, "hidden_out")[position]

    out = {}
    for node_id in node_ids:
        letter, layer, position = _parse(node_id)
        if not 0 <= position < len(trace.tokens) or not 0 <= layer <= last:
            raise InputError(f"route node {node_id} lies outside the trace ({trace.n_layers()} layers, "
                             f"{len(trace.tokens)} tokens)")
        if letter == "X":
            out[node_id] = read(0, "hidden_in")[position]
        elif letter == "A":
            out[node_id] = after_attention(layer, position)
        elif letter == "I":
            out[node_id] = after_ffn(layer, position)
        else:
            out[node_id] = after_ffn(layer, position) - after_attention(layer, position)
    return out


@dataclass(frozen=True)
class NodeLens:
    """One node read through the logit lens: its top tokens, and where one watched token (the token the route's
    prediction produced) ranks among all of them."""

    node: str
    top: tuple[tuple[str, float], ...]  # (token text, probability), most likely first
    watched: tuple[str, int, float] | None = None  # (token text, rank with 1 = top, probability)


def node_tokens(trace, node_ids, *, model, top: int = TOP_TOKENS) -> dict[str, list[tuple[str, float]]]:
    """{node id: [(token text, probability)] * top}: each node's vector through the final norm and the
    unembedding of `model` (a LoadedModel, or a Tracer), softmaxed over the vocabulary."""
    return lens_tokens(node_vectors(trace, list(dict.fromkeys(node_ids))), model=model, top=top)


def node_lens(trace, node_id: str, *, model, top: int = 10, watch: int | None = None) -> NodeLens:
    """One node's logit lens (`node_tokens` of one node, plus the rank and probability of token id `watch`)."""
    return lens_of(node_id, node_vectors(trace, [node_id])[node_id], model=model, top=top, watch=watch)


def lens_of(node_id: str, vector: torch.Tensor, *, model, top: int = 10, watch: int | None = None) -> NodeLens:
    """`node_lens` of a vector already read ([d_model]), so a caller can check the trace before it loads the model."""
    loaded = getattr(model, "loaded", model)
    probabilities = _probabilities(vector[None], loaded)[0]  # [vocab]
    values, tokens = probabilities.topk(top)
    watched = None
    if watch is not None and 0 <= watch < probabilities.numel():
        p = probabilities[watch]
        watched = (loaded.tokenizer.decode([watch]), rank_of(probabilities, watch), float(p))
    return NodeLens(node_id, tuple((loaded.tokenizer.decode([int(t)]), float(v)) for t, v in zip(tokens, values)),
                    watched)


def _probabilities(rows: torch.Tensor, loaded) -> torch.Tensor:
    """[rows, vocab] softmax of rows ([rows, d_model]) through the final norm and the unembedding."""
    return lens_probabilities(rows, loaded.model)


def lens_tokens(vectors: dict[str, torch.Tensor], *, model, top: int = TOP_TOKENS) -> dict[str, list[tuple[str, float]]]:
    """`node_tokens` of vectors already read ({node id: [d_model]}), so a caller can check the trace before it
    loads the model."""
    if not vectors:
        return {}
    loaded = getattr(model, "loaded", model)
    ids = list(vectors)
    stacked = torch.stack([vectors[i] for i in ids])
    out = {}
    for start in range(0, len(ids), 256):  # bounds the [rows, vocab] block
        probabilities, tokens = _probabilities(stacked[start:start + 256], loaded).topk(top, dim=-1)
        for row, node_id in enumerate(ids[start:start + 256]):
            out[node_id] = [(loaded.tokenizer.decode([int(t)]), float(p))
                            for t, p in zip(tokens[row], probabilities[row])]
    return out
