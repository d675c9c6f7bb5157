"""`Tracer`: generation against transformers' own greedy `generate`, replay against HF eager maps, the capture
plan's checks before anything loads, and the kernels the manifest says ran."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from tests.helpers import assert_close, eager_forward

from workbench.capture import CapturePlan, Tracer
from workbench.errors import InputError
from workbench.interventions import ACT

PROMPT = "The red square is next to the blue circle and the"


@pytest.fixture(scope="module")
def tracer():
    return Tracer.open("tiny-llama")


def test_generate_equals_transformers_generate_and_trace(tracer):
    loaded = tracer.loaded
    generation = tracer.generate(PROMPT, max_new_tokens=6)
    ids = tracer.trace(PROMPT, max_new_tokens=6).tokens
    from workbench.capture.inputs import prepare_input

    prompt_ids = prepare_input(loaded, PROMPT).input_ids
    with torch.no_grad():
        expected = loaded.model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=6,
                                         do_sample=False)
    assert generation.token_ids == expected[0, prompt_ids.shape[1]:].tolist()
    assert generation.token_ids == [token.id for token in ids[prompt_ids.shape[1]:]]
    with torch.no_grad():
        first = loaded.model(prompt_ids).logits[0, -1]
    assert_close(generation.first_logits, first, atol=1e-4, what="first logits")


def test_generate_follows_a_continuation_and_an_edit_changes_the_answer(tracer):
    forced = tracer.generate(PROMPT, continuation=[5, 6, 7])
    assert forced.token_ids == [5, 6, 7]
    plain = tracer.generate(PROMPT, max_new_tokens=4)
    spec = ACT(beta=0.0, threshold=0.0, first_layer=0)  # remove every non-first sink column's attention
    edited = tracer.generate(PROMPT, max_new_tokens=4, edit=spec.start(tracer.layout))
    assert not torch.equal(plain.first_logits, edited.first_logits)


def test_replay_equals_eager_maps(tracer):
    trace = tracer.trace(PROMPT, max_new_tokens=3)
    ids = torch.tensor([[token.id for token in trace.tokens]])
    eager = eager_forward(tracer.loaded.model, input_ids=ids).attentions
    layers = tracer.replay(trace, layers=[0, 2], heads=[1, 4])
    assert sorted(layers) == [0, 2]
    for layer, replayed in layers.items():
        assert replayed.heads == [1, 4]
        assert_close(replayed.maps, eager[layer][0, [1, 4]], what=f"layer {layer} maps")
        assert_close(replayed.key_mass, eager[layer][0, [1, 4]].sum(1), what=f"layer {layer} key mass")
    row = len(trace.tokens) - 2
    one_row = tracer.replay(trace, layers=range(3), rows=slice(row, row + 1))
    for layer in range(3):
        assert_close(one_row[layer].maps[:, 0], eager[layer][0, :, row], what=f"layer {layer} row {row}")
        assert one_row[layer].key_mass is None


def test_manifest_records_the_kernels_that_ran(tracer):
    from workbench.kernels import fused_cpu

    trace = tracer.trace(PROMPT, max_new_tokens=2, maps="1:0")
    ran = trace.meta["capture"]["kernels_run"]["text"]
    forwards, layers = 3, 3  # the prompt and one per generated token, each through every layer
    assert sum(ran.values()) == forwards * layers
    assert ran.get("torch", 0) >= forwards  # layer 1 keeps maps: never one-pass
    assert (ran.get("one-pass", 0) == (layers - 1) * forwards) == fused_cpu.load()
    forced = tracer.trace(PROMPT, max_new_tokens=2, kernel="dense")
    assert forced.meta["capture"]["kernels_run"] == {"text": {"dense": forwards * layers}}
    assert forced.meta["capture"]["kernel"] == "dense"


@pytest.mark.parametrize("options, message", [
    ({"kernel": "bogus"}, "unknown --kernel 'bogus'"),
    ({"kernel": "triton"}, "--kernel triton"),
    ({"top_k": -3}, "--top-k must be"),
    ({"map_dtype": "int8"}, "unknown map dtype"),
    ({"maps": "5-2"}, "rising range"),
    ({"maps": "0-30000000"}, "within 0..65535"),
    ({"maps": "x:0"}, "cannot read the layers"),
    ({"head_outputs": "a,b"}, "--head-outputs takes"),
    ({"max_map_memory": "9" * 330}, "cannot read the memory size"),
])
def test_plan_refuses_bad_values_before_loading(monkeypatch, options, message):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the interpreter would let triton run on CPU tensors
    started = time.perf_counter()
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        CapturePlan.build(**options)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("options, message", [
    ({"maps": "99:0"}, "layers [99], but the text stack has layers 0..2"),
    ({"maps": "0:50"}, "heads [50]"),
    ({"vision_maps": "all"}, "no vision stack"),
    ({"head_outputs": "400"}, "position 400"),
])
def test_plan_refuses_what_the_model_does_not_have(tracer, options, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tracer.trace(PROMPT, max_new_tokens=1, **options)


def test_cli_bogus_kernel_fails_fast_before_loading(tmp_path):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "workbench.cli.main", "trace", "--kernel", "bogus", "-m", "smollm2",
                             "-p", "hi", "-o", str(tmp_path / "t.wbtrace")], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: unknown --kernel 'bogus'; choose one of auto, torch, dense, triton"], result.stderr
    assert elapsed < 2.0, f"took {elapsed:.2f} s"
    assert not (tmp_path / "t.wbtrace").exists()


def test_maps_outside_the_model_fail_before_any_weights_load(tmp_path):
    """A folder with the planted model's config but no weights: the plan is refused from the config alone."""
    import shutil
    from pathlib import Path

    source = Path(__file__).resolve().parents[3] / "data" / "models" / "planted" / "sink" / "config.json"
    shutil.copy(source, tmp_path / "config.json")
    result = subprocess.run([sys.executable, "-m", "workbench.cli.main", "trace", "--maps", "99:0", "-m", str(tmp_path),
                             "-p", "hi", "-o", str(tmp_path / "t.wbtrace")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --maps asks for layers [99], but the text stack has layers 0..2"], result.stderr
    ok = subprocess.run([sys.executable, "-m", "workbench.cli.main", "trace", "--maps", "1:0", "-m", str(tmp_path),
                         "-p", "hi", "-o", str(tmp_path / "t.wbtrace")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 2 and "cannot load" in ok.stderr  # a valid plan goes on to the (missing) weights
