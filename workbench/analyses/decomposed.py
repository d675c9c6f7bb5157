"""Reading a trace captured with `decomposition=True` (see workbench/capture/decomposition.py), shared by
the routes and circuits analyses: the requirement check, and attention rows rebuilt from stored queries and
keys."""

from __future__ import annotations

import torch

from workbench.errors import InputError
from workbench.traces.names import tensor_name
from workbench.traces.retrace import retrace

REQUIRED = ("query", "key", "value", "hidden_in", "attn_out", "o_weight", "o_bias")


def check_trace(trace, analysis: str) -> None:
    """Raise a user-facing error when the trace lacks the decomposition tensors."""
    missing = [stat for stat in REQUIRED if not trace.has(f"layer_00.{stat}")]
    if missing:
        again = retrace(trace.meta, trace.path, ["--decomposition"])
        raise InputError(f"{analysis} needs a trace with the residual decomposition (missing "
                         f"{', '.join(missing)}); trace this input again with it: {again.describe()}, then run "
                         f"`workbench {analysis} {again.out}` (in Python: workbench.trace(..., decomposition=True))")


def layer_tensor(trace, layer: int, stat: str) -> torch.Tensor:
    return trace.tensor(tensor_name("text", layer, stat)).float()


def attention_rows(query: torch.Tensor, key: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Causal attention [head, len(rows), key_pos] of the given query rows from query [head, query_pos,
    d_head] (already scaled) and key [kv_head, key_pos, d_head]; query head h reads kv head
    h // (head / kv_head), as transformers' repeat_kv does."""
    heads, kv_heads = query.shape[0], key.shape[0]
    group = heads // kv_heads
    q = query[:, rows].reshape(kv_heads, group * len(rows), -1)
    scores = torch.matmul(q, key.transpose(1, 2)).reshape(heads, len(rows), -1)
    hidden = torch.arange(key.shape[1])[None, :] > rows[:, None]
    return scores.masked_fill_(hidden[None], float("-inf")).softmax(-1)


def scores_rows(query: torch.Tensor, key: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Pre-softmax scores [head, len(rows), key_pos] (no mask applied)."""
    heads, kv_heads = query.shape[0], key.shape[0]
    group = heads // kv_heads
    q = query[:, rows].reshape(kv_heads, group * len(rows), -1)
    return torch.matmul(q, key.transpose(1, 2)).reshape(heads, len(rows), -1)
