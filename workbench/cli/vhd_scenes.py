"""VHD on a scene QA set with known truth (data/scenes, workbench.datasets.scenes): is T-VHD lower on hallucinated
answers, and does VHR lower the hallucination rate? Findings to report, not thresholds to meet. Run by
`workbench vhd --scenes`; it lives with the CLI because it joins an analysis with a dataset.

A short answer (presence, colour, shape, count, position) is hallucinated when it is wrong; on prior-conflicting
questions a wrong answer equal to the prior answer is the language-prior hallucination the set is built to
provoke. T-VHD is scored three ways: at the first generated token, averaged over the answer's steps, and at the
token(s) that state the answer word (`scenes.stated_answer_span`: "red" in "The circle is red."; for a short
answer, the first token, so the first and the answer-word scores agree there; a generation that states no answer
word is scored at its first token). AUROC = P(T-VHD of a hallucinated answer < T-VHD of a correct
one), ties counted half (so 0.5 = no signal, > 0.5 = lower T-VHD on hallucinations, as He et al. report).
Pooled AUROCs mix answer words; `auroc_yes_absent_vs_yes_present` compares the same answer token ("yes") with the
object absent (hallucinated) and present (grounded), which separates "T-VHD tracks the answer" from "T-VHD tracks
grounding".
"""

from __future__ import annotations

import random
from pathlib import Path

from workbench.analyses.divergence import VHR, rank_heads, vhd

SHORT = ("presence", "colour", "shape", "count", "position")


def load_questions(folder: Path, limit: int | None = None, seed: int = 0, types=SHORT) -> list[dict]:
    from workbench.datasets.scene_questions import read_questions

    questions = read_questions(Path(folder))
    questions = [q for q in questions if q["type"] in types]
    if limit is not None and limit < len(questions):
        questions = random.Random(seed).sample(questions, limit)
    return questions


def auroc(hallucinated: list[float], correct: list[float]) -> float | None:
    """P(score of a hallucinated item < score of a correct item), ties half (Mann-Whitney)."""
    if not hallucinated or not correct:
        return None
    below = sum((h < c) + 0.5 * (h == c) for h in hallucinated for c in correct)
    return round(below / (len(hallucinated) * len(correct)), 4)


def _rate(hits: list[bool]) -> dict:
    return {"n": len(hits), "rate": round(sum(hits) / len(hits), 4) if hits else None}


def answer_steps(token_texts: list[str], span: tuple[int, int] | None) -> list[int]:
    """The steps whose token text overlaps the character span [start, end) of the generated text (the tokens'
    texts joined); [0] (the first token) without a span."""
    if span is None:
        return [0] if token_texts else []
    steps, start = [], 0
    for step, text in enumerate(token_texts):
        end = start + len(text)
        if start < span[1] and span[0] < end:
            steps.append(step)
        start = end
    return steps


def evaluate(tracer, folder: Path, questions: list[dict], *, top_k: int | None = None, distance: str = "cosine",
             vhr: VHR | None = None, max_new_tokens: int | None = None, progress=None) -> dict:
    """Answer every question with VHD (and again with VHR when given); AUROCs, hallucination rates, ranking.
    max_new_tokens: None sizes it to the longest full-sentence answer with the model's tokenizer (generation
    stops at the end of turn, so short-answer models are not slowed)."""
    from workbench.capture.generation import eos_ids
    from workbench.datasets import scenes
    from workbench.datasets.scene_answers import answer_token_budget

    loaded = getattr(tracer, "loaded", tracer)
    if max_new_tokens is None:
        max_new_tokens = answer_token_budget(loaded.tokenizer, questions)
    end_of_turn = eos_ids(loaded)
    rows, plain_results = [], []
    for index, qa in enumerate(questions):
        image = Path(folder) / qa["image"]
        result = vhd(tracer, qa["question"], image, max_new_tokens=max_new_tokens, top_k=top_k, distance=distance)
        plain_results.append(result)
        answer = scenes.stated_answer(qa["type"], result.text)
        steps = answer_steps([token["text"] for token in result.tokens],
                             scenes.stated_answer_span(qa["type"], result.text))
        row = {"question": qa["question"], "type": qa["type"], "subtype": qa["subtype"], "truth": qa["answer"],
               "prior": qa["prior_answer"], "conflicts": qa["conflicts"], "answer": answer,
               "correct": scenes.is_correct(qa, result.text),
               "t_vhd_first": round(float(result.t_vhd[0]), 6) if len(result.t_vhd) else None,
               "t_vhd_mean": round(float(result.t_vhd.mean()), 6) if len(result.t_vhd) else None,
               "t_vhd_answer": round(float(result.t_vhd[steps].mean()), 6) if steps else None,
               "answer_steps": steps,
               "finished": bool(result.tokens) and result.tokens[-1]["id"] in end_of_turn}
        if vhr is not None:
            reinforced = vhd(tracer, qa["question"], image, max_new_tokens=max_new_tokens, top_k=top_k,
                             distance=distance, vhr=vhr)
            row["vhr_answer"] = scenes.stated_answer(qa["type"], reinforced.text)
            row["vhr_correct"] = scenes.is_correct(qa, reinforced.text)
        rows.append(row)
        if progress:
            progress(index + 1, len(questions))
    return {"questions": len(rows), "max_new_tokens": max_new_tokens,
            "unfinished": sum(not row["finished"] for row in rows),
            "scores": _scores(rows), "rates": _rates(rows, vhr is not None),
            "ranking": rank_heads(plain_results, top=10)["ranking"], "rows": rows,
            "vhr": vhr.to_json() if vhr is not None else None}


def _scores(rows: list[dict]) -> dict:
    out = {}
    for key in ("t_vhd_first", "t_vhd_mean", "t_vhd_answer"):
        scored = [r for r in rows if r[key] is not None]
        wrong = [r[key] for r in scored if not r["correct"]]
        right = [r[key] for r in scored if r["correct"]]
        prior = [r[key] for r in scored if r["conflicts"] and not r["correct"] and r["answer"] == r["prior"]]
        right_conflicting = [r[key] for r in scored if r["conflicts"] and r["correct"]]
        absent = [r for r in scored if r["type"] == "presence" and r["truth"] == "no"]
        said_yes = [r for r in scored if r["type"] == "presence" and r["answer"] == "yes"]
        out[key] = {
            "auroc_incorrect_vs_correct": auroc(wrong, right), "n_incorrect": len(wrong), "n_correct": len(right),
            "auroc_prior_vs_correct_on_conflicting": auroc(prior, right_conflicting),
            "n_prior_hallucinated": len(prior), "n_correct_conflicting": len(right_conflicting),
            "auroc_absent_yes_vs_no": auroc([r[key] for r in absent if r["answer"] == "yes"],
                                            [r[key] for r in absent if r["answer"] == "no"]),
            # the same answer token on both sides: hallucinated "yes" (object absent) vs grounded "yes"
            "auroc_yes_absent_vs_yes_present": auroc([r[key] for r in said_yes if r["truth"] == "no"],
                                                     [r[key] for r in said_yes if r["truth"] == "yes"]),
            "mean_incorrect": round(sum(wrong) / len(wrong), 6) if wrong else None,
            "mean_correct": round(sum(right) / len(right), 6) if right else None}
    return out


def _rates(rows: list[dict], with_vhr: bool) -> dict:
    def measures(answer_key: str, correct_key: str) -> dict:
        absent = [r for r in rows if r["type"] == "presence" and r["truth"] == "no"]
        conflicting = [r for r in rows if r["conflicts"]]
        return {"accuracy": _rate([r[correct_key] for r in rows]),
                "absent_object_yes": _rate([r[answer_key] == "yes" for r in absent]),
                "prior_answer_on_conflicting": _rate([r[answer_key] == r["prior"] for r in conflicting]),
                "incorrect": _rate([not r[correct_key] for r in rows])}

    out = {"plain": measures("answer", "correct")}
    if with_vhr:
        out["vhr"] = measures("vhr_answer", "vhr_correct")
        out["answers_changed"] = sum(r["answer"] != r["vhr_answer"] for r in rows)
    return out


RATE_NAMES = {"accuracy": "accuracy", "absent_object_yes": "'yes' with the object absent",
              "prior_answer_on_conflicting": "prior answer on conflicting questions", "incorrect": "incorrect"}


def rate_lines(rates: dict) -> list[str]:
    """The hallucination rates as sentences ("plain: accuracy 62.5% (5/8); ..."), one per answer mode."""
    def shown(rate: dict) -> str:
        if rate["rate"] is None:
            return "n/a (no such question)"
        return f"{rate['rate']:.1%} ({round(rate['rate'] * rate['n'])}/{rate['n']})"

    lines = [f"{mode}: " + "; ".join(f"{RATE_NAMES.get(name, name)} {shown(rate)}" for name, rate in measures.items())
             for mode, measures in rates.items() if isinstance(measures, dict)]
    if "answers_changed" in rates:
        lines.append(f"answers changed by VHR: {rates['answers_changed']}")
    return lines
