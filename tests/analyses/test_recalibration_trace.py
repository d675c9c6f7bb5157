"""AVC / DAMRO as capture-time options (`recalibration.trace`, `workbench trace --intervene avc|damro`): the bundle's
generated tokens are the contrastive decoding's, its attention is the plain model's over them (HF eager maps of the
final sequence), the manifest records the spec, and a replay rebuilds it; with alpha 0, or a contrast run that keeps
every image token, the trace is the plain greedy one."""

from __future__ import annotations

import json

import torch

import workbench
from tests.helpers import assert_close, eager_forward, statistics_from_maps
from tests.workbench.cli.cli_inprocess import run_cli
from workbench.analyses.blind_tokens import blind_tokens
from workbench.analyses.recalibration import generate, trace
from workbench.capture import Tracer
from workbench.capture.generation import forward_inputs
from workbench.capture.inputs import prepare_input
from workbench.errors import InputError
from workbench.interventions import recorded
from workbench.interventions.contrastive import AVC, DAMRO

IMAGE = "data/scenes/images/scene_0001.png"
PROMPT = "What is in the picture?"


def _generated(result) -> list[int]:
    return [t.id for t in result.tokens if t.region == "generated"]


def _assert_plain_attention(loaded, result) -> None:
    """Every text layer's key mass against HF eager maps of the bundle's final sequence (prompt + generated, with
    the image): the plain model's attention, whatever chose the tokens."""
    prepared = prepare_input(loaded, PROMPT, IMAGE)
    ids = torch.tensor([[t.id for t in result.tokens]])
    forward = forward_inputs(loaded, ids, {k: v for k, v in prepared.model_inputs.items() if torch.is_tensor(v)})
    eager = eager_forward(loaded.model, **forward)
    assert result.n_layers() == len(eager.attentions)
    for layer, maps in enumerate(eager.attentions):
        reference = statistics_from_maps(maps[0], result.regions, causal=True)["key_mass"]
        assert_close(result.layer(layer)["key_mass"], reference, what=f"text layer {layer} key_mass")


def test_avc_trace_records_the_contrastive_tokens_and_replays(models, tmp_path):
    """planted-llava: the blind token AVC contrasts against is the planted sink patch (1, 2) (ground truth); the
    generated tokens are the contrastive decoding's (not the plain greedy answer), the attention is the plain run's,
    and the saved bundle's record rebuilds the spec, which replays its maps and decodes its tokens again."""
    loaded = models("planted-llava")
    tracer = Tracer.open(loaded)
    spec = AVC()
    result = trace(tracer, PROMPT, IMAGE, spec, max_new_tokens=6)
    found = blind_tokens(tracer, PROMPT, IMAGE)
    sink = int(found.positions[list(found.patches).index((1, 2))])
    assert result.meta["capture"]["intervention"] == {**spec.to_json(), "report": {"kept": [sink]}}
    decoded = generate(tracer, PROMPT, IMAGE, spec, max_new_tokens=6)["ids"]
    assert _generated(result) == decoded != tracer.generate(PROMPT, IMAGE, max_new_tokens=6).token_ids
    _assert_plain_attention(loaded, result)

    result.save(tmp_path / "avc.wbtrace")
    saved = workbench.load(tmp_path / "avc.wbtrace")
    assert json.loads((tmp_path / "avc.wbtrace" / "results" / "blind_tokens.json").read_text())["blind"] == [sink]
    again = recorded(saved.meta)
    assert again == spec
    assert generate(tracer, saved.meta["inputs"]["prompt"], saved.image(), again, max_new_tokens=6)["ids"] == \
        _generated(saved)
    replayed = tracer.replay(saved, layers=range(saved.n_layers()), image=saved.image(), intervention=again)
    for layer, part in replayed.items():
        assert_close(part.key_mass, saved.layer(layer)["key_mass"], what=f"replayed layer {layer} key_mass")
    try:
        tracer.replay(saved, layers=[0], image=saved.image())
    except InputError as error:
        assert "traced under intervention 'avc'" in str(error)
    else:
        raise AssertionError("a replay without the recorded intervention was accepted")


def test_alpha_zero_and_a_contrast_that_keeps_everything_trace_the_plain_generation(models):
    """alpha 0 leaves the plain logits; a DAMRO contrast run that keeps every image token sees the model's own input,
    so (1 + alpha) l - alpha l = l: both bundles generate the plain greedy answer, with the plain trace's attention."""
    loaded = models("tiny-llava")
    tracer = Tracer.open(loaded)
    plain = tracer.trace(PROMPT, IMAGE, max_new_tokens=6)
    for spec in (AVC(alpha=0.0), DAMRO(top_k=10_000, alpha=2.0)):
        result = trace(tracer, PROMPT, IMAGE, spec, max_new_tokens=6)
        assert _generated(result) == _generated(plain), spec
        for layer in range(plain.n_layers()):
            assert_close(result.layer(layer)["key_mass"], plain.layer(layer)["key_mass"], what=f"{spec} {layer}")
    _assert_plain_attention(loaded, result)
    try:
        tracer.trace(PROMPT, IMAGE, max_new_tokens=2, intervention=AVC())
    except InputError as error:
        assert "decoding intervention" in str(error)
    else:
        raise AssertionError("Tracer.trace took a decoding intervention as an attention edit")


def test_the_cli_trace_equals_workbench_blind(models, tmp_path):
    """`workbench trace --intervene avc:alpha=3` generates what `workbench blind --intervene avc:alpha=3` answers
    for the same prompt and image, and its manifest records the spec."""
    bundle = tmp_path / "avc.wbtrace"
    code, _, err = run_cli("trace", "-m", "tiny-llava", "-p", PROMPT, "--image", IMAGE, "-n", "6",
                           "--intervene", "avc:alpha=3", "-o", str(bundle))
    assert code == 0, err
    code, _, err = run_cli("blind", "-m", "tiny-llava", "-p", PROMPT, "--image", IMAGE, "-n", "6",
                           "--intervene", "avc:alpha=3", "--json", str(tmp_path / "blind.json"))
    assert code == 0, err
    answers = json.loads((tmp_path / "blind.json").read_text())["decoding"]
    saved = workbench.load(bundle)
    text = models("tiny-llava").tokenizer.decode(_generated(saved))  # whole: the bundle decodes token by token
    assert text == answers["avc"] != answers["plain"]
    assert recorded(saved.meta) == AVC(alpha=3.0)


def test_decoding_interventions_are_refused_before_loading(monkeypatch):
    def never(*_, **__):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Tracer, "open", never)
    for args, message in ((["-m", "tiny-gpt2", "-p", "x", "--intervene", "avc"], "tiny-gpt2 takes no image"),
                          (["-m", "tiny-llava", "-p", "x", "--intervene", "damro"], "the prompt has no image")):
        code, _, err = run_cli("trace", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
        assert message in err, err
