"""How closely `workbench sinks` reproduces the reference code's numbers, each convention side by side.

Every reference value is computed here from its definition on HF eager attention, never from the workbench's
statistics:
- Gu et al. (sail-sg/Attention-Sink, eval_sink_open_source.py::compute_attention_sink): alpha_k = sum_i A_ik /
  (n - k) over one eager forward of the prompt; Sink^0.3 = 100 x fraction of (layer, head) with alpha_k > 0.3.
- ACT hidden sinks: keys k > 0 with that alpha above 5 / n (paper) or 0.1 (released script).
- VAR (MICV-yonsei/VisAttnSink, src/logic/logic.py): phi over the sink dims of the hidden state entering each
  layer (DimProspector, layers >= 2), image-centric rows where a visual sink exists (HeadFork, code rho 0.5).

Printed: max |ours - reference| per quantity and convention, and how far the other convention lands.

    python benchmarks/sinks_reference.py              # planted models, tiny GPT-2 with biases: ~30 s
    python benchmarks/sinks_reference.py --smollm2    # adds SmolLM2-135M on 3 natural prompts (+ ~1 minute)
"""

from __future__ import annotations

import argparse
import json

import torch

import workbench
from workbench.analyses import sinks
from workbench.models.registry import data_root

NEW_TOKENS = 4


def eager(model, **inputs):
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(**inputs, output_attentions=True, output_hidden_states=True)
    finally:
        model.set_attn_implementation(previous)


def gu_alpha(model, ids) -> torch.Tensor:
    maps = torch.stack([a[0].double() for a in eager(model, input_ids=ids).attentions])
    return (maps / torch.arange(maps.shape[-1], 0, -1, dtype=torch.float64)).sum(-2)


def rate(alpha) -> torch.Tensor:
    return 100 * (alpha > 0.3).double().mean((0, 1))


def hidden(alpha, limit, min_queries=16) -> set:
    n = alpha.shape[-1]
    hits = (alpha > limit) & (torch.arange(n, 0, -1) >= max(1, min(min_queries, n // 4)))
    hits[..., 0] = False
    return {tuple(i) for i in hits.nonzero().tolist()}


def gu_rows(name: str, loaded, prompt: str, *, backend_trace=None) -> None:
    trace = backend_trace or workbench.trace(loaded, prompt, max_new_tokens=NEW_TOKENS, raw=True)
    ids = torch.tensor([[t.id for t in trace.tokens]])
    start = trace.generation["start"]
    reference = gu_alpha(loaded.model, ids[:, :start])
    prompt_rows, all_rows = sinks.analyse(trace), sinks.analyse(trace, query_rows="all")
    print(f"{name:<34} alpha prompt rows {(prompt_rows.alpha.double() - reference).abs().max():9.2e}   "
          f"Sink^0.3 {(prompt_rows.sink_percent.double() - rate(reference)).abs().max():8.2e}   | --query-rows all "
          f"vs reference: alpha {(all_rows.alpha.double()[..., :start] - reference).abs().max():.3f}, Sink^0.3 "
          f"{(rate(all_rows.alpha.double()[..., :start]) - rate(reference)).abs().max():.1f} points")


def act_rules(name: str, loaded, prompt: str) -> None:
    trace = workbench.trace(loaded, prompt, raw=True)
    alpha = gu_alpha(loaded.model, torch.tensor([[t.id for t in trace.tokens]]))
    n, heads = alpha.shape[-1], alpha.shape[0] * alpha.shape[1]
    result = sinks.analyse(trace)
    for rule, limit in (("relative", 5 / n), ("absolute", 0.1)):
        got = {(e["layer"], e["head"], e["key"]) for e in result.hidden_sinks[rule]}
        want = hidden(alpha, limit)
        print(f"{name:<34} hidden sinks {rule:<8} (> {limit:.3f}) entries equal: {got == want}   "
              f"{len(want)} entries in {len({(l, h) for l, h, _ in want})} of {heads} heads")


def var_layers() -> None:
    from workbench.capture.inputs import prepare_input

    root = data_root()
    gt = json.loads((root / "models" / "planted" / "llava" / "ground_truth.json").read_text())
    loaded = workbench.load_model("planted-llava")
    for scene in ("scene_0000.png", "scene_0003.png"):
        image_path = root / "scenes" / "images" / scene
        prompt = gt["probe"]["prompt"]
        trace = workbench.trace(loaded, prompt, image_path, hidden_states=True, maps="all", map_dtype="float32")
        prepared = prepare_input(loaded, prompt, image_path)
        out = eager(loaded.model, input_ids=prepared.input_ids, **prepared.model_inputs)
        image = [t.i for t in prepared.tokens if t.region == "image"]
        rows = list(range(max(image) + 1, len(prepared.tokens)))
        dims = gt["visual_sink"]["dims"]
        for convention, first in (("reference", 2), ("all", 0)):
            expected = {}
            for layer, maps in enumerate(out.attentions):
                state = out.hidden_states[layer][0].double()
                phi = (state[:, dims].abs() / state.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()).amax(-1)
                visual = [p for p in image if phi[p] > 20] if layer >= first else []
                forked = layer >= first and (bool(visual) or convention == "all")
                for head in range(maps.shape[1]):
                    a = maps[0, head].double()[rows]
                    mass = a[:, image].sum(-1)
                    centric = (mass >= 0.2) & (a[:, visual].sum(-1) / mass <= 0.5) & forked
                    expected[(layer, head)] = float(centric.double().mean())
            result = sinks.analyse(trace, var_layers=convention)
            got = {(h["layer"], h["head"]): h["centric_rows"] for h in result.image_centric["heads"]}
            listed = sorted(tuple(p) for p in result.image_centric["image_centric"])
            print(f"planted-llava {scene:<20} var_layers={convention:<9} image-centric rows max diff "
                  f"{max(abs(got[k] - v) for k, v in expected.items()):.1e}; heads {listed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M (real weights)")
    args = parser.parse_args()
    torch.manual_seed(0)
    gt = json.loads((data_root() / "models" / "planted" / "sink" / "ground_truth.json").read_text())
    planted = workbench.load_model("planted-sink")
    gu_rows(f"planted-sink, {NEW_TOKENS} generated", planted, gt["probe"]["prompt"])
    gpt2 = workbench.load_model("tiny-gpt2")
    with torch.no_grad():
        for name, parameter in gpt2.model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.5)
    prompt = "The red square is next to the blue"
    gu_rows("tiny-gpt2 + biases (HF capture)", gpt2, prompt)
    try:
        import nnsight

        from workbench.capture import Tracer

        single = Tracer.open(nnsight.NNsight(gpt2.model), backend="nnsight", tokenizer=gpt2.tokenizer).trace(
            prompt, max_new_tokens=NEW_TOKENS)
        gu_rows("tiny-gpt2 + biases (nnsight)", gpt2, prompt, backend_trace=single)
    except ImportError:
        print("nnsight not installed: single-forward backend skipped")
    act_rules("planted-sink probe", planted, gt["probe"]["prompt"])
    var_layers()
    if args.smollm2:
        smol = workbench.load_model("smollm2")
        lines = (data_root() / "prompts" / "natural.jsonl").read_text().splitlines()[:3]
        for index, line in enumerate(lines):
            text = json.loads(line)["prompt"]
            gu_rows(f"smollm2 natural[{index}]", smol, text)
            act_rules(f"smollm2 natural[{index}] 12 words", smol, " ".join(text.split()[:12]))


if __name__ == "__main__":
    main()
