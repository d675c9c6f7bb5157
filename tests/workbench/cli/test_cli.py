"""The `workbench` command end to end, in subprocesses, including every user error the issue lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

WORKBENCH = [sys.executable, "-m", "workbench.cli.main"]


def run(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([*WORKBENCH, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def assert_user_error(result, fragment: str):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "cat.png"
    Image.new("RGB", (40, 40), (250, 200, 10)).save(path)
    return path


def test_import_and_help_do_not_load_heavy_modules():
    code = ("import sys, workbench, workbench.cli.main; "
            "print(sorted(m for m in ('torch', 'transformers', 'dash', 'ray') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    help_text = run("--help")
    assert help_text.returncode == 0 and "trace" in help_text.stdout


def test_models_lists_registry():
    result = run("models", "--json")
    names = {row["name"] for row in json.loads(result.stdout)}
    assert {"smollm2", "minilm", "llava", "tiny-gpt2", "tiny-llama", "tiny-bert", "tiny-llava"} <= names


def test_trace_vlm_labels_image_patches(tmp_path, image_file):
    out, js = tmp_path / "cat.wbtrace", tmp_path / "cat.json"
    result = run("trace", "--model", "tiny-llava", "--image", image_file, "--prompt", "Describe the image.",
                 "--max-new-tokens", "3", "--out", out, "--json", js)
    assert result.returncode == 0, result.stderr
    exported = json.loads(js.read_text())
    image_tokens = [t for t in exported["tokens"] if t["region"] == "image"]
    assert len(image_tokens) == 16  # 32x32 image, 8x8 patches, CLS dropped
    assert [tuple(t["patch"]) for t in image_tokens] == [(r, c) for r in range(4) for c in range(4)]
    assert exported["inputs"]["image"]["sha256"]
    assert len(exported["summary"]["text"]) == 3 and len(exported["summary"]["vision"]) == 2
    info = run("info", out)
    assert info.returncode == 0 and "image 16" in info.stdout and "healthy" in info.stdout


def test_trace_many_prompts(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"name": "a", "prompt": "one"}\n\n{"prompt": "two", "max_new_tokens": 1}\n')
    result = run("trace", "--model", "tiny-gpt2", "--prompts", prompts, "--out", tmp_path / "many",
                 "--max-new-tokens", "2", "--json", tmp_path / "many-json")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["0001.wbtrace", "a.wbtrace"]
    second = json.loads((tmp_path / "many-json" / "0001.json").read_text())
    assert second["generation"]["end"] - second["generation"]["start"] == 1


def test_json_to_stdout_stays_clean(tmp_path):
    result = run("trace", "--model", "tiny-bert", "--prompt", "Encoders work too", "--json", "-")
    assert result.returncode == 0, result.stderr
    exported = json.loads(result.stdout)
    assert exported["model"]["kind"] == "encoder"
    assert exported["tokens"][0]["region"] == "special"


def test_user_errors(tmp_path, image_file):
    not_image = tmp_path / "notes.png"
    not_image.write_text("not really a png")
    existing = tmp_path / "keep.wbtrace"
    existing.mkdir()
    (existing / "precious.txt").write_text("mine")
    cases = [
        (("--model", "lama", "--prompt", "x"), "unknown model"),
        (("--model", "llava", "--prompt", "x", "--image", image_file), "not on this machine"),
        (("--model", "tiny-llava", "--prompt", "x", "--image", tmp_path / "nope.png"), "does not exist"),
        (("--model", "tiny-llava", "--prompt", "x", "--image", not_image), "not an image"),
        (("--model", "tiny-gpt2", "--prompt", "x", "--image", image_file), "text-only"),
        (("--model", "tiny-gpt2", "--prompt", "   "), "prompt is empty"),
        (("--model", "tiny-llama", "--prompt", "word " * 120), "longer than"),
        (("--model", "tiny-gpt2", "--prompt", "word " * 60, "--max-length", "1000"), "learned absolute"),
        (("--model", "tiny-gpt2", "--prompt", "x", "--out", existing), "already exists"),
        (("--model", "tiny-gpt2", "--prompt", "x", "--out", tmp_path / "no" / "dir.wbtrace"), "does not exist"),
        (("--model", "tiny-gpt2", "--prompt", "x", "--out", not_image / "x.wbtrace"), "does not exist"),
        (("--model", "tiny-gpt2", "--prompt", "x", "--maps", "zero:1"), "--maps"),
        (("--model", "tiny-bert", "--prompt", "x", "--max-new-tokens", "3"), "encoder"),
        (("--model", "tiny-gpt2"), "exactly one of"),
        (("--model", "tiny-gpt2", "--prompt-file", tmp_path / "missing.txt"), "does not exist"),
    ]
    for args, fragment in cases:
        assert_user_error(run("trace", *args), fragment)
    assert (existing / "precious.txt").read_text() == "mine"
    assert not_image.read_text() == "not really a png"


def test_long_prompt_allowed_with_max_length(tmp_path):
    result = run("trace", "--model", "tiny-llama", "--prompt", "word " * 120, "--max-length", "1024",
                 "--max-new-tokens", "1", "--out", tmp_path / "long.wbtrace")
    assert result.returncode == 0, result.stderr


def test_rope_scaling_extends_context_with_a_warning(tmp_path, models):
    fixture = models("tiny-llama")
    fixture.model.save_pretrained(tmp_path / "llama")
    fixture.tokenizer.save_pretrained(tmp_path / "llama")
    prompt_file = tmp_path / "long.txt"
    prompt_file.write_text("word " * 120)
    result = run("trace", "--model", tmp_path / "llama", "--prompt-file", prompt_file, "--max-length", "1024",
                 "--rope-scaling", "dynamic", "--max-new-tokens", "1", "--json", tmp_path / "long.json")
    assert result.returncode == 0, result.stderr
    assert "warning: " in result.stderr and "trained on 512 positions" in result.stderr
    exported = json.loads((tmp_path / "long.json").read_text())
    assert exported["model"]["rope_scaling"] == {"type": "dynamic", "factor": 2.0}
    assert exported["dims"]["tokens"] > 512
    assert_user_error(run("trace", "--model", tmp_path / "llama", "--prompt", "x", "--rope-scaling", "yarn"),
                      "--max-length")


def test_info_rejects_damaged_bundles(tmp_path):
    bundle = tmp_path / "b.wbtrace"
    assert run("trace", "--model", "tiny-gpt2", "--prompt", "hello", "--out", bundle).returncode == 0
    assert run("info", bundle).returncode == 0
    shard = bundle / "tensors" / "text.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])
    assert_user_error(run("info", bundle), "text.safetensors")
    manifest = bundle / "manifest.json"
    data = json.loads(manifest.read_text())
    data["schema_version"] = 7
    manifest.write_text(json.dumps(data))
    assert_user_error(run("info", bundle), "newer")
    manifest.write_text(manifest.read_text()[:100])
    assert_user_error(run("info", bundle), "not valid JSON")
    assert_user_error(run("info", tmp_path / "missing.wbtrace"), "no such bundle")


@pytest.mark.parametrize("kernel,expected", [("auto", "calls one-pass"), ("torch", "model's own attention")])
def test_info_says_where_attention_outputs_came_from(tmp_path, kernel, expected):
    from workbench.kernels import fused_cpu

    if kernel == "auto" and not fused_cpu.load():
        expected = "model's own attention"  # no compiler here: capture stays on the two-pass path
    out = tmp_path / f"{kernel}.wbtrace"
    assert run("trace", "--model", "tiny-llama", "--prompt", "hello there", "--kernel", kernel, "--out", out).returncode == 0
    result = run("info", out)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout, result.stdout


@pytest.mark.parametrize("args, fragment", [
    ((), "missing command"),
    (("frobnicate",), "No such command 'frobnicate'"),
    (("trace", "--bogus"), "No such option: --bogus"),
    (("trace",), "Missing option '--model'"),
    (("trace", "-n", "1e3", "-m", "tiny-gpt2", "-p", "hi"), "--max-new-tokens"),
    (("app", "--port", "abc"), "--port"),
    (("probe",), "missing command"),
])
def test_usage_errors_are_one_line_and_exit_2(args, fragment):
    assert_user_error(run(*args), fragment)
