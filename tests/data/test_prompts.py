"""Shipped prompt sets: reproducible from their generator, and each record's ground truth holds in its text."""

from __future__ import annotations

import json
import re

import pytest

from workbench.datasets import prompts
from workbench.models.registry import data_root

PROMPTS = data_root() / "prompts"


def records(name: str) -> list[dict]:
    return [json.loads(line) for line in (PROMPTS / name).read_text().splitlines() if line]


@pytest.mark.parametrize("name", sorted(prompts.GENERATED))
def test_generated_sets_are_reproducible(tmp_path, name):
    prompts.write(tmp_path)
    assert (tmp_path / name).read_bytes() == (PROMPTS / name).read_bytes()


def test_every_set_has_a_readme_line():
    readme = (PROMPTS / "README.md").read_text()
    for path in PROMPTS.glob("*.jsonl"):
        assert f"`{path.name}`" in readme
        for record in records(path.name):
            assert record["name"] and record["prompt"].strip()


def test_natural_passages():
    passages = records("natural.jsonl")
    assert len(passages) == 100
    assert len({p["prompt"] for p in passages}) == 100
    for passage in passages:
        words = passage["prompt"].split()
        assert 30 <= len(words) <= 60 and passage["words"] == len(words)
        assert passage["prompt"][-1] in ".!?"


def test_induction_sequences_repeat_their_words():
    for record in records("induction.jsonl"):
        words = record["prompt"].split()
        period = record["period"]
        assert len(words) == period * record["repeats"]
        assert len(set(words[:period])) == period  # no repeats inside one copy: one earlier occurrence each
        assert all(words[i] == words[i % period] for i in range(len(words)))


def test_ioi_answers():
    for record in records("ioi.jsonl"):
        text = record["prompt"]
        io, s = record["io"], record["s"]
        names = re.findall(r"\b(" + "|".join(prompts.NAMES) + r")\b", text)
        assert names.count(io) == 1 and names.count(s) == 2, text
        assert names[-1] == s and record["answer"] == " " + io and record["distractor"] == " " + s
        first_two = names[:2]
        assert first_two == ([io, s] if record["order"] == "ABBA" else [s, io])


def test_kv_retrieval_answerability():
    answerable = 0
    for record in records("kv_retrieval.jsonl"):
        text = record["prompt"]
        listed = dict(re.findall(r"^(\w+)'s [a-z ]+ is (\d{4})\.$", text, flags=re.MULTILINE))
        asked = re.search(r"Question: What is (\w+)'s", text).group(1)
        assert listed == record["records"]
        if asked in listed:
            answerable += 1
            assert record["answerable"] and record["answer"] == listed[asked]
        else:
            assert not record["answerable"] and record["answer"] == "unknown"
    assert answerable == 100
