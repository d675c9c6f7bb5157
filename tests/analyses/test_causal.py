"""Ablation and activation patching against planted ground truth and independent hand-written forwards.

planted-induction (data/models/planted/induction/ground_truth.json): head (0, 3) writes each token's predecessor
into PREV, head (1, 2) finds the earlier occurrence of the current token through PREV (its key side) and copies
the token after it (its value side reads TOK). Corrupting the first copy's occurrence of the last token breaks
that chain at both heads; corrupting the token after it changes only what (1, 2) copies.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench.analyses.causal import ablation, patching
from workbench.analyses.causal.metrics import Pair, pair_from_record, swapped
from workbench.analyses.registry import read_result
from workbench.capture import Tracer
from workbench.errors import InputError
from workbench.models.registry import data_root

TRUTH = json.loads((data_root() / "models" / "planted" / "induction" / "ground_truth.json").read_text())
PLANTED = {(TRUTH["heads_planted"][k]["layer"], TRUTH["heads_planted"][k]["head"])
           for k in ("previous_token", "induction")}
INDUCTION = (TRUTH["heads_planted"]["induction"]["layer"], TRUTH["heads_planted"]["induction"]["head"])
LETTERS = "abcdefghijklmnopqrstuvwxyz"
CUT = 6  # the prompt ends with letter CUT of the second copy; the answer is letter CUT + 1


def _unused(letters) -> str:
    return next(c for c in LETTERS if c not in letters)


def matched_corruption(sequence: str) -> Pair:
    """Replace the first copy's occurrence of the last token: no earlier match, both planted heads are needed."""
    letters = sequence.split()[:12]
    clean = letters + letters[:CUT + 1]
    corrupted = list(clean)
    corrupted[CUT] = _unused(letters)
    return Pair(" ".join(clean), " ".join(corrupted), letters[CUT + 1], corrupted[CUT])


def answer_corruption(sequence: str) -> Pair:
    """Replace the token after the match: the induction head copies another token (the distractor)."""
    letters = sequence.split()[:12]
    clean = letters + letters[:CUT + 1]
    corrupted = list(clean)
    corrupted[CUT + 1] = _unused(letters)
    return Pair(" ".join(clean), " ".join(corrupted), letters[CUT + 1], corrupted[CUT + 1])


@pytest.fixture(scope="module")
def tracer(models):
    return Tracer.open(models("planted-induction"))


@pytest.fixture(scope="module")
def matched():
    return [matched_corruption(s) for s in TRUTH["probe"]["sequences"][:4]]


def _other_heads(n_layers=2, n_heads=4):
    return [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in PLANTED]


# -- ground truth: ablation --------------------------------------------------------------------------------------
def test_zero_ablating_planted_heads_breaks_the_copy_and_others_do_not(tracer, matched, one_torch_thread):
    result = ablation.analyse(tracer, matched, metric="logit-diff", method="zero")
    assert result.clean > 5 and abs(result.corrupted) < 0.5  # the copy works; without a match it is undecided
    kept = dict(zip((run[0] for run in result.runs), result.kept))
    for head in PLANTED:
        assert abs(kept[head]) < 0.05, (head, kept[head])  # down to the corrupted level
    for head in _other_heads():
        assert abs(kept[head] - 1) < 0.02, (head, kept[head])


def test_zero_ablation_logprob_falls_to_uniform_over_the_vocabulary(tracer, matched, one_torch_thread):
    result = ablation.analyse(tracer, matched, metric="logprob", method="zero", heads=[INDUCTION])
    assert np.exp(result.clean) >= 0.9  # ground truth: the repeated letter with probability >= 0.9
    vocab = len(TRUTH["vocab"])
    assert abs(result.ablated[0] - np.log(1 / vocab)) < 0.05  # nothing left to tell the letters apart


def test_resample_and_mean_ablation_of_the_induction_head(tracer, matched, one_torch_thread):
    resampled = ablation.analyse(tracer, matched, method="resample", heads=[INDUCTION, (0, 0)])
    assert abs(resampled.kept[list(resampled.runs).index((INDUCTION,))]) < 0.05
    assert abs(resampled.kept[list(resampled.runs).index(((0, 0),))] - 1) < 0.02
    together = ablation.analyse(tracer, matched, method="zero", heads=sorted(PLANTED), together=True)
    assert len(together.runs) == 1 and abs(together.kept[0]) < 0.05


# -- ground truth: patching -------------------------------------------------------------------------------------
def test_patching_planted_heads_restores_the_copy_and_others_do_not(tracer, matched, one_torch_thread):
    result = patching.analyse(tracer, matched, what="heads")
    effect = result.effect[:, :, 0]
    for layer, head in PLANTED:
        assert effect[layer, head] > 0.9
    for layer, head in _other_heads():
        assert abs(effect[layer, head]) < 0.05
    noised = patching.analyse(tracer, matched, what="heads", direction="noise").effect[:, :, 0]
    for layer, head in PLANTED:  # each planted head is necessary: corrupting it alone breaks the copy
        assert noised[layer, head] < 0.1
    for layer, head in _other_heads():
        assert abs(noised[layer, head] - 1) < 0.05


def test_answer_corruption_is_restored_by_the_induction_head_alone(tracer, one_torch_thread):
    pairs = [answer_corruption(s) for s in TRUTH["probe"]["sequences"][:4]]
    result = patching.analyse(tracer, pairs, what="heads", positions=[-1])
    assert result.clean > 5 and result.corrupted < -5  # the copy flips to the distractor
    effect = result.effect[:, :, 0]
    assert effect[INDUCTION] > 0.95
    others = [effect[l, h] for l in range(2) for h in range(4) if (l, h) != INDUCTION]
    assert max(abs(v) for v in others) < 0.05  # (0, 3) too: the key side matches in both runs


def test_residual_patching_follows_the_circuit_position_by_position(tracer, one_torch_thread):
    pair = matched_corruption(TRUTH["probe"]["sequences"][0])
    result = patching.analyse(tracer, [pair], what="resid", positions="each")
    effect = result.effect[:, 0, :]  # [resid layer 0..2, position]
    n = effect.shape[1]
    changed = 1 + CUT  # token position of the corrupted letter (after <|bos|>)
    expected = {0: changed, 1: changed + 1, 2: n - 1}  # the token; PREV written after it; the last row
    for layer, position in expected.items():
        assert effect[layer, position] == pytest.approx(1.0, abs=1e-3)
        rest = np.delete(effect[layer], position)
        assert np.abs(rest).max() < 0.05


# -- independent computation: plain torch hooks on the model's own attention -----------------------------------
def _logit_diff(logits, tokenizer, pair):
    a, b = (tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (pair.answer, pair.distractor))
    return float(logits[0, -1, a].double() - logits[0, -1, b].double())


def _hand_patched(model, tokenizer, pair, *, layer, head, d_head):
    """Head `head`'s slice of c_proj's input (the merged head outputs) copied from the clean run into the
    corrupted one with a forward pre-hook, under the model's own attention implementation."""
    c_proj = model.transformer.h[layer].attn.c_proj
    columns = slice(head * d_head, (head + 1) * d_head)
    store = {}

    def keep(module, args):
        store["z"] = args[0].detach().clone()

    def put(module, args):
        z = args[0].clone()
        z[..., columns] = store["z"][..., columns]
        return (z,)

    clean = tokenizer(pair.clean, return_tensors="pt").input_ids
    corrupted = tokenizer(pair.corrupted, return_tensors="pt").input_ids
    with torch.no_grad():
        handle = c_proj.register_forward_pre_hook(keep)
        clean_metric = _logit_diff(model(clean).logits, tokenizer, pair)
        handle.remove()
        corrupted_metric = _logit_diff(model(corrupted).logits, tokenizer, pair)
        handle = c_proj.register_forward_pre_hook(put)
        patched = _logit_diff(model(corrupted).logits, tokenizer, pair)
        handle.remove()
    return clean_metric, corrupted_metric, patched


@pytest.mark.parametrize("head", [(0, 3), (1, 2), (1, 0)])
def test_head_patching_equals_a_hand_written_hook(tracer, head, one_torch_thread):
    pair = answer_corruption(TRUTH["probe"]["sequences"][1])
    loaded = tracer.loaded
    clean, corrupted, patched = _hand_patched(loaded.model, loaded.tokenizer, pair, layer=head[0], head=head[1],
                                              d_head=TRUTH["d_head"])
    result = patching.analyse(tracer, [pair], layers=[head[0]], heads=[head[1]])
    assert result.clean == pytest.approx(clean, abs=1e-5)
    assert result.corrupted == pytest.approx(corrupted, abs=1e-5)
    assert result.patched[0, 0, 0] == pytest.approx(patched, abs=1e-5)
    assert result.effect[0, 0, 0] == pytest.approx((patched - corrupted) / (clean - corrupted), abs=1e-5)


def test_mean_ablation_equals_the_hand_computed_mean(tracer, one_torch_thread):
    pair = matched_corruption(TRUTH["probe"]["sequences"][2])
    reference = TRUTH["probe"]["sequences"][4:7]
    model, tokenizer, d_head = tracer.loaded.model, tracer.loaded.tokenizer, TRUTH["d_head"]
    layer, head = INDUCTION
    c_proj = model.transformer.h[layer].attn.c_proj
    columns = slice(head * d_head, (head + 1) * d_head)
    seen = []
    handle = c_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0][0, :, columns].double()))
    with torch.no_grad():
        for text in reference:
            model(tokenizer(text, return_tensors="pt").input_ids)
    handle.remove()
    mean = torch.cat(seen).mean(0).float()  # over every position of every reference prompt

    def put(module, args):
        z = args[0].clone()
        z[..., columns] = mean
        return (z,)

    handle = c_proj.register_forward_pre_hook(put)
    with torch.no_grad():
        expected = _logit_diff(model(tokenizer(pair.clean, return_tensors="pt").input_ids).logits, tokenizer, pair)
    handle.remove()
    result = ablation.analyse(tracer, [pair], method="mean", heads=[INDUCTION], reference=reference)
    assert result.ablated[0] == pytest.approx(expected, abs=1e-5)


def test_recorded_runs_equal_the_models_own_forward(tracer, one_torch_thread):
    """Tracer.last_logits and the recorded residual streams against HF's forward with output_hidden_states (no
    workbench attention implementation involved)."""
    from workbench.analyses.causal.sweep import recorded, token_ids

    ids = token_ids(tracer, TRUTH["probe"]["sequences"][3])
    with torch.no_grad():
        reference = tracer.loaded.model(ids, output_hidden_states=True)
    logits, run = recorded(tracer, ids)
    torch.testing.assert_close(logits, reference.logits[:, -1], atol=1e-5, rtol=1e-5)
    for layer in range(TRUTH["layers"]):  # hidden_states[l] is the stream entering layer l
        torch.testing.assert_close(run.resid[layer], reference.hidden_states[layer], atol=1e-5, rtol=1e-5)
    assert set(run.heads) == set(range(TRUTH["layers"]))
    assert run.heads[0].shape == (1, ids.shape[1], TRUTH["heads"], TRUTH["d_head"])


# -- results describe themselves -------------------------------------------------------------------------------
def test_results_round_trip_through_the_registry(tracer, matched, one_torch_thread):
    result = patching.analyse(tracer, matched[:2], what="attn-out", positions=[-1, 3])
    back = read_result("patching", json.loads(json.dumps(result.to_json())))
    assert isinstance(back, patching.PatchingResult)
    np.testing.assert_allclose(back.effect, result.effect, atol=1e-7)
    assert back.slot_positions == result.slot_positions and back.layers == result.layers
    heads = patching.analyse(tracer, matched[:2], what="heads")
    grid = heads.head_metrics()["patching_effect"].values
    np.testing.assert_allclose(grid, heads.effect[:, :, 0])
    ablated = ablation.analyse(tracer, matched[:2], method="zero")
    again = read_result("ablation", json.loads(json.dumps(ablated.to_json())))
    np.testing.assert_allclose(again.kept, ablated.kept, atol=1e-7)
    assert again.runs == ablated.runs


def test_pairs_of_different_lengths_average_before_normalising(tracer, one_torch_thread):
    """Two pairs of different token counts: one slot per component, the metric averaged over the pairs first."""
    short = matched_corruption(TRUTH["probe"]["sequences"][0])
    letters = TRUTH["probe"]["sequences"][1].split()[:12]
    clean, corrupted = letters + letters[:CUT + 3], letters + letters[:CUT + 3]
    corrupted[CUT + 2] = _unused(letters)
    long = Pair(" ".join(clean), " ".join(corrupted), letters[CUT + 3], corrupted[CUT + 2])
    each = [patching.analyse(tracer, [pair], layers=[1], heads=[2]) for pair in (short, long)]
    both = patching.analyse(tracer, [short, long], layers=[1], heads=[2])
    assert both.slot_positions == (None,)
    assert both.clean == pytest.approx((each[0].clean + each[1].clean) / 2)
    patched = (each[0].patched[0, 0, 0] + each[1].patched[0, 0, 0]) / 2
    assert both.effect[0, 0, 0] == pytest.approx((patched - both.corrupted) / (both.clean - both.corrupted))
    with pytest.raises(InputError, match="one token length"):
        patching.analyse(tracer, [short, long], positions="each")
    last = patching.analyse(tracer, [short, long], positions=[-1], layers=[1], heads=[2])
    assert last.slot_positions == ((-1,),)
    json.dumps(both.to_json())


# -- user mistakes -----------------------------------------------------------------------------------------------
def test_unequal_lengths_and_multi_token_answers_are_refused(tracer):
    with pytest.raises(InputError, match="same number of tokens"):
        patching.analyse(tracer, [Pair("a b c", "a b", "c", "d")])
    with pytest.raises(InputError, match="2 tokens"):
        patching.analyse(tracer, [Pair("a b c", "a b d", "c d", "d")])
    with pytest.raises(InputError, match="layer 5 does not exist"):
        patching.analyse(tracer, [Pair("a b c", "a b d", "c", "d")], layers=[5])


def test_ioi_records_are_corrupted_by_swapping_the_names():
    record = {"prompt": "When Mark and Mary went to the market, Mary gave a drink to", "io": "Mark", "s": "Mary",
              "answer": " Mark", "distractor": " Mary"}
    assert swapped(record) == "When Mary and Mark went to the market, Mark gave a drink to"
    pair = pair_from_record(record)
    assert pair.corrupted == swapped(record) and pair.answer == " Mark"


# -- SmolLM2 on IOI prompts ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_ioi_residual_identity_and_late_heads(models, one_torch_thread):
    """Patching the whole residual stream after the last layer at the last position gives the clean run's logits:
    effect exactly 1 (an identity, whatever the model). Per head, the largest effects at the last position sit in
    the last third of the layers (where name-mover heads write the answer), far above a typical head."""
    tracer = Tracer.open(models("smollm2"))
    records = [json.loads(line) for line in (data_root() / "prompts" / "ioi.jsonl").read_text().splitlines()[:4]]
    pairs = [pair_from_record(record) for record in records]
    n_layers = tracer.layout.stacks["text"].n_layers
    resid = patching.analyse(tracer, pairs, what="resid", layers=[0, n_layers], positions=[-1])
    assert resid.clean > 1 and resid.corrupted < -1  # the model prefers the indirect object; swapping flips it
    assert resid.effect[1, 0, 0] == pytest.approx(1.0, abs=1e-4)
    assert abs(resid.effect[0, 0, 0]) < 1e-4  # the last token (" to") is the same in both prompts
    heads = patching.analyse(tracer, pairs, what="heads", positions=[-1], batch_size=16)
    top = heads.ranking(3)
    assert all(r["layer"] >= 2 * n_layers // 3 for r in top), top
    assert top[0]["effect"] > 20 * np.median(np.abs(heads.effect))
