"""VAR's visual sinks, image-centric heads and the vision tower's artifact tokens: llava-scenes vs smol-llava.

Both models see the same held-out scene questions (data/scenes: scene i with its question of type i mod 6, so
presence, colour, shape, count, position and caption questions all appear). Per input, as the CLI does it:

    workbench trace --model M --image data/scenes/images/scene_XXXX.png --prompt Q \
        --hidden --top-k 8 -n 2 -o B
    workbench sinks B --no-store --json -                   # reference layers (VAR's released code)
    workbench sinks B --no-store --json - --var-layers all  # every layer

and the tower alone (Darcet et al.'s high-norm artifact patches): the VLM's own vision tower traced as a
standalone encoder on the image its processor makes (smol-llava: DINOv2 ViT-S/14 at 84 px, 6 x 6 patches;
llava-scenes: its CLIP tower at 48 px, 6 x 6), with `--hidden`, through `sinks.analyse` (relative rule, 4 x
the median patch norm). Image token (row, col) of both language models is tower patch (row, col), so the
overlap of visual sinks and artifacts is a comparison of grid cells.

    OMP_NUM_THREADS=1 python benchmarks/vlm_sinks.py               # 24 inputs: about 2 minutes (40 s of CPU)
    OMP_NUM_THREADS=1 python benchmarks/vlm_sinks.py --inputs 12 --json out.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from PIL import Image

from workbench.analyses import sinks, visual_sinks
from workbench.capture import Tracer
from workbench.datasets.scene_questions import read_questions
from workbench.models import load_model
from workbench.models.loaded import LoadedModel
from workbench.models.registry import data_root
from workbench.models.towers import tower_encoder
from workbench.traces.names import tensor_name

MODELS = ("llava-scenes", "smol-llava")
QUESTION_TYPES = ("presence", "colour", "shape", "count", "position", "caption")


def scene_inputs(count: int) -> list[dict]:
    """Scene i with its first question of type QUESTION_TYPES[i mod 6] (presence when it has none)."""
    folder = data_root() / "scenes"
    questions = read_questions(folder)
    scenes = {row["id"]: row for row in map(json.loads, (folder / "scenes.jsonl").read_text().splitlines())}
    inputs = []
    for index, scene in enumerate(sorted(scenes)[:count]):
        own = [q for q in questions if q["scene"] == scene]
        wanted = QUESTION_TYPES[index % len(QUESTION_TYPES)]
        question = next((q for q in own if q["type"] == wanted), own[0])
        inputs.append({"scene": scene, "image": folder / question["image"], "question": question["question"],
                       "type": question["type"], "patch_objects": scenes[scene]["patch_objects"]})
    return inputs


def feature_layer_index(vlm: LoadedModel, n_layers: int) -> int:
    """The tower layer whose output the projector reads (LLaVA's vision_feature_layer: -1 the last, -2 the
    penultimate), as an index into the artifact table's per-layer entries."""
    chosen = vlm.model.config.vision_feature_layer
    return chosen % n_layers if chosen < 0 else chosen - 1


def strongest_image_token(trace, dims: list[int], patch_objects: list[int]) -> dict | None:
    """The image token with the highest phi over the sink dimensions in any layer (all layers searched), and
    the largest contrast of an image token on those dimensions, max_d |x_td| / median over all tokens of
    |x_t'd| (the sink-dimension rule calls a value massive at >= 10), beside token 0's."""
    if not dims:
        return None
    image = trace.regions == visual_sinks.IMAGE
    best, contrast_image, contrast_first = None, 0.0, 0.0
    for layer, phi in visual_sinks.phi_by_layer(trace, dims).items():
        value, index = phi.masked_fill(~image, float("-inf")).max(0)
        if best is None or float(value) > best["phi"]:
            patch = list(trace.tokens[int(index)].patch)
            best = {"phi": round(float(value), 3), "layer": layer, "patch": patch,
                    "object": patch_objects[6 * patch[0] + patch[1]] >= 0}  # the scenes: 6 x 6 patches
        hidden = trace.tensor(tensor_name("text", layer, "hidden_in")).float()
        values = hidden[:, dims].abs()  # [query_pos, dim]
        contrast = values / values.median(0).values.clamp_min(1e-12)
        contrast_image = max(contrast_image, float(contrast[image].max()))
        contrast_first = max(contrast_first, float(contrast[0].max()))
    return {**best, "image_contrast": round(contrast_image, 2), "first_contrast": round(contrast_first, 1)}


def even_image_share(trace) -> tuple[float, float]:
    """The image's share of a row that attends evenly to every key it sees, over the text rows after the image
    (the rows image-centric heads are scored on): what summ = 0.2 is measured against."""
    image = (trace.regions == visual_sinks.IMAGE).nonzero().flatten()
    shares = [len(image) / (row + 1) for row in range(int(image.max()) + 1, len(trace.tokens))]
    return round(min(shares), 3), round(max(shares), 3)


def grid_cells(entries) -> list[tuple[int, int]]:
    return sorted({tuple(entry["patch"]) for entry in entries if entry.get("patch")})


def measure(name: str, inputs: list[dict]) -> list[dict]:
    vlm = load_model(name)
    tracer, tower = Tracer.open(vlm), Tracer.open(tower_encoder(vlm))
    rows = []
    for item in inputs:
        image = Image.open(item["image"]).convert("RGB")
        trace = tracer.trace(item["question"], image, hidden_states=True, top_k=8, max_new_tokens=2)
        reference = sinks.analyse(trace)
        wide = sinks.analyse(trace, var_layers="all")
        artifacts = sinks.analyse(tower.trace("", image, hidden_states=True)).artifacts
        top_phi = strongest_image_token(trace, (wide.sink_dims or {}).get("dims", []), item["patch_objects"])
        feature_layer = feature_layer_index(vlm, len(artifacts["layers"]))
        flagged_any = {tuple(a["patch"]) for layer in artifacts["layers"] for a in layer["artifacts"]}
        visual = reference.visual_sinks or {"visual": [], "text": [], "max_phi_image": 0.0}
        visual_all = wide.visual_sinks or {"visual": [], "max_phi_image": 0.0}
        rows.append({
            "scene": item["scene"], "type": item["type"],
            "answer": trace.meta.get("generation", {}).get("text"),
            "gu_image_sinks": [s["patch"] for s in reference.sink_tokens if s["region"] == "image"],
            "kind": reference.kind["kind"],
            "sink_dims": (reference.sink_dims or {}).get("dims", []),
            "sink_dims_all": (wide.sink_dims or {}).get("dims", []),
            "visual": [{"patch": v["patch"], "layers": v["layers"], "max_phi": v["max_phi"],
                        "object": item["patch_objects"][6 * v["patch"][0] + v["patch"][1]] >= 0}
                       for v in visual["visual"]],
            "visual_all": grid_cells(visual_all["visual"]),
            "text_phi_tokens": [(t["position"], t["text"]) for t in visual["text"]],
            "max_phi_image": visual["max_phi_image"],
            "centric_reference": (reference.image_centric or {}).get("image_centric", []),
            "centric_all": (wide.image_centric or {}).get("image_centric", []),
            "artifacts_output": grid_cells(artifacts["tokens"]), "artifacts_any_layer": sorted(flagged_any),
            "artifact_top_ratio": max(layer["top"]["ratio"] for layer in artifacts["layers"]),
            "top_phi": top_phi, "even_share": even_image_share(trace),
            "tower_top_patch": artifacts["layers"][feature_layer]["top"]["patch"],
            "tower_top_ratio": artifacts["layers"][feature_layer]["top"]["ratio"],
        })
    return rows


def heads_summary(rows: list[dict], key: str) -> str:
    """Distinct heads, how many are image-centric in every input, and the most frequent ones."""
    counts = Counter(tuple(head) for row in rows for head in row[key])
    if not counts:
        return "none"
    always = [f"L{layer}H{head}" for (layer, head), n in sorted(counts.items()) if n == len(rows)]
    shown = ", ".join(always[:8]) + (", ..." if len(always) > 8 else "")
    per_input = sorted(len(row[key]) for row in rows)
    return (f"{len(counts)} heads, {len(always)} in every input ({shown}); "
            f"per input {per_input[0]}-{per_input[-1]}")


def frequent(values, top: int = 4, label=str) -> str:
    """The most frequent values with how many inputs they occur in: '(0, 0) 6, (4, 3) 5'."""
    return ", ".join(f"{label(value)} {n}" for value, n in Counter(values).most_common(top)) or "-"


def count(rows, test) -> str:
    return str(sum(bool(test(row)) for row in rows))


def total(rows, key: str) -> str:
    return str(sum(len(row[key]) for row in rows))


def spread(values, digits: int = 1) -> str:
    values = list(values)
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}" if values else "-"


def table(results: dict[str, list[dict]]) -> list[tuple[str, ...]]:
    """One line per finding, one column per model."""
    lines = [("", *results)]

    def line(label, value):
        lines.append((label, *(value(rows) for rows in results.values())))

    def top_phi(rows):
        return [r["top_phi"] for r in rows if r["top_phi"]]

    def visual(rows):
        return [v for r in rows for v in r["visual"]]

    line("inputs", lambda rows: str(len(rows)))
    line("inputs with a Gu sink on an image token", lambda rows: count(rows, lambda r: r["gu_image_sinks"]))
    line("sink dimensions (inputs), reference / all layers", lambda rows: " / ".join(
        frequent(d for r in rows for d in r[key]) for key in ("sink_dims", "sink_dims_all")))
    line("inputs with a visual sink (VAR, phi > 20)", lambda rows: count(rows, lambda r: r["visual"]))
    line("  ... with --var-layers all (layers >= 0)", lambda rows: count(rows, lambda r: r["visual_all"]))
    line("visual sinks per input", lambda rows: spread((len(r["visual"]) for r in rows), 0))
    line("visual-sink patches (inputs)", lambda rows: frequent(tuple(v["patch"]) for v in visual(rows)))
    line("visual sinks on background patches", lambda rows: f"{sum(not v['object'] for v in visual(rows))}"
                                                            f"/{len(visual(rows))}")
    line("layers with a visual sink", lambda rows: spread((l for v in visual(rows) for l in v["layers"]), 0))
    line("max phi of an image token, per input", lambda rows: spread(r["max_phi_image"] for r in rows))
    line("image token with the highest phi: patch (inputs)", lambda rows: frequent(
        tuple(t["patch"]) for t in top_phi(rows)))
    line("  ... on a background patch (inputs)", lambda rows: count(top_phi(rows), lambda t: not t["object"])
         if top_phi(rows) else "-")
    line("  ... the layer it enters (inputs)", lambda rows: frequent((t["layer"] for t in top_phi(rows)),
                                                                     label=lambda layer: f"L{layer}"))
    line("max |x_d| / median token's on D_sink: image tokens", lambda rows: spread(
        t["image_contrast"] for t in top_phi(rows)))
    line("  ... token 0", lambda rows: spread((t["first_contrast"] for t in top_phi(rows)), 0))
    line("text tokens with phi > 20 (inputs)", lambda rows: frequent(
        (text for r in rows for text in {text for _, text in r["text_phi_tokens"]}), label=repr))
    line("image-centric heads, reference", lambda rows: heads_summary(rows, "centric_reference"))
    line("image-centric heads, --var-layers all", lambda rows: heads_summary(rows, "centric_all"))
    line("  image share of an even text row", lambda rows: spread(
        [r["even_share"][0] for r in rows] + [r["even_share"][1] for r in rows], 2))
    line("tower artifact patches at the output", lambda rows: total(rows, "artifacts_output"))
    line("tower artifact patches in any layer", lambda rows: total(rows, "artifacts_any_layer"))
    line("tower max patch norm / median, any layer", lambda rows: spread(
        (r["artifact_top_ratio"] for r in rows), 2))
    line("tower top-norm patch of the projected layer (inputs)", lambda rows: frequent(
        tuple(r["tower_top_patch"]) for r in rows))
    line("  ... = the image token with the highest phi", lambda rows: count(
        rows, lambda r: r["top_phi"] and r["top_phi"]["patch"] == r["tower_top_patch"]))
    line("visual sinks on an artifact patch", lambda rows: count(
        [(v, r) for r in rows for v in r["visual"]], lambda pair: tuple(pair[0]["patch"]) in
        set(map(tuple, pair[1]["artifacts_any_layer"]))))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=24, help="scenes to use (one question each)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--json", help="write the per-input rows here")
    args = parser.parse_args()
    inputs = scene_inputs(args.inputs)
    results = {name: measure(name, inputs) for name in args.models.split(",")}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1, default=list)
    lines = table(results)
    widths = [max(len(row[i]) for row in lines) for i in range(len(results) + 1)]
    for row in lines:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)))


if __name__ == "__main__":
    main()
