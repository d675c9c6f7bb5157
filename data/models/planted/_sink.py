"""`planted-sink`: a 3-layer Llama (GQA, RoPE) with a planted BOS sink head and a planted hidden sink head.

Residual dimensions 0-2 are reserved; everything else is seeded random and never reads or writes them:
  dim 0 (CONST)  every token's embedding holds 1.0: planted queries read it, so they are the same at every position
  dim 1 (BOS)    only <|bos|> holds a massive 30.0 (a planted massive activation)
  dim 2 (PERIOD) only "." holds 1.0
Planted heads put their query and key on head coordinate 7 (paired with 15 by rotate_half), the lowest RoPE
frequency (theta ** (-14/16) = 3.2e-4 rad per position), so their scores are content-based: the rotation over
256 positions changes a score by under 0.4%.
"""

from __future__ import annotations

import torch
from _common import generator, random_block, unit_rows

D_MODEL, LAYERS, HEADS, KV_HEADS, D_HEAD, D_MLP = 64, 3, 4, 2, 16, 128
CONST, BOS_DIM, PERIOD_DIM = 0, 1, 2
RESERVED = 3
COORD = 7  # planted head coordinate (lowest RoPE frequency)
BOS_VALUE = 30.0
SINK = (1, 0)  # (layer, head): sends >= 0.9 of every query's attention to BOS
HIDDEN_SINK = (2, 2)  # (layer, head): attends to "." tokens (>= 0.9 once one is visible), else BOS
SINK_WEIGHTS = (2.0, 2.0)  # query, key weight on coordinate 7
HIDDEN_WEIGHTS = (3.0, 12.0, 1.2)  # query weight, key weight on PERIOD, key weight on BOS
PROBE = ("Attention sinks are easy to see in a planted model. The period in this prompt is a hidden sink "
         "and every later token looks at it")


def build():
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.models.byte_tokenizer import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=D_HEAD, max_position_embeddings=256,
        rms_norm_eps=1e-6, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    gen = generator(1)
    bos = tokenizer.bos_token_id
    period = tokenizer.convert_tokens_to_ids(".")
    free = D_MODEL - RESERVED
    with torch.no_grad():
        embed = torch.zeros(len(tokenizer), D_MODEL)
        embed[:, CONST] = 1.0
        embed[:, RESERVED:] = unit_rows(len(tokenizer), free, 0.5 * free ** 0.5, gen)
        embed[bos, RESERVED:] = 0.0
        embed[bos, BOS_DIM] = BOS_VALUE
        embed[period, PERIOD_DIM] = 1.0
        model.model.embed_tokens.weight.copy_(embed)
        model.lm_head.weight.copy_(random_block(len(tokenizer), D_MODEL, 0.1, gen))
        model.lm_head.weight[:, :RESERVED] = 0.0
        for index, layer in enumerate(model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            for proj, std in ((attn.q_proj, 0.15), (attn.k_proj, 0.15), (attn.v_proj, 0.2), (mlp.gate_proj, 0.1),
                              (mlp.up_proj, 0.1)):
                proj.weight.copy_(random_block(*proj.weight.shape, std, gen))
                proj.weight[:, :RESERVED] = 0.0  # random parts never read the reserved dimensions
            for proj, std in ((attn.o_proj, 0.05), (mlp.down_proj, 0.05)):
                proj.weight.copy_(random_block(*proj.weight.shape, std, gen))
                proj.weight[:RESERVED] = 0.0  # ... and never write them
            for head in range(HEADS):  # the planted coordinate is free of random signal everywhere
                attn.q_proj.weight[head * D_HEAD + COORD] = 0.0
                attn.q_proj.weight[head * D_HEAD + COORD + D_HEAD // 2] = 0.0
            for kv in range(KV_HEADS):
                attn.k_proj.weight[kv * D_HEAD + COORD] = 0.0
                attn.k_proj.weight[kv * D_HEAD + COORD + D_HEAD // 2] = 0.0
            group = HEADS // KV_HEADS
            if index == SINK[0]:
                head, kv = SINK[1], SINK[1] // group
                attn.q_proj.weight[head * D_HEAD:(head + 1) * D_HEAD] = 0.0
                attn.q_proj.weight[head * D_HEAD + COORD, CONST] = SINK_WEIGHTS[0]
                attn.k_proj.weight[kv * D_HEAD + COORD, BOS_DIM] = SINK_WEIGHTS[1]
            if index == HIDDEN_SINK[0]:
                head, kv = HIDDEN_SINK[1], HIDDEN_SINK[1] // group
                attn.q_proj.weight[head * D_HEAD:(head + 1) * D_HEAD] = 0.0
                attn.q_proj.weight[head * D_HEAD + COORD, CONST] = HIDDEN_WEIGHTS[0]
                attn.k_proj.weight[kv * D_HEAD + COORD, PERIOD_DIM] = HIDDEN_WEIGHTS[1]
                attn.k_proj.weight[kv * D_HEAD + COORD, BOS_DIM] = HIDDEN_WEIGHTS[2]
    ids = tokenizer(PROBE)["input_ids"]
    ground_truth = {
        "model": "planted-sink", "architecture": "LlamaForCausalLM", "builder": "data/models/planted/build.py",
        "layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS, "d_model": D_MODEL, "d_head": D_HEAD,
        "tokenizer": "workbench byte-level tokenizer, no chat template (prompts are traced raw after <|bos|>)",
        "sink_heads": [{"layer": SINK[0], "head": SINK[1], "key": "position 0 (<|bos|>)", "min_mass": 0.9,
                        "meaning": "every query row puts >= 0.9 of its attention on position 0, so Gu et al.'s "
                                   "alpha_0 >= 0.9 for this head"}],
        "hidden_sink_heads": [{
            "layer": HIDDEN_SINK[0], "head": HIDDEN_SINK[1], "token": ".", "token_id": period, "min_mass": 0.9,
            "meaning": "a query row that can see a '.' puts >= 0.9 of its attention on the '.' tokens (shared among "
                       "them); a row before the first '.' puts >= 0.9 on position 0"}],
        "non_planted_heads": {"max_bos_alpha": 0.3, "max_period_share": 0.5,
                              "meaning": "every other head (layer, head) has alpha_0 < 0.3 and puts under half of "
                                         "its attention on '.' tokens"},
        "massive_activation": {"token": "<|bos|>", "position": 0, "dims": [BOS_DIM], "value": BOS_VALUE,
                               "layers": list(range(LAYERS)),
                               "meaning": "the hidden state entering every layer has x[1] = 30 at position 0 and "
                                          "|x[1]| < 1e-6 elsewhere (nothing writes dimension 1)"},
        "reserved_dims": {"const": CONST, "bos": BOS_DIM, "period": PERIOD_DIM},
        "planted_head_coordinate": {"coordinate": COORD, "rope_pair": [COORD, COORD + D_HEAD // 2]},
        "probe": {"prompt": PROBE, "period_positions": [i for i, t in enumerate(ids) if t == period],
                  "length": len(ids)},
    }
    return model, tokenizer, ground_truth
