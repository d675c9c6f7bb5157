"""Traces: what one traced input leaves behind, in memory (`Trace`) and on disk (`NAME.wbtrace/`).

Axis vocabulary (used by every tensor annotation in the workbench):
    layer     a transformer layer of a stack ("text" = the language model or encoder, "vision" = vision tower)
    head      a query head (GQA expanded); kv_head a key/value head
    query_pos position of the attending token; key_pos position of the attended token
    region    index into `REGIONS` (special, system, image, prompt, generated)
    d_model   residual-stream width; d_head per-head width; top the k of a top-k list

Per layer, the bundle stores (names `layer_XX.<stat>`, vision tower `vision.layer_XX.<stat>`):
    key_mass [head, key_pos]             attention received by each key, summed over queries
    key_count [key_pos]                  number of queries that see each key (alpha_k = key_mass / key_count)
    region_mass [head, query_pos, region], region_count [query_pos, region]
    entropy [head, query_pos], normaliser [head, query_pos] (1 = healthy; the self-check)
    optional: maps [head, query_pos, key_pos] + map_heads [head], hidden_in [query_pos, d_model],
              head_out [head, query_pos, d_model] + head_out_positions [query_pos], top_index/top_weight;
              decomposition (routes, circuits): query [head, query_pos, d_head] (scaled), key/value
              [kv_head, key_pos, d_head], attn_out [query_pos, d_model], o_weight [d_model, head, d_head],
              o_bias [d_model], and on the last layer hidden_out [query_pos, d_model]
Trace-level: outputs.next_token_logprob [query_pos], outputs.prediction_entropy [query_pos].
"""

from workbench.traces.schema import SCHEMA_VERSION
from workbench.traces.tokens import REGIONS, Token
from workbench.traces.trace import Trace, load

__all__ = ["Trace", "Token", "REGIONS", "SCHEMA_VERSION", "load"]
