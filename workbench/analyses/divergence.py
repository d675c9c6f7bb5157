"""Vision-aware Head Divergence (He et al. 2025, "Cracking the Code of Hallucination in LVLMs with Vision-aware
Head Divergence"; reference code jinghan1he/VHR, not available here).

VHD_{l,h}(t) = d(o_{l,h}(y_t | y_<t, image, text), o_{l,h}(y_t | y_<t, text)): for the query row that predicts
generated token y_t, the contribution of head h of layer l to the residual stream (its attention output through
its slice of W_O, bias excluded) with the image and without it. The text-only run is the same token sequence
with the image tokens REMOVED (not blanked: no placeholder, no black image; the text after them shifts to
earlier positions). d is the cosine distance 1 - cos by default (scale-free, so heads of very different norms
compare), or the L2 distance. T-VHD(t) = the mean of the top-k VHD values over all heads at step t (k = 10% of
the heads by default). Both runs keep their own KV cache, so each generated token costs one forward of each:
about twice a plain greedy generation (see docs/analyses/vhd.md for the measured ratio).

VHR (vision-aware head reinforcement, optional): layer by layer in the with-image forward of each step, heads
whose VHD exceeds mean + std of the layer are dropped as outliers, heads above the layer median are kept, and
their outputs at the predicting row are multiplied by alpha before W_O; the next layer then sees the changed
residual (the text-only run, which only serves as the reference, is not modified).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch

from workbench.analyses.result import HeadMetric, Result, TokenValues, stored_version
from workbench.errors import BundleError, InputError
from workbench.interventions import Runtime
from workbench.traces.metrics import predicted_position, predicting_row

__all__ = ["VHR", "VHDResult", "analyse", "head_distance", "rank_heads", "t_vhd", "vhd"]

PER_TOKEN_INPUTS = ("token_type_ids", "mm_token_type_ids")  # processor outputs with one entry per input token
METHOD = "He et al. 2025, Vision-aware Head Divergence (head output through W_O, with vs without the image)"
Distance = Literal["cosine", "l2"]


@dataclass(frozen=True)
class VHR:
    """Vision-aware head reinforcement: scale the selected heads' outputs by alpha (our default, the paper's
    value is not available here); outliers are heads above mean + outlier_std * std of their layer."""

    alpha: float = 1.5
    outlier_std: float = 1.0

    def to_json(self) -> dict:
        return {"alpha": self.alpha, "outlier_std": self.outlier_std}


def head_distance(with_image: torch.Tensor, without: torch.Tensor, distance: Distance = "cosine") -> torch.Tensor:
    """d over the last axis (d_model) of per-head contributions [..., d_model] -> [...]."""
    a, b = with_image.double(), without.double()
    if distance == "l2":
        return (a - b).norm(dim=-1)
    if distance != "cosine":
        raise InputError(f"distance must be 'cosine' or 'l2', not {distance!r}")
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    cosine = (a * b).sum(-1) / norms.clamp_min(1e-30)
    return torch.where(norms > 0, 1 - cosine, (a.norm(dim=-1) != b.norm(dim=-1)).double())


def t_vhd(values: torch.Tensor, top_k: int) -> torch.Tensor:
    """T-VHD: mean of the top-k VHD over all (layer, head), for values [step, layer, head] -> [step]."""
    flat = values.flatten(1)
    return flat.topk(min(top_k, flat.shape[1]), dim=1).values.mean(1)


def default_top_k(n_layers: int, n_heads: int) -> int:
    return max(1, math.ceil(0.1 * n_layers * n_heads))


@dataclass(frozen=True)
class VHDResult(Result):
    """VHD of one generation. vhd [step, layer, head], t_vhd [step]; step t scores generated token tokens[t]
    ({step, position, predicting_row, id, text}): its token position, and the query row that predicts it."""

    analysis: ClassVar[str] = "vhd"
    # 2: tokens[].position is the generated token's position (version 1 stored the predicting row there)
    schema_version: ClassVar[int] = 2

    model: str
    options: dict
    prompt: str
    tokens: tuple
    vhd: torch.Tensor = field(compare=False, repr=False)
    t_vhd: torch.Tensor = field(compare=False, repr=False)
    cost: dict = field(default_factory=dict)
    vhr: dict | None = None

    @property
    def text(self) -> str:
        return "".join(token["text"] for token in self.tokens)

    def head_mean(self) -> torch.Tensor:
        """[layer, head] VHD averaged over the steps."""
        return self.vhd.mean(0) if len(self.vhd) else self.vhd.new_zeros(self.vhd.shape[1:])

    def ranking(self, top: int | None = None) -> list[dict]:
        return _ranking(self.head_mean(), top)

    def head_metrics(self) -> dict[str, HeadMetric]:
        if not len(self.vhd):
            return {}
        return {"vhd": HeadMetric(self.head_mean().double().numpy(), "VHD (mean over tokens)",
                                  "vision-aware head divergence averaged over the generated tokens")}

    def token_values(self) -> dict[str, TokenValues]:
        positions = np.array([token["position"] for token in self.tokens], dtype=np.int64)
        return {"t_vhd": TokenValues(positions, self.t_vhd.double().numpy(),
                                     f"T-VHD (top {self.options.get('top_k')})",
                                     "mean of the top-k head divergences at the row that predicts the token")}

    def to_json(self) -> dict:
        return {"analysis": self.analysis, "schema_version": self.schema_version, "method": METHOD,
                "model": self.model, "options": self.options, "prompt": self.prompt, "text": self.text,
                "tokens": list(self.tokens),
                "vhd": [[[round(float(v), 6) for v in row] for row in step] for step in self.vhd],
                "t_vhd": [round(float(v), 6) for v in self.t_vhd], "ranking": self.ranking(20),
                "cost": self.cost, "vhr": self.vhr}

    @classmethod
    def from_json(cls, data: dict) -> VHDResult:
        version = stored_version(data, cls)
        tokens = tuple(dict(token) for token in data["tokens"])
        if version == 1:  # the row that predicts the token was stored as its position
            for token in tokens:
                token["predicting_row"] = int(token["position"])
                token["position"] = predicted_position(token["predicting_row"])
        if not all(isinstance(token.get("position"), int) for token in tokens):
            raise BundleError("every token of a vhd result needs an integer position")
        values = torch.tensor(data["vhd"], dtype=torch.float32)  # [step, layer, head]
        if not values.numel():
            values = values.reshape(0, 0, 0)
        t_values = torch.tensor(data["t_vhd"], dtype=torch.float32)
        if values.ndim != 3 or len(values) != len(tokens) or t_values.shape != (len(tokens),):
            raise BundleError(f"the vhd result has {len(tokens)} tokens but vhd of shape {tuple(values.shape)} "
                              f"and t_vhd of shape {tuple(t_values.shape)}")
        return cls(model=str(data.get("model", "?")), options=dict(data.get("options") or {}),
                   prompt=str(data.get("prompt", "")), tokens=tokens, vhd=values, t_vhd=t_values,
                   cost=dict(data.get("cost") or {}), vhr=data.get("vhr"))


def _ranking(scores: torch.Tensor, top: int | None) -> list[dict]:
    order = scores.flatten().argsort(descending=True).tolist()[:top]
    n_heads = scores.shape[1]
    return [{"rank": r + 1, "layer": i // n_heads, "head": i % n_heads, "vhd": round(float(scores.flatten()[i]), 6)}
            for r, i in enumerate(order)]


def rank_heads(results: Sequence[VHDResult], top: int | None = None) -> dict:
    """Vision-aware heads over a prompt set: VHD averaged over every scored step of every result."""
    steps = [r.vhd for r in results if len(r.vhd)]
    if not steps:
        raise InputError("no generated step to rank heads on")
    scores = torch.cat(steps).mean(0)
    return {"analysis": "vhd_ranking", "method": METHOD, "results": len(results),
            "steps": sum(len(s) for s in steps), "ranking": _ranking(scores, top), "scores": scores.tolist()}


class _PairedHeads(Runtime):
    """Observer (and, with VHR, modifier) of the per-head contribution at the predicting row of every text layer."""

    def __init__(self, layout, vhr: VHR | None, distance: Distance):
        super().__init__(layout)
        stack = layout.stacks["text"]
        self.n_heads = stack.n_heads
        self.w_out = [layout.output_projection("text", l).detach().float() for l in range(stack.n_layers)]
        self.vhr, self.distance = vhr, distance
        self.mode = "text"
        self.current: dict[int, torch.Tensor] = {}
        self.reference: dict[int, torch.Tensor] = {}
        self.selected: dict[int, list[int]] = {}

    def contribution(self, layer: int, row: torch.Tensor) -> torch.Tensor:
        """row [head, d_head] -> [head, d_model] through W_O [d_model, head * d_head]."""
        w = self.w_out[layer].to(row.device)
        return torch.einsum("hd,mhd->hm", row.float(), w.reshape(w.shape[0], self.n_heads, -1))

    def apply(self, module, *, query, key, value, attention_mask, scaling, causal, output):
        stack, layer = self.layout.locate(module)
        if stack != "text":
            return output
        self.current[layer] = self.contribution(layer, output[0, -1]).cpu()
        if self.mode != "image" or self.vhr is None:
            return output
        scores = head_distance(self.current[layer], self.reference[layer], self.distance)
        inliers = scores <= scores.mean() + self.vhr.outlier_std * scores.std(unbiased=False)
        chosen = ((scores > scores.median()) & inliers).nonzero().flatten().tolist()
        self.selected[layer] = chosen
        if chosen:
            output = output.clone()
            output[:, -1, chosen] = output[:, -1, chosen] * self.vhr.alpha
        return output

    def take(self) -> torch.Tensor:
        stacked = torch.stack([self.current[l] for l in sorted(self.current)])
        self.current = {}
        return stacked  # [layer, head, d_model]


def vhd(tracer, prompt: str, image, *, max_new_tokens: int = 16, top_k: int | None = None,
        distance: Distance = "cosine", system: str | None = None, raw: bool = False,
        continuation: Sequence[int] | None = None, vhr: VHR | None = None) -> VHDResult:
    """Generate greedily with the image (or follow `continuation`, token ids) and score every step's heads.

    tracer: a `Tracer` (or a LoadedModel) of a vision-language model. With `vhr`, the with-image run is
    reinforced while generating and the result records which heads were scaled per step.

    >>> from workbench.capture import Tracer
    >>> r = vhd(Tracer.open("planted-llava"), "What is in the picture?", "data/scenes/images/scene_0000.png",
    ...         max_new_tokens=2)
    >>> tuple(r.vhd.shape)                                   # [step, layer, head]
    (2, 3, 4)
    >>> [(h["layer"], h["head"]) for h in r.ranking(2)]      # planted vision-aware head, then the sink head
    [(0, 0), (2, 2)]
    >>> [(h["layer"], h["head"]) for h in rank_heads([r, r], top=1)["ranking"]]
    [(0, 0)]
    """
    from workbench.capture.generation import eos_ids, forward_inputs, greedy
    from workbench.capture.inputs import prepare_input

    tracer = _as_tracer(tracer)
    loaded = tracer.loaded
    if loaded.kind != "vlm":
        raise InputError(f"VHD compares runs with and without an image; {loaded.name} takes no image")
    if image is None:
        raise InputError("VHD needs an image: pass --image")
    prepared = prepare_input(loaded, prompt, image, system=system, raw=raw)
    stack = tracer.layout.stacks["text"]
    top_k = top_k or default_top_k(stack.n_layers, stack.n_heads)
    ids = prepared.input_ids
    kept = ids[0] != loaded.model.config.image_token_id
    text_ids = ids[:, kept]
    # per-token inputs follow the kept tokens: PaliGemma's prefix-LM types keep the text prompt one bidirectional
    # prefix as in the with-image run (without them transformers' SDPA path would even attend to later tokens)
    text_inputs = {key: value[:, kept] for key, value in prepared.model_inputs.items()
                   if key in PER_TOKEN_INPUTS and value.shape[-1] == ids.shape[1]}
    paired = _PairedHeads(tracer.layout, vhr, distance)
    values, selections, tokens = [], [], []

    def paired_forward(run_text, run_image) -> torch.Tensor:
        """The text-only forward, then the with-image one (VHR scales against the text-only reference)."""
        paired.mode = "text"
        run_text()
        paired.reference = dict(paired.current)
        without = paired.take()
        paired.mode = "image"
        logits = run_image()
        values.append(head_distance(paired.take(), without, distance).float())
        selections.append({layer: heads for layer, heads in sorted(paired.selected.items())})
        return logits

    def on_token(step: int, token_id: int, _logits) -> None:
        position = ids.shape[1] + step  # the with-image input holds the prompt and the earlier steps
        tokens.append({"step": step, "position": position, "predicting_row": predicting_row(position),
                       "id": token_id, "text": loaded.tokenizer.decode([token_id])})

    start = time.perf_counter()
    with torch.inference_mode(), tracer.editing(paired):
        feeds = {}

        def start_text() -> None:
            _, feeds["text"] = tracer.decoder(forward_inputs(loaded, text_ids, text_inputs))

        def start_image() -> torch.Tensor:
            first, feeds["image"] = tracer.decoder(forward_inputs(loaded, ids, prepared.model_inputs))
            return first

        def feed(token_id: int) -> torch.Tensor:
            return paired_forward(lambda: feeds["text"](token_id), lambda: feeds["image"](token_id))

        greedy(paired_forward(start_text, start_image), feed, max_new_tokens=max_new_tokens, eos=eos_ids(loaded),
               continuation=continuation, on_token=on_token)
    seconds = time.perf_counter() - start
    stacked = torch.stack(values) if values else torch.zeros(0, stack.n_layers, stack.n_heads)
    options = {"distance": distance, "top_k": top_k, "max_new_tokens": max_new_tokens,
               "teacher_forced": continuation is not None, "text_only_run": "image tokens removed",
               "head_output": "after W_O (bias excluded)"}
    vhr_report = None if vhr is None else {
        **vhr.to_json(), "selected": [{str(layer): heads for layer, heads in s.items()} for s in selections]}
    return VHDResult(model=loaded.name, options=options, prompt=prompt, tokens=tuple(tokens), vhd=stacked,
                     t_vhd=t_vhd(stacked, top_k) if len(stacked) else torch.zeros(0),
                     cost={"forwards": 2 * len(values), "seconds": round(seconds, 4),
                           "text_only_tokens": int(text_ids.shape[1]), "with_image_tokens": int(ids.shape[1])},
                     vhr=vhr_report)


def _as_tracer(tracer):
    """A Tracer for `tracer`: a Tracer, or a LoadedModel wrapped without loading anything (never a model name:
    analyses do not load models)."""
    from workbench.capture import Tracer

    if isinstance(tracer, Tracer):
        return tracer
    if isinstance(tracer, (str, bytes)) or hasattr(tracer, "__fspath__"):
        raise InputError("VHD runs the model through a Tracer: pass Tracer.open(name), not a model name")
    return Tracer.open(tracer)


def analyse(trace, *, tracer, image=None, top_k: int | None = None, distance: Distance = "cosine") -> VHDResult:
    """VHD of a traced generation, teacher-forced on its generated tokens (needs the model: `tracer`, a Tracer,
    and the image the trace was made with; its path is read from the trace)."""
    from workbench.analyses.tracing import traced_image

    inputs = trace.meta["inputs"]
    if inputs.get("image") is None:
        raise InputError("this trace has no image, so there is nothing to diverge from")
    image = traced_image(trace, image)
    generated = [t.id for t in trace.tokens[trace.generation["start"]:trace.generation["end"]]]
    if not generated:
        raise InputError("the trace generated no tokens; trace with --max-new-tokens N")
    return vhd(tracer, inputs["prompt"], image, top_k=top_k, distance=distance, system=inputs.get("system"),
               raw=inputs.get("raw", False), continuation=generated)
