"""Capture on real weights (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) against HF eager attention."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from tests.helpers import assert_close, eager_forward, statistics_from_maps

import workbench

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("maps", ["all", None])  # None: statistics only, the one-pass kernel's path
@pytest.mark.parametrize("name,causal,new_tokens", [("smollm2", True, 4), ("minilm", False, 0)])
def test_real_maps_and_statistics_equal_eager(models, name, causal, new_tokens, maps):
    from workbench.kernels import fused_cpu

    loaded = models(name)
    trace = workbench.trace(loaded, "The quick brown fox jumps over the lazy dog.", max_new_tokens=new_tokens,
                            maps=maps, map_dtype="float32")
    assert (trace.meta["capture"]["kernels_run"]["text"].get("one-pass", 0) > 0) == (maps is None and fused_cpu.load())
    ids = torch.tensor([[t.id for t in trace.tokens]])
    reference = eager_forward(loaded.model, input_ids=ids)
    assert len(reference.attentions) == trace.n_layers()
    for layer, eager_maps in enumerate(reference.attentions):
        stats = trace.layer(layer)
        if maps:
            assert_close(stats["maps"], eager_maps[0], what=f"{name} layer {layer} maps")
        for stat, value in statistics_from_maps(eager_maps[0], trace.regions, causal=causal).items():
            assert_close(stats[stat], value, what=f"{name} layer {layer} {stat}")
    assert trace.checks["healthy"]


def test_smollm2_chat_template_regions(models):
    trace = workbench.trace(models("smollm2"), "The capital of France is", max_new_tokens=0)
    regions = [t.region for t in trace.tokens]
    prompt_text = "".join(t.text for t in trace.tokens if t.region == "prompt")
    system_text = "".join(t.text for t in trace.tokens if t.region == "system")
    assert prompt_text.strip() == "The capital of France is"
    assert "helpful AI assistant" in system_text  # the template's default system prompt
    assert regions[0] == "special" and trace.tokens[0].text == "<|im_start|>"
    raw = workbench.trace(models("smollm2"), "The capital of France is", raw=True)
    assert {t.region for t in raw.tokens} <= {"prompt", "special"}
    assert "".join(t.text for t in raw.tokens if t.region == "prompt") == "The capital of France is"


def test_cli_smollm2_json_shows_position_zero_sink(tmp_path, models):
    out = tmp_path / "out.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "workbench.cli.main", "trace", "--model", "smollm2", "--prompt",
                             "The capital of France is", "--max-new-tokens", "5", "--json", out],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    exported = json.loads(out.read_text())
    layers = exported["summary"]["text"]
    assert len(layers) == 30
    generated = [t for t in exported["tokens"] if t["region"] == "generated"]
    assert 1 <= len(generated) <= 5
    # Independent check: the most attended key per layer from HF eager maps of the same token sequence.
    loaded = models("smollm2")
    reference = eager_forward(loaded.model, input_ids=torch.tensor([[t["id"] for t in exported["tokens"]]]))
    eager_top = [int(maps[0].sum(dim=(0, 1)).argmax()) for maps in reference.attentions]
    assert [layer["top_key"] for layer in layers] == eager_top
    assert sum(top == 0 for top in eager_top) > len(layers) / 2  # position 0 is the sink in most layers
