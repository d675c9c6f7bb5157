"""OPERA's knowledge aggregation on the scene captions (data/scenes, workbench.datasets.scenes): do hallucinated
object words come after a columnar pattern more often, or with a higher over-trust score, than grounded ones?
Findings to report, not thresholds to meet. Run by `workbench opera --scenes`.

An object of a generated caption is a colour word followed by a shape word (the scenes tokenizer has one token per
domain word); it is hallucinated when the scene has no object of that colour and shape. Each object is scored at
its shape token: the over-trust score (log10) of that step, and whether the step's summary column lies on an
EARLIER token (a column has formed before the word; a token's own diagonal does not count). AUROC = P(score of a
hallucinated object > score of a grounded one), ties half.
"""

from __future__ import annotations

from pathlib import Path

from workbench.cli.vhd_scenes import load_questions


def objects(tokens, truth) -> list[dict]:
    """Mentioned objects [{step, colour, shape, hallucinated}] from generated tokens ({text, ...})."""
    from workbench.datasets.scenes import COLOURS, SHAPES

    words = [t["text"].strip().strip(",.").lower() for t in tokens]
    present = {tuple(pair) for pair in truth}
    return [{"step": i + 1, "colour": words[i], "shape": words[i + 1],
             "hallucinated": (words[i], words[i + 1]) not in present}
            for i in range(len(words) - 1) if words[i] in COLOURS and words[i + 1] in SHAPES]


def evaluate(tracer, folder: Path, *, limit: int | None = None, max_new_tokens: int = 24, progress=None,
             **options) -> dict:
    """Caption every scene of a seeded sample of caption questions with OPERA scoring; compare object words."""
    from workbench.analyses.opera import opera
    from workbench.cli.vhd_scenes import auroc

    questions = load_questions(Path(folder), limit, types=("caption",))
    rows = []
    for index, qa in enumerate(questions):
        result = opera(tracer, qa["question"], Path(folder) / qa["image"], max_new_tokens=max_new_tokens, **options)
        for item in objects(result.tokens, qa["target"]):
            step = item["step"]
            position = result.tokens[step]["position"]
            rows.append({**item, "scene": qa["scene"], "log10_score": round(float(result.log10_score[step]), 6),
                         "summary_before": bool(result.summary[step] < position),
                         "retrospection": bool(result.retrospection[:step + 1].any())})
        if progress:
            progress(index + 1, len(questions))
    bad = [r for r in rows if r["hallucinated"]]
    good = [r for r in rows if not r["hallucinated"]]

    def share(items, key):
        return round(sum(r[key] for r in items) / len(items), 4) if items else None

    def mean(items):
        return round(sum(r["log10_score"] for r in items) / len(items), 4) if items else None

    return {"analysis": "opera_scenes", "captions": len(questions), "objects": len(rows),
            "hallucinated": {"n": len(bad), "summary_before": share(bad, "summary_before"),
                             "retrospection": share(bad, "retrospection"), "mean_log10_score": mean(bad)},
            "grounded": {"n": len(good), "summary_before": share(good, "summary_before"),
                         "retrospection": share(good, "retrospection"), "mean_log10_score": mean(good)},
            "auroc_hallucinated_higher": auroc([-r["log10_score"] for r in bad], [-r["log10_score"] for r in good]),
            "options": options, "rows": rows}
