"""The effect of AVC recalibration and DAMRO outlier removal on a scene QA set (data/scenes): every question answered
plainly and under each spec, with accuracy and the hallucination rates `workbench vhd --scenes` reports (a wrong
short answer is a hallucination; 'yes' to an absent object; the prior answer on prior-conflicting questions).
Findings to report, not thresholds to meet. Run by `workbench blind --scenes`."""

from __future__ import annotations

from pathlib import Path

from workbench.analyses.recalibration import generate


def evaluate_scenes(tracer, folder: Path, questions: list[dict], specs, *, max_new_tokens: int | None = None,
                    progress=None) -> dict:
    """Answer every question plainly and under each spec (AVC / DAMRO); rates per mode as `vhd_scenes` reports
    them, plus how many answers each spec changed and the mean number of blind / outlier tokens.
    max_new_tokens: None sizes it to the longest full-sentence answer, as `vhd_scenes.evaluate` does."""
    from workbench.datasets import scenes
    from workbench.datasets.scene_answers import answer_token_budget

    if max_new_tokens is None:
        max_new_tokens = answer_token_budget(getattr(tracer, "loaded", tracer).tokenizer, questions)

    rows = []
    for index, qa in enumerate(questions):
        image = Path(folder) / qa["image"]
        plain = tracer.generate(qa["question"], image, max_new_tokens=max_new_tokens)
        row = {"question": qa["question"], "type": qa["type"], "truth": qa["answer"], "prior": qa["prior_answer"],
               "conflicts": qa["conflicts"], "answer": scenes.stated_answer(qa["type"], plain.text),
               "correct": scenes.is_correct(qa, plain.text)}
        for spec in specs:
            out = generate(tracer, qa["question"], image, spec, max_new_tokens=max_new_tokens)
            row[f"{spec.name}_answer"] = scenes.stated_answer(qa["type"], out["text"])
            row[f"{spec.name}_correct"] = scenes.is_correct(qa, out["text"])
            row[f"{spec.name}_kept"] = len(out["kept"])
        rows.append(row)
        if progress:
            progress(index + 1, len(questions))
    modes = [("plain", "answer", "correct")] + [(s.name, f"{s.name}_answer", f"{s.name}_correct") for s in specs]
    rates = {mode: _measures(rows, answer, correct) for mode, answer, correct in modes}
    for spec in specs:
        rates[f"{spec.name}_answers_changed"] = sum(r["answer"] != r[f"{spec.name}_answer"] for r in rows)
        rates[f"{spec.name}_mean_tokens_kept"] = round(sum(r[f"{spec.name}_kept"] for r in rows) / max(len(rows), 1), 3)
    return {"analysis": "recalibration_scenes", "questions": len(rows), "specs": [s.to_json() for s in specs],
            "rates": rates, "rows": rows}


def _measures(rows: list[dict], answer: str, correct: str) -> dict:
    def rate(hits: list[bool]) -> dict:
        return {"n": len(hits), "rate": round(sum(hits) / len(hits), 4) if hits else None}

    absent = [r for r in rows if r["type"] == "presence" and r["truth"] == "no"]
    conflicting = [r for r in rows if r["conflicts"]]
    return {"accuracy": rate([r[correct] for r in rows]),
            "absent_object_yes": rate([r[answer] == "yes" for r in absent]),
            "prior_answer_on_conflicting": rate([r[answer] == r["prior"] for r in conflicting]),
            "incorrect": rate([not r[correct] for r in rows])}
