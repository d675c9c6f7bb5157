"""`--batch-size` on `workbench trace --prompts`: bundles traced in padded batches equal those traced one at a time."""

from __future__ import annotations

import json

import torch

import workbench
from tests.workbench.cli.cli_inprocess import run_cli

LINES = [{"name": "short", "prompt": "Hi"}, {"name": "long", "prompt": "A longer prompt that pads the short one well"},
         {"name": "stop", "prompt": "One more", "max_new_tokens": 1}, {"name": "last", "prompt": "And the last"}]


def test_trace_prompts_batched_equals_one_at_a_time(tmp_path, one_torch_thread):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    for size in (1, 3):
        code, _, err = run_cli("trace", "-m", "tiny-llama", "--prompts", data, "-n", "3", "--batch-size", size,
                               "--out", tmp_path / f"b{size}", "--threads", "1")
        assert code == 0, err
    for line in LINES:
        alone, batched = (workbench.load(tmp_path / f"b{size}" / f"{line['name']}.wbtrace") for size in (1, 3))
        assert [t.id for t in batched.tokens] == [t.id for t in alone.tokens]
        for name in alone.tensor_names():
            expected, got = alone.tensor(name), batched.tensor(name)
            if expected.dtype.is_floating_point:
                assert torch.allclose(got.nan_to_num(0), expected.nan_to_num(0), atol=1e-5, rtol=1e-5), name
            else:
                assert torch.equal(got, expected), name


def test_batch_size_needs_prompts_and_a_positive_count(tmp_path):
    code, _, err = run_cli("trace", "-m", "tiny-gpt2", "-p", "x", "--batch-size", "4")
    assert code == 2 and err.strip().splitlines() == [
        "error: --batch-size applies to --prompts FILE.jsonl (several prompts); drop it for one prompt"]
    code, _, err = run_cli("trace", "-m", "tiny-gpt2", "-p", "x", "--batch-size", "0")
    assert code == 2 and err.strip() == "error: --batch-size must be between 1 and 4,096, not 0"
