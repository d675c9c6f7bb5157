"""Blind and outlier image tokens of a vision-language model: image tokens that draw excessive attention.

AVC "blind tokens" (Woo et al. 2024, "Don't Miss the Forest for the Trees: Attentional Vision Calibration for Large
Vision Language Models"; reference sangminwoo/AvisC, avisc_utils/avisc_sample.py), in the language model, from the
prompt forward's last query row:
  s_l        = sum_{i in image} mean_h P_{l,h}[last, i]        image attention of layer l
  layers     = the fewest layers, largest s_l first, whose share s_l / sum_l s_l reaches layer_gamma (0.5)
  a[i]       = mean over those layers of mean_h P_{l,h}[last, i]
  blind      = { i : a[i] >= mean(a) + lamb * std(a) }          (lamb 0.99, std with Bessel's correction)

DAMRO "outlier tokens" (Gong et al. 2024, "DAMRO: Dive into the Attention Mechanism of LVLM to Reduce Object
Hallucination"; reference coder-gx/DAMRO, its patched modeling_llava.py), in the vision tower, at the feature layer
f (the layer whose output feeds the projector): the [CLS] row of one attention over ALL heads concatenated,
  c = softmax(q_cls . K^T * C^-0.5)[1:]   (q, k the layer's query / key projections, C = d_model)
  outliers = the top_k patches by c (top_k 10, the reference's LLaVA-1.5 setting).
Also recorded: the L2 norm of every patch's hidden state at f (high-norm tokens of the vision tower).

One observed forward of the prompt (no generation, nothing changed): the last row of each text layer and the [CLS]
row of layer f only, never a full map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from workbench.analyses.result import Result, TokenValues, stored_version
from workbench.errors import BundleError, InputError
from workbench.interventions import Runtime, probabilities

__all__ = ["BlindTokensResult", "analyse", "avc_blind", "avc_layers", "blind_tokens", "damro_outliers"]

METHOD = ("Woo et al. 2024 (AVC blind tokens: last-row image attention of the top-share layers >= mean + lamb std); "
          "Gong et al. 2024 (DAMRO outliers: top-k [CLS] attention of the vision tower's feature layer)")


def avc_layers(layer_image_attention: np.ndarray, layer_gamma: float) -> list[int]:
    """The fewest layers (largest image-attention share first) whose share reaches layer_gamma: the reference counts
    the sorted shares whose running sum stays below layer_gamma, plus one."""
    share = layer_image_attention / max(float(layer_image_attention.sum()), 1e-300)
    order = np.argsort(-share, kind="stable")
    count = int((np.cumsum(share[order]) < layer_gamma).sum()) + 1
    return sorted(int(i) for i in order[:min(count, len(order))])


def avc_blind(attention: np.ndarray, lamb: float) -> np.ndarray:
    """Indices of blind tokens among image tokens: attention [image token] >= mean + lamb * std (Bessel, as torch)."""
    if len(attention) < 2:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(attention >= attention.mean() + lamb * attention.std(ddof=1))


def damro_outliers(cls_attention: np.ndarray, top_k: int) -> np.ndarray:
    """Indices of the top_k patches by [CLS] attention, largest first."""
    return np.argsort(-cls_attention, kind="stable")[:top_k]


@dataclass(frozen=True)
class BlindTokensResult(Result):
    """Blind (LM) and outlier (vision tower) image tokens of one input. Per image token k (text-stack position
    positions[k], patch patches[k]): lm_attention[k], cls_attention[k], norms[k]; layer_image_attention [layer]."""

    analysis: ClassVar[str] = "blind_tokens"
    schema_version: ClassVar[int] = 1

    model: str
    options: dict
    prompt: str
    positions: np.ndarray = field(compare=False, repr=False)
    patches: tuple = ()
    layer_image_attention: np.ndarray = field(default=None, compare=False, repr=False)
    layers: tuple = ()
    lm_attention: np.ndarray = field(default=None, compare=False, repr=False)
    cls_attention: np.ndarray = field(default=None, compare=False, repr=False)
    norms: np.ndarray = field(default=None, compare=False, repr=False)
    blind: tuple = ()  # token positions
    outliers: tuple = ()  # token positions, largest [CLS] attention first

    def token_values(self) -> dict[str, TokenValues]:
        return {"avc_attention": TokenValues(self.positions, self.lm_attention.astype(np.float64),
                                             "last-row image attention (AVC layers)",
                                             "mean over the AVC layers and heads of the last prompt row's attention"),
                "damro_cls_attention": TokenValues(self.positions, self.cls_attention.astype(np.float64),
                                                   "[CLS] attention (vision feature layer)",
                                                   "the vision tower's [CLS] attention to the patch (DAMRO)"),
                "vision_norm": TokenValues(self.positions, self.norms.astype(np.float64), "vision hidden norm",
                                           "L2 norm of the patch's hidden state at the vision feature layer")}

    def token_sets(self) -> dict[str, list[int]]:
        return {"blind_tokens": list(self.blind), "outlier_tokens": list(self.outliers)}

    def to_json(self) -> dict:
        def floats(values):
            return [round(float(v), 8) if math.isfinite(float(v)) else None for v in values]

        return {"analysis": self.analysis, "schema_version": self.schema_version, "method": METHOD,
                "model": self.model, "options": self.options, "prompt": self.prompt,
                "positions": [int(p) for p in self.positions], "patches": [list(p) for p in self.patches],
                "layer_image_attention": floats(self.layer_image_attention), "layers": list(self.layers),
                "lm_attention": floats(self.lm_attention), "cls_attention": floats(self.cls_attention),
                "norms": floats(self.norms), "blind": list(self.blind), "outliers": list(self.outliers)}

    @classmethod
    def from_json(cls, data: dict) -> BlindTokensResult:
        stored_version(data, cls)
        n = len(data["positions"])
        arrays = {k: np.array([np.nan if v is None else v for v in data[k]], dtype=np.float64)
                  for k in ("lm_attention", "cls_attention", "norms", "layer_image_attention")}
        if any(len(arrays[k]) != n for k in ("lm_attention", "cls_attention", "norms")) or len(data["patches"]) != n:
            raise BundleError(f"the blind_tokens result has {n} image tokens but per-token arrays of other lengths")
        return cls(model=str(data.get("model", "?")), options=dict(data.get("options") or {}),
                   prompt=str(data.get("prompt", "")), positions=np.array(data["positions"], dtype=np.int64),
                   patches=tuple(tuple(p) if p is not None else None for p in data["patches"]),
                   layer_image_attention=arrays["layer_image_attention"], layers=tuple(data["layers"]),
                   lm_attention=arrays["lm_attention"], cls_attention=arrays["cls_attention"],
                   norms=arrays["norms"], blind=tuple(int(p) for p in data["blind"]),
                   outliers=tuple(int(p) for p in data["outliers"]))


class ImageAttention(Runtime):
    """Observer of one prompt forward: the last query row of every text layer over the image tokens (mean over
    heads), and the vision tower's [CLS] row (all heads as one) and hidden norms at `feature_layer`."""

    def __init__(self, layout, *, image_positions, feature_layer: int | None):
        super().__init__(layout)
        self.image = torch.tensor(sorted(image_positions), dtype=torch.long)
        self.feature_layer = feature_layer
        self.last_rows: dict[int, torch.Tensor] = {}  # text layer -> [image token]
        self.cls_row: torch.Tensor | None = None  # [vision position]
        self.norms: torch.Tensor | None = None

    def install(self, model) -> list:
        if self.feature_layer is None:
            return []

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if self.norms is None:
                self.norms = hidden[0].detach().float().norm(dim=-1).cpu()

        return [self.layout.stacks["vision"].layers[self.feature_layer].register_forward_hook(hook)]

    def apply(self, module, *, query, key, value, attention_mask, scaling, causal, output):
        stack, layer = self.layout.locate(module)
        if stack == "vision" and layer == self.feature_layer and self.cls_row is None:
            q = query[0].transpose(0, 1).reshape(query.shape[2], -1).float()  # [position, d_model] heads concatenated
            k = key[0].transpose(0, 1).reshape(key.shape[2], -1).float()
            self.cls_row = torch.softmax(q[0] @ k.T * q.shape[-1] ** -0.5, -1).cpu()
        elif stack == "text" and layer not in self.last_rows and query.shape[2] == key.shape[2]:
            mask = attention_mask[..., -1:, :] if attention_mask is not None and attention_mask.ndim == 4 else None
            row = probabilities(query[:1, :, -1:], key[:1], mask, scaling=scaling, causal=causal)[0, :, 0]
            self.last_rows[layer] = row.mean(0)[self.image].double().cpu()
        return output


def feature_layer(model, n_vision_layers: int) -> int:
    """The vision layer whose output the projector reads (LLaVA's vision_feature_layer, e.g. -2 -> n - 2)."""
    chosen = getattr(model.config, "vision_feature_layer", -1)
    if isinstance(chosen, (list, tuple)):
        chosen = chosen[-1]
    # hidden_states[k] is the output of layer k - 1 (hidden_states[0]: the embeddings, which no attention made)
    layer = int(chosen) % (n_vision_layers + 1) - 1
    if layer < 0:
        raise InputError("the projector reads the vision embeddings (vision_feature_layer 0), which no attention "
                         "layer produced; DAMRO's [CLS] attention needs a vision layer")
    return layer


def blind_tokens(tracer, prompt: str, image, *, layer_gamma: float = 0.5, lamb: float = 0.99, top_k: int = 10,
                 system: str | None = None, raw: bool = False) -> BlindTokensResult:
    """AVC blind tokens and DAMRO outlier tokens of one (prompt, image) input, from one observed forward."""
    from workbench.analyses.tracing import as_tracer
    from workbench.capture.generation import forward_inputs
    from workbench.capture.inputs import prepare_input

    check_options(layer_gamma=layer_gamma, lamb=lamb, top_k=top_k)
    tracer = as_tracer(tracer)
    loaded = tracer.loaded
    if loaded.kind != "vlm" or "vision" not in tracer.layout.stacks:
        raise InputError(f"blind and outlier image tokens need a vision-language model; {loaded.name} takes no image")
    if image is None:
        raise InputError("blind and outlier tokens are image tokens: pass --image")
    prepared = prepare_input(loaded, prompt, image, system=system, raw=raw)
    image_tokens = [t for t in prepared.tokens if t.region == "image"]
    vision = tracer.layout.stacks["vision"]
    observer = ImageAttention(tracer.layout, image_positions=[t.i for t in image_tokens],
                              feature_layer=feature_layer(loaded.model, vision.n_layers))
    with torch.inference_mode(), tracer.editing(observer):
        loaded.model(**forward_inputs(loaded, prepared.input_ids, prepared.model_inputs), logits_to_keep=1)
    rows = np.stack([observer.last_rows[l].numpy() for l in sorted(observer.last_rows)])  # [layer, image token]
    per_layer = rows.sum(1)
    layers = avc_layers(per_layer, layer_gamma)
    lm_attention = rows[layers].mean(0)
    offset = len(observer.cls_row) - len(image_tokens)  # 1 when [CLS] is dropped ("default" strategy)
    if offset not in (0, 1):
        raise InputError(f"{loaded.name} feeds {len(image_tokens)} image tokens from {len(observer.cls_row)} vision "
                         "positions; the patch <-> token mapping is not one-to-one")
    cls_attention = observer.cls_row[offset:].double().numpy()
    norms = observer.norms[offset:].double().numpy()
    positions = np.array([t.i for t in image_tokens], dtype=np.int64)
    blind = tuple(int(positions[i]) for i in avc_blind(lm_attention, lamb))
    outliers = tuple(int(positions[i]) for i in damro_outliers(cls_attention, min(top_k, len(positions))))
    options = {"layer_gamma": layer_gamma, "lamb": lamb, "top_k": top_k, "feature_layer": observer.feature_layer,
               "cls_dropped": bool(offset)}
    return BlindTokensResult(model=loaded.name, options=options, prompt=prompt, positions=positions,
                             patches=tuple(tuple(t.patch) if t.patch else None for t in image_tokens),
                             layer_image_attention=per_layer, layers=tuple(layers), lm_attention=lm_attention,
                             cls_attention=cls_attention, norms=norms, blind=blind, outliers=outliers)


def check_options(*, layer_gamma: float, lamb: float, top_k: int) -> None:
    if not (isinstance(layer_gamma, (int, float)) and 0.0 < layer_gamma <= 1.0):
        raise InputError(f"--layer-gamma must lie in (0, 1], not {layer_gamma!r}")
    if not (isinstance(lamb, (int, float)) and math.isfinite(lamb)):
        raise InputError(f"--lamb must be a finite number, not {lamb!r}")
    if top_k < 1:
        raise InputError(f"--top-k must be at least 1, not {top_k}")


def analyse(trace, *, tracer, image=None, layer_gamma: float = 0.5, lamb: float = 0.99,
            top_k: int = 10) -> BlindTokensResult:
    """Blind and outlier tokens of a traced VLM input (re-runs its prompt forward through `tracer`)."""
    from workbench.analyses.tracing import traced_image

    inputs = trace.meta["inputs"]
    if inputs.get("image") is None:
        raise InputError("this trace has no image, so it has no image tokens")
    image = traced_image(trace, image)
    return blind_tokens(tracer, inputs["prompt"], image, layer_gamma=layer_gamma, lamb=lamb, top_k=top_k,
                        system=inputs.get("system"), raw=inputs.get("raw", False))
