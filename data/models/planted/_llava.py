"""`planted-llava`: a tiny LLaVA (2-layer CLIP tower, projector, 3-layer Llama with GQA, d_model 768) with a
planted vision-aware head, a planted text-only head and a planted visual sink token.

Language-model residual (d_model 768, so that phi = |x_d| / RMS(x) can exceed VAR's tau = 20 on both sink dims:
phi <= sqrt(d_model / (1 + (x_d2 / x_d1)^2)), 24.8 here with x_d2 = x_d1 / 2):
  dim 0 TEXT   1.0 in every text-token embedding (0 exactly at image tokens: the projector never writes it)
  dim 1 IMG    2.0 at every image token (projector linear_2 bias)
  dims 2, 3    SINK: massive 100 / 50 at one image patch only (the visual sink), ~0 elsewhere
  dims 4-35    V_VIS: written only by the vision-aware head (0, 0)
  dims 36-67   V_TXT: written only by the text-only head (0, 1)
  dims 68-767  free: seeded random content; random heads and MLPs read and write only these
Planted heads put query and key on head coordinates 14 / 15 (RoPE pairs 14-30 and 15-31, frequencies
3.2e-4 and 1.8e-4 rad per position), so their scores are content-based.
- (0, 0) vision-aware: text queries attend to keys with IMG (image tokens; the sink's IMG is diluted by its
  massive RMS, so it gets little); its output at text positions is an average of image-token values.
- (0, 1) text-only: text queries attend to keys with TEXT, score ~200 higher than image keys (whose score is
  exactly 0), so image tokens get exactly zero weight; in layer 0 the text residuals do not depend on the image.
- (2, 2) visual-sink head: text queries attend to the SINK dims, i.e. to the sink patch.
Vision tower: dimension 0 of the tower's residual is 0 for every patch except the sink patch, whose position
embedding holds 10 there; the tower never writes dimension 0; projector unit 0 fires only on it (bias -8) and
writes the SINK dims.
"""

from __future__ import annotations

import torch
from _common import generator, random_block, unit_rows

D_MODEL, LAYERS, HEADS, KV_HEADS, D_HEAD, D_MLP = 768, 3, 4, 2, 32, 64
VISION_HIDDEN, VISION_LAYERS, VISION_HEADS = 32, 2, 2
IMAGE_SIZE, PATCH = 32, 8
GRID = IMAGE_SIZE // PATCH
TEXT, IMG, SINK_DIMS = 0, 1, (2, 3)
V_VIS, V_TXT, FREE = 4, 36, 68
SINK_PATCH = (1, 2)  # (row, col)
SINK_VALUES = (100.0, 50.0)
IMG_VALUE = 2.0
VISION_MARK = 10.0
VISION_AWARE, TEXT_ONLY, SINK_HEAD = (0, 0), (0, 1), (2, 2)
IMG_COORD, TEXT_COORD = 14, 15
PROMPT = "What is in the picture?"


def _random_layers(model, gen):
    """Seeded random weights for every layer that read and write only the free dimensions."""
    for layer in model.model.language_model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for proj, std in ((attn.q_proj, 0.06), (attn.k_proj, 0.06), (attn.v_proj, 0.06), (mlp.gate_proj, 0.05),
                          (mlp.up_proj, 0.05)):
            proj.weight.copy_(random_block(*proj.weight.shape, std, gen))
            proj.weight[:, :FREE] = 0.0
        for proj, std in ((attn.o_proj, 0.03), (mlp.down_proj, 0.03)):
            proj.weight.copy_(random_block(*proj.weight.shape, std, gen))
            proj.weight[:FREE] = 0.0
        for coord in (IMG_COORD, TEXT_COORD):
            for head in range(HEADS):
                attn.q_proj.weight[[head * D_HEAD + coord, head * D_HEAD + coord + D_HEAD // 2]] = 0.0
            for kv in range(KV_HEADS):
                attn.k_proj.weight[[kv * D_HEAD + coord, kv * D_HEAD + coord + D_HEAD // 2]] = 0.0


def _plant_language(model):
    layers = model.model.language_model.layers
    attn0, attn2 = layers[0].self_attn, layers[2].self_attn
    for head in (VISION_AWARE[1], TEXT_ONLY[1]):
        attn0.q_proj.weight[head * D_HEAD:(head + 1) * D_HEAD] = 0.0
    attn0.q_proj.weight[VISION_AWARE[1] * D_HEAD + IMG_COORD, TEXT] = 2.1
    attn0.k_proj.weight[0 * D_HEAD + IMG_COORD, IMG] = 2.1
    attn0.q_proj.weight[TEXT_ONLY[1] * D_HEAD + TEXT_COORD, TEXT] = 12.0
    attn0.k_proj.weight[0 * D_HEAD + TEXT_COORD, TEXT] = 12.0
    # Both heads share kv head 0 (GQA), hence the same values; each writes its own subspace.
    attn0.o_proj.weight[:, VISION_AWARE[1] * D_HEAD:(VISION_AWARE[1] + 1) * D_HEAD] = 0.0
    attn0.o_proj.weight[:, TEXT_ONLY[1] * D_HEAD:(TEXT_ONLY[1] + 1) * D_HEAD] = 0.0
    eye = torch.eye(D_HEAD)
    attn0.o_proj.weight[V_VIS:V_VIS + D_HEAD, VISION_AWARE[1] * D_HEAD:(VISION_AWARE[1] + 1) * D_HEAD] = eye
    attn0.o_proj.weight[V_TXT:V_TXT + D_HEAD, TEXT_ONLY[1] * D_HEAD:(TEXT_ONLY[1] + 1) * D_HEAD] = eye
    head, kv = SINK_HEAD[1], SINK_HEAD[1] // (HEADS // KV_HEADS)
    attn2.q_proj.weight[head * D_HEAD:(head + 1) * D_HEAD] = 0.0
    attn2.q_proj.weight[head * D_HEAD + TEXT_COORD, TEXT] = 1.2
    attn2.k_proj.weight[kv * D_HEAD + TEXT_COORD, SINK_DIMS[0]] = 1.2


def _plant_vision(model, gen):
    tower = model.model.vision_tower
    embeddings = tower.embeddings
    for parameter in tower.parameters():
        parameter.copy_(torch.randn(parameter.shape, generator=gen) * 0.1 if parameter.dim() > 1 else torch.zeros_like(parameter))
    for module in tower.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
    embeddings.class_embedding.copy_(torch.randn(VISION_HIDDEN, generator=gen) * 0.3)
    embeddings.position_embedding.weight.copy_(random_block(GRID * GRID + 1, VISION_HIDDEN, 0.3, gen))
    embeddings.patch_embedding.weight[0] = 0.0
    embeddings.class_embedding[0] = 0.0
    embeddings.position_embedding.weight[:, 0] = 0.0
    embeddings.position_embedding.weight[1 + SINK_PATCH[0] * GRID + SINK_PATCH[1], 0] = VISION_MARK
    for layer in tower.encoder.layers:  # the tower never writes its dimension 0
        layer.self_attn.out_proj.weight[0] = 0.0
        layer.mlp.fc2.weight[0] = 0.0
    projector = model.model.multi_modal_projector
    projector.linear_1.weight.copy_(random_block(D_MODEL, VISION_HIDDEN, 0.3, gen))
    projector.linear_1.bias.zero_()
    projector.linear_1.weight[:, 0] = 0.0
    projector.linear_1.weight[0] = 0.0
    projector.linear_1.weight[0, 0], projector.linear_1.bias[0] = 4.0, -8.0
    projector.linear_2.weight.copy_(random_block(D_MODEL, D_MODEL, 0.02, gen))
    projector.linear_2.bias.zero_()
    projector.linear_2.weight[:FREE] = 0.0
    projector.linear_2.weight[:, 0] = 0.0
    projector.linear_2.bias[IMG] = IMG_VALUE
    return projector


def build():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from workbench.models.tiny import tiny_llava

    processor = tiny_llava().processor  # byte-level tokenizer, chat template, 32 px CLIP preprocessing
    tokenizer = processor.tokenizer
    vision = CLIPVisionConfig(hidden_size=VISION_HIDDEN, intermediate_size=64, num_hidden_layers=VISION_LAYERS,
                              num_attention_heads=VISION_HEADS, image_size=IMAGE_SIZE, patch_size=PATCH,
                              projection_dim=VISION_HIDDEN)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=D_MODEL, intermediate_size=D_MLP,
                       num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                       head_dim=D_HEAD, max_position_embeddings=512, rms_norm_eps=1e-6,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", image_seq_length=GRID * GRID)
    model = LlavaForConditionalGeneration(config).eval()
    gen = generator(3)
    with torch.no_grad():
        embed = torch.zeros(len(tokenizer), D_MODEL)
        embed[:, TEXT] = 1.0
        embed[:, FREE:] = unit_rows(len(tokenizer), D_MODEL - FREE, 8.0, gen)
        model.model.language_model.embed_tokens.weight.copy_(embed)
        model.lm_head.weight.copy_(random_block(len(tokenizer), D_MODEL, 0.05, gen))
        _random_layers(model, gen)
        _plant_language(model)
        _plant_vision(model, gen)
        projector = model.model.multi_modal_projector
        projector.linear_2.weight[SINK_DIMS[0], 0] = SINK_VALUES[0] / 14.0
        projector.linear_2.weight[SINK_DIMS[1], 0] = SINK_VALUES[1] / 14.0
    return model, processor, ground_truth()


def ground_truth() -> dict:
    sink_index = SINK_PATCH[0] * GRID + SINK_PATCH[1]
    return {
        "model": "planted-llava", "architecture": "LlavaForConditionalGeneration",
        "builder": "data/models/planted/build.py", "layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS,
        "d_model": D_MODEL, "d_head": D_HEAD, "image_size": IMAGE_SIZE, "patch_size": PATCH,
        "image_tokens": GRID * GRID, "patch_grid": [GRID, GRID],
        "vision_aware_head": {
            "layer": VISION_AWARE[0], "head": VISION_AWARE[1], "writes": list(range(V_VIS, V_VIS + D_HEAD)),
            "min_image_mass": 0.9, "min_non_sink_share": 0.9,
            "meaning": "every text query after the image puts >= 0.9 of its attention on image tokens, >= 0.9 of "
                       "that on non-sink patches; its output at text positions changes with the image"},
        "text_only_head": {
            "layer": TEXT_ONLY[0], "head": TEXT_ONLY[1], "writes": list(range(V_TXT, V_TXT + D_HEAD)),
            "image_mass": 0.0, "max_output_change": 1e-5,
            "meaning": "text queries put exactly 0 attention on image tokens; for one prompt and any two images its "
                       "output at every text position is the same (max abs difference <= 1e-5)"},
        "visual_sink": {
            "patch": list(SINK_PATCH), "image_token_index": sink_index, "dims": list(SINK_DIMS),
            "values": list(SINK_VALUES), "min_phi": 20.0, "max_phi_other_tokens": 1e-3,
            "max_any_dim_phi_other_tokens": 10.0, "min_phi_each_dim": 10.0, "layers": list(range(LAYERS)),
            "meaning": "the hidden state entering every language-model layer has phi(x) = max_{d in dims} "
                       "|x_d| / RMS(x) >= 20 at the sink patch (VAR's tau; each of the two dims alone >= 10) and "
                       "~0 at every other token, whose largest |x_d| / RMS(x) over all dims stays < 10; for any "
                       "image (the sink comes from the patch position, not its content)"},
        "visual_sink_head": {
            "layer": SINK_HEAD[0], "head": SINK_HEAD[1], "min_mass": 0.9,
            "meaning": "text queries after the image put >= 0.9 of their attention on the sink patch"},
        "reserved_dims": {"text": TEXT, "img": IMG, "sink": list(SINK_DIMS), "v_vis": [V_VIS, V_VIS + D_HEAD - 1],
                          "v_txt": [V_TXT, V_TXT + D_HEAD - 1], "free_from": FREE},
        "probe": {"prompt": PROMPT, "images": "any two 32 x 32 images; tests use two scenes of data/scenes "
                                             "(resized by the processor)"},
    }
