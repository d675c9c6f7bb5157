"""`planted-induction`: a 2-layer GPT-2 whose previous-token head K-composes with an induction head.

Vocabulary: <|bos|> <|eos|> <|pad|> <|unk|> and the 26 letters a-z (prompts are letters separated by spaces).
Residual layout (d_model = 160, every block in the standard basis):
  TOK   0-29    token identity, one-hot (embedding wte)
  PREV  30-59   identity of the PREVIOUS token, written only by the previous-token head (0, 3)
  OUT   60-89   identity of the predicted token, written only by the induction head (1, 2); read by lm_head
  POS   90-121  position: for frequency f (omega_f = pi / 2**(f+1), f = 0..7), dims 90+4f.. = (cos, sin, -cos, -sin)
  DIST  122-137 a bag-of-tokens average, written only by the distractor head (0, 1); nothing reads it
  B_TOK 138     ballast -1 in every token embedding; B_PREV 139: ballast written by (0, 3)
The ballasts keep the residual mean at exactly zero, and every block has a constant norm, so LayerNorm (weight 1,
bias 0) is a per-position scalar: the subspaces are the same in the raw and in the layer-normed residual.
MLPs, all biases and heads (0, 0), (0, 2), (1, 0), (1, 1), (1, 3) are zero.

Circuit: (0, 3) attends from i to i-1 (QK on POS) and copies TOK of i-1 into PREV (OV). (1, 2) reads TOK at
the query and PREV at the key (QK: W_Q W_K^T = sum_t k_t e_TOK[t] e_PREV[t]^T, distinct k_t so the SVD is unique),
so it attends to the token after an earlier occurrence of the current token, and copies that token's TOK into
OUT (OV), which lm_head turns into the prediction. Its key side reads exactly what (0, 3) writes: the only
K-composition edge (0, 3) -> (1, 2). Its query side reads TOK (from the embedding, no head), its value side TOK
at the key (no head): no Q- or V-composition edge. A fallback component (query B_TOK, key TOK[<|bos|>]) sends
rows without an earlier occurrence to position 0.
"""

from __future__ import annotations

import math

import torch
from _common import generator

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"]
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
VOCAB = SPECIALS + LETTERS
V = len(VOCAB)
D_MODEL, HEADS, D_HEAD, N_POS, FREQS = 160, 4, 40, 128, 8
TOK, PREV, OUT, POS, DIST = 0, 30, 60, 90, 122
B_TOK, B_PREV = 138, 139
PREV_HEAD, DISTRACTOR, INDUCTION = (0, 3), (0, 1), (1, 2)
A_TOKEN, A_POS = 1.0, 0.5
KAPPA_POS = 2.76  # previous-token QK weight
KAPPA_KEY, KAPPA_QUERY = 2.2, 2.2  # induction QK weights (query weight scaled by 1 + 0.01 t)
FALLBACK = 1.5  # induction fallback weights (query on B_TOK, key on TOK[<|bos|>])
GAMMA = 3.0  # lm_head weight on OUT


def omegas() -> list[float]:
    return [math.pi / 2 ** (f + 1) for f in range(FREQS)]


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(SPECIALS)
    backend.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", 0)])
    from tokenizers import decoders

    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>", unk_token="<|unk|>")


def _ln_scale(norm_sq: float) -> float:
    return math.sqrt(D_MODEL / norm_sq)


def build():
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tokenizer()
    config = GPT2Config(vocab_size=V, n_positions=N_POS, n_embd=D_MODEL, n_layer=2, n_head=HEADS, n_inner=16,
                        bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
                        layer_norm_epsilon=1e-5)
    model = GPT2LMHeadModel(config).eval()
    gen = generator(2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
        wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
        for t in range(V):
            wte[t, TOK + t], wte[t, B_TOK] = A_TOKEN, -A_TOKEN
        for i in range(N_POS):
            for f, omega in enumerate(omegas()):
                c, s = math.cos(omega * i), math.sin(omega * i)
                wpe[i, POS + 4 * f:POS + 4 * f + 4] = torch.tensor([c, s, -c, -s]) * A_POS
        s0 = _ln_scale(2 * A_TOKEN ** 2 + 2 * FREQS * A_POS ** 2)
        layer0, layer1 = model.transformer.h
        # (0, 3) previous-token head: q_i = rotation of pos_i by -omega, k_j = pos_j  ->  score ~ sum_f cos(omega_f (j - i + 1))
        w = layer0.attn.c_attn.weight  # [d_model, 3 d_model] = [W_Q | W_K | W_V]
        q0, k0, v0 = 0 * D_MODEL + PREV_HEAD[1] * D_HEAD, 1 * D_MODEL + PREV_HEAD[1] * D_HEAD, 2 * D_MODEL + PREV_HEAD[1] * D_HEAD
        for f, omega in enumerate(omegas()):
            cos_dim, sin_dim = POS + 4 * f, POS + 4 * f + 1
            w[cos_dim, q0 + 2 * f], w[sin_dim, q0 + 2 * f] = KAPPA_POS * math.cos(omega), KAPPA_POS * math.sin(omega)
            w[cos_dim, q0 + 2 * f + 1], w[sin_dim, q0 + 2 * f + 1] = -KAPPA_POS * math.sin(omega), KAPPA_POS * math.cos(omega)
            w[cos_dim, k0 + 2 * f], w[sin_dim, k0 + 2 * f + 1] = KAPPA_POS, KAPPA_POS
        proj0 = layer0.attn.c_proj.weight  # [head * d_head, d_model]
        for t in range(V):
            w[TOK + t, v0 + t] = 1.0
            proj0[PREV_HEAD[1] * D_HEAD + t, PREV + t] = 1.0 / s0
        w[B_TOK, v0 + V] = 1.0
        proj0[PREV_HEAD[1] * D_HEAD + V, B_PREV] = 1.0 / s0
        # (0, 1) distractor: zero QK (uniform over visible keys), OV = a zero-mean random map TOK -> DIST
        mix = torch.randn(V, 16, generator=gen)
        mix = (mix - mix.mean(1, keepdim=True)) * 0.3 / s0
        vd = 2 * D_MODEL + DISTRACTOR[1] * D_HEAD
        for t in range(V):
            w[TOK + t, vd + t] = 1.0
        proj0[DISTRACTOR[1] * D_HEAD:DISTRACTOR[1] * D_HEAD + V, DIST:DIST + 16] = mix
        # (1, 2) induction head
        s1 = _ln_scale(2 * A_TOKEN ** 2 + 2 * FREQS * A_POS ** 2 + 2 * A_TOKEN ** 2)
        w1, proj1 = layer1.attn.c_attn.weight, layer1.attn.c_proj.weight
        q1, k1, v1 = 0 * D_MODEL + INDUCTION[1] * D_HEAD, 1 * D_MODEL + INDUCTION[1] * D_HEAD, 2 * D_MODEL + INDUCTION[1] * D_HEAD
        for t in range(len(SPECIALS), V):
            w1[TOK + t, q1 + t] = KAPPA_QUERY * (1 + 0.01 * t)
            w1[PREV + t, k1 + t] = KAPPA_KEY
            w1[TOK + t, v1 + t] = 1.0
            proj1[INDUCTION[1] * D_HEAD + t, OUT + t] = 1.0 / s1
        w1[B_TOK, q1 + 0] = -FALLBACK
        w1[TOK + 0, k1 + 0] = FALLBACK
        for t in range(len(SPECIALS), V):
            model.lm_head.weight[t, OUT + t] = GAMMA
    return model, tok, ground_truth(model)


def _omega_components(model, layer: int, head: int, keep: float = 1e-6) -> list[dict]:
    """SVD of Omega = W_Q^h W_K^h^T (biases are zero, so the augmented row/column is zero)."""
    w = model.transformer.h[layer].attn.c_attn.weight.detach().double()
    w_q = w[:, head * D_HEAD:(head + 1) * D_HEAD]
    w_k = w[:, D_MODEL + head * D_HEAD:D_MODEL + (head + 1) * D_HEAD]
    u, s, vh = torch.linalg.svd(w_q @ w_k.T)
    out = []
    for k in range(int((s > keep).sum())):
        ui, vi = int(u[:, k].abs().argmax()), int(vh[k].abs().argmax())
        out.append({"singular_value": round(float(s[k]), 6), "u_dim": ui, "u_weight": round(float(u[ui, k].abs()), 6),
                    "v_dim": vi, "v_weight": round(float(vh[k, vi].abs()), 6)})
    return out


def probe_sequences(n: int = 8, period: int = 12, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(f"planted-induction:{seed}")
    sequences = []
    for _ in range(n):
        letters = rng.sample(LETTERS, period)
        sequences.append(" ".join(letters + letters))
    return sequences


def ground_truth(model) -> dict:
    block = lambda start, size: list(range(start, start + size))
    return {
        "model": "planted-induction", "architecture": "GPT2LMHeadModel", "builder": "data/models/planted/build.py",
        "layers": 2, "heads": HEADS, "d_model": D_MODEL, "d_head": D_HEAD, "vocab": VOCAB,
        "prompt_format": "letters a-z separated by spaces; the tokenizer prepends <|bos|>",
        "heads_planted": {
            "previous_token": {"layer": PREV_HEAD[0], "head": PREV_HEAD[1], "min_mass": 0.9,
                               "meaning": "query row i >= 1 puts >= 0.9 of its attention on key i - 1"},
            "induction": {"layer": INDUCTION[0], "head": INDUCTION[1], "min_mass": 0.9,
                          "meaning": "query row i whose token occurred earlier at p puts >= 0.9 on key p + 1; a "
                                     "row without an earlier occurrence puts >= 0.9 on position 0"},
            "distractor": {"layer": DISTRACTOR[0], "head": DISTRACTOR[1],
                           "meaning": "uniform attention, writes a bag-of-tokens vector into DIST, which no head reads"},
            "zero_heads": [[0, 0], [0, 2], [1, 0], [1, 1], [1, 3]],
        },
        "circuit": {
            "edges": [{"upstream": list(PREV_HEAD), "downstream": list(INDUCTION), "composition": "K",
                       "subspace": "PREV"}],
            "meaning": "the only head-to-head edge: (1, 2)'s key side reads PREV, which only (0, 3) writes. No Q- or "
                       "V-composition edge (query and value read TOK, written by the embedding only); (0, 1) writes "
                       "DIST, which (1, 2) does not read.",
        },
        "subspaces": {
            "TOK": block(TOK, V), "PREV": block(PREV, V), "OUT": block(OUT, V), "POS": block(POS, 4 * FREQS),
            "DIST": block(DIST, 16), "B_TOK": [B_TOK], "B_PREV": [B_PREV],
            "basis": "standard basis of the residual stream; identical in the layer-normed residual (LayerNorm "
                     "weight 1, bias 0, residual mean exactly 0 at layers 0 and 1, so LN is a per-position scalar)",
            "token_slot": "token id t sits at TOK[t] = t, PREV[t] = 30 + t, OUT[t] = 60 + t",
        },
        "omega": {
            "definition": "Omega = W_Q^h W_K^h^T from c_attn (Conv1D, x @ W), biases zero; the score is "
                          "x_i Omega x_j^T / sqrt(d_head) on the layer-normed residual x",
            "induction": {"layer": INDUCTION[0], "head": INDUCTION[1],
                          "components": _omega_components(model, *INDUCTION),
                          "meaning": "rank 27: 26 components u = e_TOK[t], v = e_PREV[t] (singular value "
                                     "2.2 * 2.2 * (1 + 0.01 t), t = 4..29, all distinct) and the fallback u = e_B_TOK, "
                                     "v = e_TOK[<|bos|>] (2.25). A firing on a repeated token t uses exactly the "
                                     "component of t."},
            "previous_token": {"layer": PREV_HEAD[0], "head": PREV_HEAD[1], "rank": 2 * FREQS,
                               "meaning": "a block rotation on the (cos, sin) dims of POS: 16 equal singular values "
                                          "(basis not unique); u and v lie in POS"},
        },
        "probe": {"sequences": probe_sequences(), "period": 12,
                  "expected": "in the second copy (tokens 14..25 of 25, counting <|bos|> at 0) the next-token "
                              "prediction is the repeated letter with probability >= 0.9"},
    }
