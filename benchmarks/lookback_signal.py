"""What the Lookback Lens features of a scene dataset can and cannot tell apart.

On one dataset built by `workbench probe build --scenes ...`, with the same five grouped folds (scenes held out)
for every probe (StandardScaler + logistic regression, C chosen on the training folds):

1. all question types, one probe: the generation AUROC of Lookback Lens span-mean against the log-probability
   baseline (what benchmarks/probes.py reports);
2. one probe per question type, scored within the type;
3. answers that assert something (presence "yes", a named colour or shape, each object a caption mentions):
   hallucinated versus grounded claims of the same kind, so the answer word itself cannot separate them;
4. what the features do encode: the same probe asked to predict the answer ("yes" versus "no" on presence
   questions) instead of its correctness;
5. sliding windows: Lookback Lens window AUROC beside a probe that sees only the window's composition (does
   it hold the answer's claim token, where it ends, the question type) and beside the log-probability baseline;
   window-level AUROC rewards knowing where the claim is, not whether it is wrong.

    python benchmarks/lookback_signal.py --data scenes.parquet          # seconds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.probes.evaluate import auroc, grouped_folds
from workbench.probes.lookback import examples, fit, window_means

from workbench import probes
from workbench.datasets import scenes

WINDOW = 8


def answer_word(task: str, text: str) -> str:
    """The scored word of an answer to a `scenes/<type>` question: "yes" from "yes<|im_end|>", from "a red circle:
    yes." (the format of benchmarks/experiments/restated_answers.patch) or from a sentence that restates the
    subject, as smol-llava answers ("Yes, there is a red circle.")."""
    text = scenes.normalise(text)
    if ":" in text:
        return text.rsplit(":", 1)[1].strip().rstrip(".")
    return scenes.stated_answer(task.removeprefix("scenes/"), text)


def asserts_something(task: str, word: str) -> bool:
    """Answers that claim something is there: presence "yes", a named colour or shape, any caption mention (not
    "no", nor a refusal such as "none" or "There is no triangle in the image.")."""
    if task == "scenes/caption":
        return True
    if task == "scenes/presence":
        return word == "yes"
    return task in ("scenes/colour", "scenes/shape") and word in scenes.ANSWER_WORDS[task.removeprefix("scenes/")]


def cross_validated(X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """Held-out probe scores of every example over five grouped folds."""
    scores = np.full(len(y), np.nan)
    for train, test in grouped_folds(groups, y, n_splits=5, seed=seed):
        model, _, _ = fit(X[train], y[train], groups[train], seed=seed)
        scores[test] = model.predict_proba(X[test])[:, 1]
    return scores


def _row(name: str, y: np.ndarray, probe: np.ndarray, baseline: np.ndarray | None, positive: str = "halluc.") -> str:
    done = ~np.isnan(probe)
    base = f"{auroc(y[done], baseline[done]):.3f}" if baseline is not None else "-"
    return f"| {name} | {int(done.sum())} ({int(y[done].sum())} {positive}) | {auroc(y[done], probe[done]):.3f} | {base} |"


def report(path: Path, variant: str = "context") -> list[str]:
    data = probes.load_dataset(path)
    tasks = np.array(data.table.column("task").to_pylist())
    groups = np.array(data.table.column("group").to_pylist())
    words = np.array([answer_word(task, text) for task, text in
                      zip(tasks, data.table.column("generated_text").to_pylist())])
    lines = [f"{path}: {len(data)} generations, {int(data.labels.sum())} hallucinated; Lookback variant {variant}",
             "", "| probe | held-out examples | Lookback Lens AUROC | log-probability AUROC |", "|---|---|---|---|"]

    answers = examples(data, variant=variant, span="answer")
    answer_tasks, answer_groups = tasks[answers.row], groups[answers.row]
    lines.append(_row("1. all types, one probe (generation)", answers.y,
                      cross_validated(answers.X, answers.y, answer_groups), answers.baselines["logprob"]))
    for task in sorted(set(tasks)):
        keep = answer_tasks == task
        if len(set(answers.y[keep].tolist())) == 2:
            lines.append(_row(f"2. {task} only", answers.y[keep], cross_validated(
                answers.X[keep], answers.y[keep], answer_groups[keep]), answers.baselines["logprob"][keep]))

    claims = examples(data, variant=variant, span="claims")
    task_of, word_of = tasks[claims.row], words[claims.row]
    asserting = np.array([asserts_something(task, word) for task, word in zip(task_of, word_of)], bool)
    lines.append(_row("3. asserting claims, one probe", claims.y[asserting], cross_validated(
        claims.X[asserting], claims.y[asserting], groups[claims.row][asserting]), claims.baselines["logprob"][asserting]))

    answer_words = words[answers.row]
    presence = (answer_tasks == "scenes/presence") & np.isin(answer_words, ["yes", "no"])
    said_yes = (answer_words[presence] == "yes").astype(np.int64)
    lines.append(_row("4. presence: predict the answer (yes) instead of its correctness", said_yes,
                      cross_validated(answers.X[presence], said_yes, answer_groups[presence]), None, "yes"))

    windows = examples(data, features="window", variant=variant, window=WINDOW)
    claim = data.per_token("claim")
    names = sorted(set(tasks))
    composition = []
    for row in np.unique(windows.row):
        holds_claim = window_means(claim[row].astype(np.float64).reshape(-1, 1), WINDOW)[:, 0] > 0
        task = np.array([tasks[row] == name for name in names], np.float64)
        for j, held in enumerate(holds_claim):
            composition.append([held, j / 10, *task, *(held * task)])
    window_groups = groups[windows.row]
    lines.append(_row(f"5. sliding window {WINDOW}: Lookback Lens", windows.y,
                      cross_validated(windows.X, windows.y, window_groups), windows.baselines["logprob"]))
    lines.append(_row(f"5. sliding window {WINDOW}: composition only (no attention)", windows.y,
                      cross_validated(np.array(composition), windows.y, window_groups), None))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="datasets built with --scenes")
    parser.add_argument("--variant", default="context", help="lookback variant (context, image, prompt, ...)")
    args = parser.parse_args(argv)
    for path in args.data:
        print("\n".join(report(path, args.variant)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
