"""Per head, the augmented bilinear form Omega of Franco & Crovella 2024 and its SVD, cached per model and basis.

score(i, j) = x~_i Omega x~_j^T with x~ = [x, 1], the softmax scaling folded in so scores are the model's
pre-softmax logits. The scores do not depend on the basis; Omega, its singular values and vectors, the kept
components and the upstream shares do (Omega_reference = M Omega_raw M^T with M = [[diag(gain), 0], [bias, 1]]
restricted to centred vectors, not a rescaling). Two bases, by name (BASES):

  "reference"  the released code's: TransformerLens's default weight processing (fold_ln,
               center_writing_weights, fold_value_biases). x is the norm's normalised input before its gain
               and bias (ln1.hook_normalized: (r - mean) / std, or r / rms); the gain and bias are folded
               into W_Q' = diag(gain) W_Q (columns centred for LayerNorm), b_Q' = b_Q + bias W_Q (same for K);
               the folded value bias b_V + bias W_V moves into the output bias, so an upstream head's output
               excludes it (hook_z @ W_O); centring the writing weights changes no score or share (the
               covectors of a LayerNorm basis are centred).
  "raw"        x is the norm's output, gain and bias included (the actual input of W_Q and W_K), with the
               model's own W_Q, b_Q; a head's output includes b_V W_O.

With Wq~ = [W_Q; b_Q] and Wk~ = [W_K; b_K] ([d_model + 1, d_head]) in the chosen basis:

    absolute positions (GPT-2):  Omega = c * Wq~ Wk~^T
    RoPE (Llama family):         Omega(delta) = c * Wq~ R(delta) Wk~^T,  delta = j - i (key minus query)

where R(delta) rotates each frequency pair (f, f + d_head / 2) by delta * theta_f (transformers' rotate_half
layout) and c = softmax scaling * rope attention_scaling^2. RoPE acts after the projections, so folding the
RMSNorm gain into W_Q and W_K (no centring: RMSNorm does not centre) is exact for every offset. With QR factors
Wq~ = Qq Rq, Wk~ = Qk Rk, the SVD of Omega(delta) is that of the d_head x d_head core c * Rq R(delta) Rk^T,
lifted by Qq and Qk: one small SVD per (head, offset), cached. Supported: GPT-2 (fused c_attn), and
q_proj/k_proj models (Llama, Mistral, Qwen2, LLaVA's language model) with full-width rotate_half RoPE;
anything else raises an InputError.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from workbench.errors import InputError
from workbench.threads import torch_threads

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
SUPPORTED = "GPT-2 and q_proj/k_proj decoders (Llama, Mistral, Qwen2, LLaVA) with full-width rotate_half RoPE"
BASES = ("reference", "raw")  # see the module docstring; "reference" is the default everywhere


@dataclass
class Norm:
    """The layer's pre-attention norm: x = gain * (r - mean) / scale + bias (mean = 0 for RMSNorm)."""

    kind: str  # "layer" | "rms"
    gain: torch.Tensor
    bias: torch.Tensor
    eps: float

    def scale(self, residual: torch.Tensor) -> torch.Tensor:
        """[..., 1] the per-position divisor (std or rms, eps included)."""
        if self.kind == "rms":
            return (residual.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        return (residual.var(-1, unbiased=False, keepdim=True) + self.eps).sqrt()

    def __call__(self, residual: torch.Tensor) -> torch.Tensor:
        centred = residual - residual.mean(-1, keepdim=True) if self.kind == "layer" else residual
        return self.gain * centred / self.scale(residual) + self.bias

    def linear_part(self, vector: torch.Tensor) -> torch.Tensor:
        """The covector w' with N(c) . w = c . w' for any component c (for a fixed scale), as gain * w,
        centred for LayerNorm; divide by the position's scale separately."""
        weighted = self.gain * vector
        return weighted - weighted.mean(-1, keepdim=True) if self.kind == "layer" else weighted

    def normalised_only(self) -> Norm:
        """The same norm without its gain and bias (TransformerLens's ln.hook_normalized)."""
        return Norm(self.kind, torch.ones_like(self.gain), torch.zeros_like(self.bias), self.eps)

    def fold(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W', b') with normalised_only(r) @ W' + b' == self(r) @ W + b, as TransformerLens's fold_ln does:
        W' = diag(gain) W, columns centred for LayerNorm (its output is centred, so nothing changes), and
        b' = b + bias W. weight [head, d_model, d_head], bias [head, d_head]."""
        folded = self.gain[None, :, None] * weight
        if self.kind == "layer":
            folded = folded - folded.mean(1, keepdim=True)
        return folded, bias + torch.einsum("d,hde->he", self.bias, weight)


@dataclass
class HeadForm:
    q_basis: torch.Tensor  # Qq [d_model + 1, d_head] (float64)
    q_core: torch.Tensor  # Rq [d_head, d_head]
    k_basis: torch.Tensor
    k_core: torch.Tensor
    scale: float
    inv_freq: torch.Tensor | None  # [d_head / 2] for RoPE, None for absolute positions
    _svds: dict = field(default_factory=dict)

    def rotation(self, offset: int) -> torch.Tensor:
        d_head = self.q_core.shape[0]
        if self.inv_freq is None:
            return torch.eye(d_head, dtype=torch.float64)
        half = d_head // 2
        angle = offset * self.inv_freq.double()
        cos, sin = angle.cos(), angle.sin()
        rotation = torch.zeros(d_head, d_head, dtype=torch.float64)
        index = torch.arange(half)
        rotation[index, index] = cos
        rotation[index + half, index + half] = cos
        rotation[index, index + half] = -sin
        rotation[index + half, index] = sin
        return rotation

    def core(self, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SVD (Uc, S, Vc) of the d_head x d_head core of Omega(offset): U = q_basis Uc, V = k_basis Vc."""
        key = offset if self.inv_freq is not None else 0
        if key not in self._svds:
            core = self.scale * self.q_core @ self.rotation(key) @ self.k_core.T
            with torch_threads(1):  # small LAPACK calls: see workbench.threads
                u, s, vt = torch.linalg.svd(core)
            self._svds[key] = (u, s, vt.T)
        return self._svds[key]

    def svd(self, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U [d_model + 1, d_head], S [d_head], V [d_model + 1, d_head]) of Omega(offset); offset ignored
        without RoPE."""
        u, s, v = self.core(offset)
        return self.q_basis @ u, s, self.k_basis @ v

    def omega(self, offset: int = 0) -> torch.Tensor:
        u, s, v = self.svd(offset)
        return (u * s) @ v.T


def _factor(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """QR of the augmented maps x~ -> x W + b of several heads: weight [head, d_model, d_head], bias [head, d_head]
    -> Q [head, d_model + 1, d_head], R [head, d_head, d_head]."""
    with torch_threads(1):  # small LAPACK calls: see workbench.threads
        return torch.linalg.qr(torch.cat([weight, bias[:, None]], 1).double())


def _projections(layer_module, n_heads: int, n_kv_heads: int, d_model: int):
    """Per query head W_q [d_model, d_head], b_q; per kv head W_k, b_k, W_v, b_v (as x @ W + b)."""
    modules = dict(layer_module.named_modules())
    fused = modules.get("attn.c_attn")
    if fused is not None and type(fused).__name__ == "Conv1D":  # GPT-2: x @ weight + bias, [q | k | v]
        weight, bias = fused.weight.detach(), fused.bias.detach()
        w_q, w_k, w_v = weight[:, :d_model], weight[:, d_model:2 * d_model], weight[:, 2 * d_model:]
        b_q, b_k, b_v = bias[:d_model], bias[d_model:2 * d_model], bias[2 * d_model:]
    else:
        attention = next((modules[name] for name in ("self_attn", "attn", "attention") if name in modules), None)
        if attention is None or not hasattr(attention, "q_proj") or not hasattr(attention, "k_proj"):
            raise InputError(f"circuit tracing does not know the attention of {type(layer_module).__name__}; "
                             f"supported: {SUPPORTED}")
        w_q, w_k = attention.q_proj.weight.detach().T, attention.k_proj.weight.detach().T
        b_q = attention.q_proj.bias.detach() if attention.q_proj.bias is not None else torch.zeros(w_q.shape[1])
        b_k = attention.k_proj.bias.detach() if attention.k_proj.bias is not None else torch.zeros(w_k.shape[1])
        v_proj = getattr(attention, "v_proj", None)
        if v_proj is None:
            raise InputError(f"circuit tracing finds no v_proj in {type(layer_module).__name__}; supported: {SUPPORTED}")
        w_v = v_proj.weight.detach().T
        b_v = v_proj.bias.detach() if v_proj.bias is not None else torch.zeros(w_v.shape[1])
    d_head = w_q.shape[1] // n_heads
    split = lambda w: w.reshape(w.shape[0], -1, d_head).transpose(0, 1) if w.dim() == 2 else w.reshape(-1, d_head)
    return (split(w_q.float()), split(b_q.float()), split(w_k.float()), split(b_k.float()), split(w_v.float()),
            split(b_v.float()))


def _norm(layer_module) -> Norm:
    modules = dict(layer_module.named_modules())
    module = next((modules[name] for name in ("input_layernorm", "ln_1") if name in modules), None)
    if module is None:
        raise InputError(f"circuit tracing finds no pre-attention norm in {type(layer_module).__name__}; "
                         f"supported: {SUPPORTED}")
    gain = module.weight.detach().float()
    if isinstance(module, torch.nn.LayerNorm):
        bias = module.bias.detach().float() if module.bias is not None else torch.zeros_like(gain)
        return Norm("layer", gain, bias, float(module.eps))
    eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps", None)
    if eps is None or type(module).__name__.lower().find("rms") < 0:
        raise InputError(f"circuit tracing does not know the norm {type(module).__name__}; supported: {SUPPORTED}")
    if "Gemma" in type(module).__name__:
        raise InputError(f"circuit tracing does not support {type(module).__name__} (1 + gain); supported: {SUPPORTED}")
    return Norm("rms", gain, torch.zeros_like(gain), float(eps))


def _rotary(model, d_head: int):
    """(inv_freq, attention_scaling) of the language model's rotary embedding, or None without RoPE."""
    text_config = getattr(model.config, "text_config", None) or model.config
    if (getattr(text_config, "rope_parameters", None) or {}).get("mrope_section"):
        raise InputError("this model uses M-RoPE (Qwen2-VL family: separate temporal / height / width rotary "
                         "positions, image tokens on a 2D grid, text positions not equal to token positions), which "
                         f"circuit tracing does not support: its forms assume one position per token; supported: "
                         f"{SUPPORTED}")
    for name, module in model.named_modules():
        if type(module).__name__.endswith("RotaryEmbedding") and "vision" not in name and "visual" not in name:
            inv_freq = module.inv_freq.detach().float().cpu()
            if 2 * len(inv_freq) != d_head:
                raise InputError(f"this model rotates {2 * len(inv_freq)} of {d_head} head dimensions (partial "
                                 f"RoPE), which circuit tracing does not support; supported: {SUPPORTED}")
            return inv_freq, float(getattr(module, "attention_scaling", 1.0))
    return None


class OmegaForms:
    """Lazily built HeadForms of one model in one basis (see omega_forms)."""

    def __init__(self, model, layout, basis: str = "reference"):
        self.model, self.layout, self.basis = model, layout, basis
        stack = layout.stacks["text"]
        self.stack = stack
        self._forms: dict[tuple[int, int], HeadForm] = {}
        self._norms: dict[int, Norm] = {}
        self._value_biases: dict[int, torch.Tensor] = {}

    def model_norm(self, layer: int) -> Norm:
        """The layer's pre-attention norm as the model has it (gain and bias included)."""
        if layer not in self._norms:
            self._norms[layer] = _norm(self.stack.layers[layer])
        return self._norms[layer]

    def norm(self, layer: int) -> Norm:
        """The map from the residual to x in this basis (x~ = [norm(r), 1])."""
        norm = self.model_norm(layer)
        return norm.normalised_only() if self.basis == "reference" else norm

    def value_bias(self, layer: int) -> torch.Tensor:
        """The value bias per query head [head, d_head] that this basis moves out of the heads' outputs: after
        fold_ln it is b_V + norm bias W_V, and fold_value_biases moves it into b_O (zeros for raw)."""
        if layer not in self._value_biases:
            stack = self.stack
            _, _, _, _, w_v, b_v = _projections(stack.layers[layer], stack.n_heads, stack.n_kv_heads, stack.d_model)
            b_v = self.model_norm(layer).fold(w_v, b_v)[1].repeat_interleave(stack.n_heads // stack.n_kv_heads, 0)
            self._value_biases[layer] = b_v if self.basis == "reference" else torch.zeros_like(b_v)
        return self._value_biases[layer]

    def head(self, layer: int, head: int) -> HeadForm:
        if (layer, head) not in self._forms:
            stack = self.stack
            w_q, b_q, w_k, b_k, _, _ = _projections(stack.layers[layer], stack.n_heads, stack.n_kv_heads, stack.d_model)
            if self.basis == "reference":
                norm = self.model_norm(layer)
                (w_q, b_q), (w_k, b_k) = norm.fold(w_q, b_q), norm.fold(w_k, b_k)
            d_head = w_q.shape[-1]
            rotary = _rotary(self.model, d_head)
            attention = next(m for m in stack.layers[layer].modules() if hasattr(m, "scaling"))
            scale = float(attention.scaling) * (rotary[1] ** 2 if rotary else 1.0)
            group = stack.n_heads // stack.n_kv_heads
            q_basis, q_core = _factor(w_q, b_q)
            k_basis, k_core = _factor(w_k, b_k)  # per kv head, shared by its GQA group
            for h in range(stack.n_heads):
                self._forms[(layer, h)] = HeadForm(q_basis[h], q_core[h], k_basis[h // group], k_core[h // group],
                                                   scale, rotary[0] if rotary else None)
        return self._forms[(layer, head)]


def check_basis(basis: str) -> str:
    if basis not in BASES:
        raise InputError(f"--basis must be one of {', '.join(BASES)} (got {basis!r}): 'reference' is the released "
                         f"code's TransformerLens-folded basis, 'raw' the norm's output with the model's W_Q")
    return basis


def omega_forms(loaded, basis: str = "reference") -> OmegaForms:
    """The (cached) Omega factorisations of a LoadedModel or transformers model in `basis` (BASES)."""
    from workbench.capture.layout import discover_layout

    check_basis(basis)
    model = getattr(loaded, "model", loaded)
    per_basis = _CACHE.setdefault(model, {})
    if basis not in per_basis:
        per_basis[basis] = OmegaForms(model, discover_layout(model), basis)
    return per_basis[basis]
