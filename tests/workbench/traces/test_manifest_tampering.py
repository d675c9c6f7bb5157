"""Tampered manifests that are valid JSON and point at intact shards: every number the manifest holds must agree
with (or be bounded by) what the shards really hold, so each tampering ends at load in one BundleError naming
manifest.json (and `workbench info` in one `error:` line, exit 2), quickly, never in a hang or a crash later.

The oracle is planted: the untouched copy of each bundle loads, and every edit below makes the manifest claim
something its shards contradict (layer/head/position counts, token count, counts no tensor could produce) or
holds a value of the wrong type or a non-finite number. The property test's oracle is computed from the tensor
names and shapes by the test itself, not by the loader.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workbench
from tests.workbench.cli.cli_inprocess import run_cli
from workbench.errors import BundleError

SECONDS = 5.0  # per load or `info`: generous on a loaded 2-core machine; a 10^9-step loop takes minutes


@pytest.fixture(scope="module")
def originals(tmp_path_factory, models):
    """A tiny-LLaVA bundle (text and vision stacks, image, maps, hidden states, top-k, head outputs) and a
    tiny-GPT-2 bundle (text only, generation)."""
    from PIL import Image

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tamper")
    Image.new("RGB", (40, 40), (200, 30, 10)).save(root / "red.png")
    workbench.trace(models("tiny-llava"), "What colour is it?", image=root / "red.png", max_new_tokens=2,
                    maps="0:all", hidden_states=True, top_k=2, head_outputs="0").save(root / "llava.wbtrace")
    workbench.trace(models("tiny-gpt2"), "hello there", max_new_tokens=3).save(root / "gpt2.wbtrace")
    return root


def tampered(originals: Path, tmp_path: Path, name: str, edit=None, text_edit=None) -> Path:
    bundle = tmp_path / f"{name}.wbtrace"
    shutil.copytree(originals / f"{name}.wbtrace", bundle)
    path = bundle / "manifest.json"
    if edit is not None:
        manifest = json.loads(path.read_text())
        edit(manifest)
        path.write_text(json.dumps(manifest))
    if text_edit is not None:
        path.write_text(text_edit(path.read_text()))
    return bundle


def _drop_last_token(m):
    """A consistent-looking manifest with one token fewer: tokens, dims and the generation all agree with each
    other, only the tensors (which hold one position more) disagree."""
    m["tokens"].pop()
    m["dims"]["tokens"] -= 1
    m["dims"]["stacks"]["text"]["positions"] -= 1
    m["generation"]["end"] -= 1


def _add_token(m):
    m["tokens"].append({**m["tokens"][-1], "i": len(m["tokens"])})
    m["dims"]["tokens"] += 1
    m["dims"]["stacks"]["text"]["positions"] += 1


def _rename_tensor(old: str, new: str):
    def edit(m):
        m["tensors"][new] = m["tensors"].pop(old)
    return edit


def _set(*keys, value):
    def edit(m):
        target = m
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


def _text_replace(old: str, new: str):
    def edit(text):
        assert old in text, old
        return text.replace(old, new, 1)
    return edit


TAMPERING = {
    # sizes that would drive loops and allocations
    "text stack claims 10^9 layers": ("llava", _set("dims", "stacks", "text", "layers", value=10**9), None),
    "vision stack claims 10^9 layers": ("llava", _set("dims", "stacks", "vision", "layers", value=10**9), None),
    "text stack claims one layer more": ("gpt2", lambda m: m["dims"]["stacks"]["text"].update(layers=4), None),
    "text stack claims one layer less": ("gpt2", lambda m: m["dims"]["stacks"]["text"].update(layers=2), None),
    "10^9 heads": ("gpt2", _set("dims", "stacks", "text", "heads", value=10**9), None),
    "vision stack claims 10^9 positions": ("llava", _set("dims", "stacks", "vision", "positions", value=10**9), None),
    "kv_heads above heads": ("llava", _set("dims", "stacks", "text", "kv_heads", value=10**6), None),
    "a stack the tensors do not have": ("gpt2", lambda m: m["dims"]["stacks"].update(
        audio={"layers": 10**9, "heads": 4, "positions": 10**9}), None),
    "a tensor of a stack dims do not list": ("gpt2", _rename_tensor("layer_00.key_mass", "audio.layer_00.key_mass"), None),
    "a tensor of a layer past dims": ("gpt2", _rename_tensor("layer_00.key_mass", "layer_99.key_mass"), None),
    # tokens against the tensor shapes
    "one token fewer than the tensors hold": ("gpt2", _drop_last_token, None),
    "one token more than the tensors hold": ("gpt2", _add_token, None),
    "dims.tokens disagrees with the token list": ("gpt2", lambda m: m["dims"].update(tokens=10**9), None),
    "index shape disagrees with the shard header": ("gpt2", lambda m: m["tensors"]["layer_00.entropy"].update(
        shape=[4, 1]), None),
    "image size disagrees with the stored image": ("llava", lambda m: m["inputs"]["image"].update(width=10**9), None),
    "patch outside any grid": ("llava", lambda m: next(t for t in m["tokens"] if t["patch"]).update(
        patch=[10**9, 0]), None),
    # non-finite numbers (Python's json writes them; they are not JSON)
    "Infinity in checks.max_normaliser_error": ("gpt2", None, _text_replace('"max_normaliser_error": ',
                                                                            '"max_normaliser_error": Infinity, "x": ')),
    "NaN in checks.non_finite": ("gpt2", None, _text_replace('"non_finite": 0', '"non_finite": NaN')),
    "-Infinity in generation.start": ("gpt2", None, _text_replace('"start": ', '"start": -Infinity, "y": ')),
    "1e999 (overflows to inf) in checks.z_tolerance": ("gpt2", None, _text_replace('"z_tolerance": ',
                                                                                  '"z_tolerance": 1e999, "z": ')),
    # wrong types
    "checks.non_finite is a string": ("gpt2", _set("checks", "non_finite", value="3"), None),
    "checks.healthy is a string": ("gpt2", _set("checks", "healthy", value="yes"), None),
    "a token id is a string": ("gpt2", lambda m: m["tokens"][1].update(id="79"), None),
    "a token position is a float": ("gpt2", lambda m: m["tokens"][1].update(i=1.0), None),
    "dims layers is true": ("gpt2", _set("dims", "stacks", "text", "layers", value=True), None),
    "generation.start is a list": ("gpt2", _set("generation", "start", value=[1]), None),
    "model.name is a number": ("gpt2", _set("model", "name", value=5), None),
    "capture.maps is a list": ("llava", _set("capture", "maps", value=[0]), None),
    "checks.flagged is a string": ("gpt2", _set("checks", "flagged", value="text layer 0"), None),
    # negative and impossible counts
    "negative checks.non_finite": ("gpt2", _set("checks", "non_finite", value=-1), None),
    "negative token id": ("gpt2", lambda m: m["tokens"][1].update(id=-1), None),
    "negative generation.start": ("gpt2", _set("generation", "start", value=-1), None),
    "generation ends past the tokens": ("gpt2", _set("generation", "end", value=10**9), None),
    "generation ends before it starts": ("gpt2", lambda m: m["generation"].update(end=m["generation"]["start"] - 1),
                                         None),
    "negative kernel call count": ("gpt2", _set("capture", "kernels_run", "text", value={"torch": -3}), None),
    "more non-finite values than stored": ("gpt2", _set("checks", "non_finite", value=10**15), None),
    "top_k above the positions": ("llava", _set("capture", "top_k", value=10**9), None),
    "map layers past the stack": ("llava", _set("capture", "maps", "text", "layers", value=[10**9]), None),
    "head outputs past the positions": ("llava", _set("capture", "head_outputs", value=[10**9]), None),
    "10^5 flagged layers": ("gpt2", _set("checks", "flagged", value=["text layer 0"] * 10**5), None),
    "a 4,000-digit count": ("gpt2", None, _text_replace('"non_finite": 0', '"non_finite": ' + "9" * 4000)),
    "a count beyond 64 bits": ("gpt2", None, _text_replace('"non_finite": 0', '"non_finite": 18446744073709551616')),
    "a token id beyond 64 bits": ("gpt2", None, _text_replace('"id": ', '"id": -18446744073709551616, "z": ')),
}


def _timed(call):
    started = time.perf_counter()
    try:
        return call()
    finally:
        assert time.perf_counter() - started < SECONDS, f"took {time.perf_counter() - started:.1f} s"


@pytest.mark.parametrize("name", ["llava", "gpt2"])
def test_untouched_bundles_load_and_info_works(originals, name):
    """The control: without the tampering, each bundle loads and `workbench info` succeeds."""
    trace = _timed(lambda: workbench.load(originals / f"{name}.wbtrace", verify=True))
    assert trace.n_layers() == 3
    code, out, err = _timed(lambda: run_cli("info", originals / f"{name}.wbtrace"))
    assert code == 0 and "checks     healthy" in out, err


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampering_is_one_bundle_error_at_load(originals, tmp_path, case):
    name, edit, text_edit = TAMPERING[case]
    bundle = tampered(originals, tmp_path, name, edit, text_edit)
    for verify in (False, True):
        with pytest.raises(BundleError) as raised:
            _timed(lambda: workbench.load(bundle, verify=verify))  # noqa: B023
        message = str(raised.value)
        assert message.startswith(str(bundle)) and "\n" not in message and len(message) < 400, message
    code, out, err = _timed(lambda: run_cli("info", bundle))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (code, err)
    assert out == ""


def test_a_tampered_bundle_is_listed_as_corrupt_by_the_app(originals, tmp_path):
    """The Runs table reads the catalog: a bundle with Infinity in its checks is an error row, not "ok"."""
    from workbench.app.data.catalog import Catalog

    tampered(originals, tmp_path, "gpt2", None, TAMPERING["Infinity in checks.max_normaliser_error"][2])
    shutil.copytree(originals / "llava.wbtrace", tmp_path / "fine.wbtrace")
    infos = {info.id: info for info in Catalog(tmp_path).scan(force=True)}
    assert infos["fine"].ok and infos["fine"].healthy is True
    assert not infos["gpt2"].ok and "Infinity is not a JSON number" in infos["gpt2"].error


# --------------------------------------------------------------------------- property: hostile numbers
def _numeric_spots(value, path=()):
    """Paths of every number and bool in the metadata (the tensor and file index are fuzzed elsewhere)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if path or key not in ("tensors", "files", "schema_version"):
                yield from _numeric_spots(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            yield from _numeric_spots(item, (*path, index))
    elif isinstance(value, (int, float)):
        yield path


HOSTILE_NUMBERS = [10**9, 10**18, 2**63, -1, -(10**9), 1e308, 2.5, True, False, None, "7", [], {}]


def _held_by_tensors(manifest: dict) -> dict[str, tuple[int, int, int]]:
    """Per stack, (layers, heads, positions) computed from the tensor index: the test's own reading of it."""
    held: dict[str, list[int]] = {}
    for name, entry in manifest["tensors"].items():
        match = re.match(r"^(?:(.+)\.)?layer_(\d+)\.key_mass$", name)
        if match:
            stack = match[1] or "text"
            layers = held.get(stack, [0])[0]
            held[stack] = [max(layers, int(match[2]) + 1), entry["shape"][0], entry["shape"][1]]
    return {stack: tuple(values) for stack, values in held.items()}


@settings(derandomize=True, database=None, deadline=None, max_examples=80,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_hostile_number_loads_consistently_or_fails_in_one_line(originals, tmp_path_factory, data):
    """Replace one or two numbers anywhere in the metadata with hostile values: the load either fails with one
    BundleError, or the trace it gives agrees with its tensors (so no loop runs past them) and `info`, `info
    --json` (strict JSON) and the health check finish in seconds."""
    name = data.draw(st.sampled_from(["llava", "gpt2"]), label="bundle")
    manifest = json.loads((originals / f"{name}.wbtrace" / "manifest.json").read_text())
    spots = sorted(_numeric_spots(manifest), key=str)
    for _ in range(data.draw(st.integers(1, 2), label="edits")):
        spot = data.draw(st.sampled_from(spots), label="where")
        target = manifest
        for key in spot[:-1]:
            target = target[key]
        target[spot[-1]] = data.draw(st.sampled_from(HOSTILE_NUMBERS), label="value")
    bundle = tmp_path_factory.mktemp("hostile") / f"{name}.wbtrace"
    shutil.copytree(originals / f"{name}.wbtrace", bundle)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    try:
        trace = _timed(lambda: workbench.load(bundle))
    except BundleError as error:
        assert "\n" not in str(error) and str(error).startswith(str(bundle))
        code, _, err = _timed(lambda: run_cli("info", bundle))
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        return
    for stack, (layers, heads, positions) in _held_by_tensors(manifest).items():
        assert (trace.n_layers(stack), trace.n_heads(stack)) == (layers, heads)
        assert trace.dims["stacks"][stack]["positions"] == positions
    code, out, err = _timed(lambda: run_cli("info", bundle, "--json"))
    assert code == 0 and "Traceback" not in err, err
    json.loads(out, parse_constant=lambda constant: pytest.fail(f"info --json wrote {constant}"))
    code, _, err = _timed(lambda: run_cli("info", bundle))
    assert code == 0 and "Traceback" not in err, err


# ------------------------------------------------------------------------------------------ strict JSON
def test_info_json_is_strict_json_with_null_for_non_finite_numbers(originals, tmp_path):
    """A result holding NaN and Infinity (as Python's json writes them) comes out of `info --json` as null."""
    bundle = tmp_path / "nan.wbtrace"
    shutil.copytree(originals / "gpt2.wbtrace", bundle)
    (bundle / "results").mkdir(exist_ok=True)
    (bundle / "results" / "planted.json").write_text('{"score": NaN, "scores": [1.5, Infinity, -Infinity]}')
    code, out, err = run_cli("info", bundle, "--json")
    assert code == 0, err
    assert "NaN" not in out and "Infinity" not in out
    exported = json.loads(out, parse_constant=lambda constant: pytest.fail(f"info --json wrote {constant}"))
    assert exported["results"]["planted"] == {"score": None, "scores": [1.5, None, None]}


def test_saved_manifest_and_results_are_strict_json(originals, tmp_path):
    """Non-finite numbers put into a trace's metadata or results in Python are written as null, never NaN."""
    trace = workbench.load(originals / "gpt2.wbtrace")
    trace.meta["inputs"]["temperature"] = math.inf
    trace.add_result("planted", {"score": math.nan})
    path = trace.save(tmp_path / "again.wbtrace")
    refuse = lambda constant: pytest.fail(f"wrote {constant}")
    manifest = json.loads((path / "manifest.json").read_text(), parse_constant=refuse)
    assert manifest["inputs"]["temperature"] is None
    assert json.loads((path / "results" / "planted.json").read_text(), parse_constant=refuse) == {"score": None}
    assert workbench.load(path, verify=True).results["planted"] == {"score": None}
