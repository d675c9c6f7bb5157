"""Write the measured part of `smol-llava`'s MODEL_CARD.md from eval.json, training_log.json and the shipped files.

    python data/models/smol_llava/card.py            # after evaluate.py: rewrites the section between the markers

Everything between `<!-- measured:start -->` and `<!-- measured:end -->` comes from those files, so the card's
numbers cannot drift from the evaluation: held-out accuracy by presence subtype and pooled by agreement with the
language prior, hallucination rates, the learning curve, and the sha256 of each trained file. An eval.json
measured on other trained files than the ones shipped here is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parents[2]) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(HERE.parents[2]))

from workbench.errors import InputError, WorkbenchError
from workbench.models import smol_llava

QUESTIONS = HERE.parents[1] / "scenes" / "questions.jsonl"
START, END = "<!-- measured:start -->", "<!-- measured:end -->"
TARGET = 0.85  # issue target: prior-agreeing presence accuracy
CURVE_EVERY = 4  # one learning-curve column per 4 windows of 25 steps (100 steps)


def file_sha256(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in smol_llava.TRAINED_FILES}


def presence_subtypes_by_agreement() -> dict[bool, set[str]]:
    """{conflicts: presence subtypes}: whether a held-out question's answer differs from the prior's answer is a
    property of its subtype (absent-attribute-swap, absent-cooccurrence and present-atypical conflict)."""
    found: dict[bool, set[str]] = {True: set(), False: set()}
    for line in QUESTIONS.read_text().splitlines():
        row = json.loads(line)
        if row["type"] == "presence":
            found[row["conflicts"]].add(row["subtype"])
    if found[True] & found[False]:
        raise ValueError(f"presence subtypes both agree and conflict with the prior: {found[True] & found[False]}")
    return found


def pooled(result: dict, subtypes: set[str]) -> tuple[float, int]:
    """Accuracy over the presence questions of `subtypes` (counts recovered from the per-subtype rates)."""
    cells = [result["accuracy_by_subtype"][f"presence/{s}"] for s in sorted(subtypes)
             if f"presence/{s}" in result["accuracy_by_subtype"]]
    n = sum(c["n"] for c in cells)
    correct = sum(round(c["accuracy"] * c["n"]) for c in cells)
    return correct / max(1, n), n


def headline(result: dict) -> dict[str, tuple[float, int]]:
    """The card's summary rows: presence overall, agreeing, conflicting; (rate, n)."""
    groups = presence_subtypes_by_agreement()
    return {"all": pooled(result, groups[True] | groups[False]), "agreeing": pooled(result, groups[False]),
            "conflicting": pooled(result, groups[True])}


def prior_yes_truth_no(result: dict) -> tuple[float, int]:
    """Share of "yes" to absent objects that the prior suggests (attribute swap and co-occurrence pooled)."""
    suggested = presence_subtypes_by_agreement()[True]
    cells = [v for k, v in result["hallucination_rate"].items() if k in suggested]
    n = sum(c["n"] for c in cells)
    return sum(round(c["rate"] * c["n"]) for c in cells) / max(1, n), n


def accuracy_tables(result: dict) -> list[str]:
    summary = headline(result)
    rows = ["| held-out presence questions | n | accuracy |", "|---|---|---|"]
    for label, key in (("all", "all"), ("agree with the prior", "agreeing"), ("conflict with the prior", "conflicting")):
        rate, n = summary[key]
        rows.append(f"| {label} | {n} | {rate:.3f} |")
    rows += ["", "| question subtype | n | accuracy |", "|---|---|---|"]
    for key, cell in result["accuracy_by_subtype"].items():
        rows.append(f"| {key} | {cell['n']} | {cell['accuracy']:.3f} |")
    return rows


def hallucination_table(result: dict) -> list[str]:
    rate, n = prior_yes_truth_no(result)
    unanswerable = result["accuracy_by_subtype"].get("unanswerable", {"n": 0})
    rows = ["| hallucination measure | n | rate |", "|---|---|---|",
            f"| presence, prior says yes, truth no: answered yes | {n} | {rate:.3f} |"]
    for subtype, cell in result["hallucination_rate"].items():
        rows.append(f"| presence, {subtype}: answered yes | {cell['n']} | {cell['rate']:.3f} |")
    rows.append(f"| unanswerable (asks about an absent object): answered without \"there is no\" | "
                f"{unanswerable['n']} | {result['unanswerable_hallucination_rate']:.3f} |")
    return rows


def learning_curve(log: dict) -> list[str]:
    """Mean training loss per 100 steps of each stage (training_log.json keeps one mean per 25 steps)."""
    rows = ["| stage | steps | mean loss per 100 steps (the last block: the steps left) |", "|---|---|---|"]
    for stage, windows in log["loss_every_25"].items():
        blocks = [windows[i:i + CURVE_EVERY] for i in range(0, len(windows), CURVE_EVERY)]
        means = " / ".join(f"{sum(b) / len(b):.3f}" for b in blocks)
        rows.append(f"| {stage} | {log['config'][f'stage{stage}_steps']} | {means} |")
    return rows


def measured_section(folder: Path) -> str:
    result = json.loads((folder / "eval.json").read_text())
    log = json.loads((folder / "training_log.json").read_text())
    sha256 = file_sha256(folder)
    if smol_llava.trained_digest(folder) != result["trained_files_sha256"]:
        raise InputError(f"{folder / 'eval.json'} measured other trained files (digest "
                         f"{result['trained_files_sha256']}, shipped {smol_llava.trained_digest(folder)}); run evaluate.py again")
    agreeing, n = headline(result)["agreeing"]
    verdict = "met" if agreeing >= TARGET else "not met"
    sampled = result["questions"] - result["accuracy_by_subtype"].get("unanswerable", {"n": 0})["n"]
    evaluated = (f"Measured by `python data/models/smol_llava/evaluate.py --limit {sampled}`: {result['questions']} "
                 f"questions ({sampled} sampled presence and colour questions plus the unanswerable ones), "
                 f"{result['seconds']:.0f} s on this machine.")
    target = f"Target: prior-agreeing presence accuracy >= {TARGET}: **{agreeing:.3f}** (n={n}), {verdict}."
    files = ["| trained file | sha256 |", "|---|---|", *(f"| `{name}` | `{digest}` |" for name, digest in sha256.items())]
    digest = (f"Digest of the three (sha256 over their sha256 digests, first 16 hex): "
              f"`{result['trained_files_sha256']}`, recorded in `eval.json` and naming the assembled model in the cache.")
    parts = [[evaluated], [target], accuracy_tables(result), hallucination_table(result),
             ["Learning curve (`training_log.json`):"], learning_curve(log), files, [digest]]
    return "\n\n".join("\n".join(part) for part in parts)


def write(folder: Path) -> Path:
    card = folder / "MODEL_CARD.md"
    text = card.read_text()
    if START not in text or END not in text:
        raise InputError(f"{card} has no {START} ... {END} section to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    card.write_text(f"{head}{START}\n{measured_section(folder)}\n{END}{tail}")
    return card


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=HERE, help="folder with eval.json and the trained files")
    args = parser.parse_args(argv)
    try:
        print(write(args.dir))
    except WorkbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
