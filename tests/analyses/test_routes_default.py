"""The default route explains a prediction the trace holds: the row that predicted its last token (the last
generated token, or the last prompt token without a generation); the CLI names node ids with token text."""

from __future__ import annotations

import re

import workbench
from tests.workbench.cli.cli_inprocess import run_cli
from workbench.analyses import routes


def test_default_route_explains_the_last_generated_token(models):
    trace = workbench.trace(models("tiny-gpt2"), "abc abc abc", raw=True, max_new_tokens=3, decomposition=True)
    n, end = len(trace.tokens), trace.generation["end"]
    assert end == n and trace.generation["start"] < end  # the last token is a generated one
    (route,) = routes.analyse(trace, head_types=False).routes
    assert route.position == n - 2  # the causal row before the last token predicted it
    assert route.predicted["position"] == n - 1 and route.predicted["id"] == trace.tokens[-1].id


def test_default_route_without_generation_explains_the_last_prompt_token(models):
    trace = workbench.trace(models("tiny-gpt2"), "abc abd", raw=True, max_new_tokens=0, decomposition=True)
    n = len(trace.tokens)
    (route,) = routes.analyse(trace, head_types=False).routes
    assert route.predicted is not None and route.predicted["text"] == trace.tokens[n - 1].text
    assert route.position == n - 2
    # -1 still means the last row, whose prediction lies past the trace
    (past,) = routes.analyse(trace, position=-1, head_types=False).routes
    assert past.position == n - 1 and past.predicted is None


def test_cli_summary_names_tokens_and_explains_node_ids(models, tmp_path):
    trace = workbench.trace(models("planted-induction"), "f x r c e l f x r c e l", raw=True, max_new_tokens=2,
                            decomposition=True)
    bundle = trace.save(tmp_path / "p.wbtrace")
    code, out, err = run_cli("routes", bundle, "--no-head-types")
    assert code == 0, err
    n = len(trace.tokens)
    assert f"position {n - 2} {trace.tokens[n - 2].text!r} predicts {trace.tokens[n - 1].text!r}" in out
    assert "end of trace" not in out and "X0_t = embedding of token t" in out
    edge = next(line for line in out.splitlines() if " -> " in line and line.startswith("  "))
    nodes = re.findall(r"\b[XAMI]\d+_\d+\b", edge)
    assert len(nodes) == 2
    for node in nodes:  # each node id is followed by its token's text
        assert f"{node} {trace.tokens[int(node.rsplit('_', 1)[1])].text!r}" in edge
