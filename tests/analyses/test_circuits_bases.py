"""Circuit tracing's two Omega bases, each against an independent implementation of its definition.

"reference": TransformerLens's own weight processing (fold_ln, center_writing_weights, fold_value_biases, as
the released code of Franco & Crovella loads GPT-2) on a GPT-2-shaped model with non-zero norm gains, norm
biases and projection biases; Omega, x = ln1.hook_normalized, the upstream heads' outputs hook_z @ W_O and
the whole firing -> components -> upstream-heads chain are rebuilt here from the bridge's weights and cache.
"raw": Omega from the model's own c_attn on the norm's output (gain and bias included).
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

import workbench
from workbench.analyses import circuits
from workbench.errors import InputError

PROMPT = "abcabd abcabd xyzxyz"


@pytest.fixture(scope="module")
def biased_gpt2():
    """tiny-gpt2 with every norm gain, norm bias and projection bias moved away from 1 / 0 (seeded)."""
    from workbench.models.tiny import tiny_gpt2_biased

    return tiny_gpt2_biased()


@pytest.fixture(scope="module")
def folded(biased_gpt2):
    """(TransformerLens bridge with its default processing, its activation cache on the trace's tokens, trace)."""
    from workbench.capture.backends.lens import boot_bridge

    trace = workbench.trace(biased_gpt2, PROMPT, raw=True, decomposition=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = boot_bridge(copy.deepcopy(biased_gpt2))
        bridge.enable_compatibility_mode(disable_warnings=True)  # fold_ln, centre writing weights, fold b_V
        with torch.no_grad():
            _, cache = bridge.run_with_cache(torch.tensor([[t.id for t in trace.tokens]]))
    assert float(bridge.b_V.detach().abs().max()) == 0  # the value biases really were folded away
    return bridge, cache, trace


def _augmented(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.cat([weight, bias[None]], 0).double()  # [d_model + 1, d_head]


def _omega_tl(bridge, layer: int, head: int) -> torch.Tensor:
    """The reference's Omega from TransformerLens's processed W_Q, b_Q, W_K, b_K, times GPT-2's softmax
    scaling (the reference leaves 1/sqrt(d_head) out; the workbench's scores are the model's logits)."""
    q = _augmented(bridge.W_Q[layer, head].detach(), bridge.b_Q[layer, head].detach())
    k = _augmented(bridge.W_K[layer, head].detach(), bridge.b_K[layer, head].detach())
    return q @ k.T / q.shape[1] ** 0.5


def _omega_raw(model, layer: int, head: int) -> torch.Tensor:
    attention = model.transformer.h[layer].attn
    d_model, d_head = attention.c_proj.weight.shape[0], attention.head_dim
    weight, bias = attention.c_attn.weight.detach(), attention.c_attn.bias.detach()
    columns = slice(head * d_head, (head + 1) * d_head)
    q = _augmented(weight[:, :d_model][:, columns], bias[:d_model][columns])
    k = _augmented(weight[:, d_model:2 * d_model][:, columns], bias[d_model:2 * d_model][columns])
    return q @ k.T * attention.scaling


def test_reference_basis_is_transformer_lens_folded_omega_and_input(biased_gpt2, folded):
    bridge, cache, trace = folded
    forms, raw = circuits.omega_forms(biased_gpt2), circuits.omega_forms(biased_gpt2, "raw")
    from workbench.analyses.decomposed import layer_tensor

    worst_raw_gap = worst_x = worst_omega = 0.0
    for layer in range(trace.n_layers()):
        x_tl = cache[f"blocks.{layer}.ln1.hook_normalized"][0].double()
        x_ours = forms.norm(layer)(layer_tensor(trace, layer, "hidden_in")).double()
        worst_x = max(worst_x, float((x_ours - x_tl).abs().max()))
        for head in range(trace.n_heads()):
            expected = _omega_tl(bridge, layer, head)
            gap = float((forms.head(layer, head).omega() - expected).abs().max() / expected.abs().max())
            worst_omega = max(worst_omega, gap)
            assert torch.allclose(raw.head(layer, head).omega(), _omega_raw(biased_gpt2.model, layer, head),
                                  atol=1e-5 * float(expected.abs().max()))
            s_ref = torch.linalg.svdvals(expected)[:16]
            s_raw = torch.linalg.svdvals(_omega_raw(biased_gpt2.model, layer, head))[:16]
            worst_raw_gap = max(worst_raw_gap, float(((s_ref - s_raw).abs() / s_raw).max()))
    print(f"reference basis vs TransformerLens: max |x - hook_normalized| {worst_x:.1e}, max |Omega - Omega_TL| / "
          f"max |Omega_TL| {worst_omega:.1e}; singular values raw vs reference differ by up to {worst_raw_gap:.0%}")
    assert worst_x < 1e-4 and worst_omega < 1e-5
    assert worst_raw_gap > 0.05  # the two bases really differ on this model (not by a common factor)


def _covering(values: torch.Tensor, coverage: float) -> set[int]:
    """The reference's rule: largest first until the running sum exceeds coverage of the total."""
    order = torch.argsort(values, descending=True)
    running, kept = 0.0, set()
    for index in order.tolist():
        kept.add(index)
        running += float(values[index])
        if running > coverage * float(values.sum()):
            break
    return kept


@pytest.mark.parametrize("attribution", ["score"])
def test_reference_basis_firings_rebuilt_from_transformer_lens(biased_gpt2, folded, attribution):
    """Components and upstream-head shares of every firing, recomputed from the bridge's processed weights and
    cache: SVD of Omega_TL, terms on hook_normalized, covectors carried to hook_z @ W_O / hook_scale."""
    bridge, cache, trace = folded
    result = circuits.analyse(trace, model=biased_gpt2, firing_threshold=0.3, attribution=attribution)
    assert result.options["basis"] == "reference" and result.stats["firings"] > 10
    n_heads, checked, worst, edges = trace.n_heads(), 0, 0.0, 0
    for firing in result.firings:
        layer, head, i, j = firing["layer"], firing["head"], firing["query"], firing["key"]
        if layer == 0:
            continue
        u, s, vt = torch.linalg.svd(_omega_tl(bridge, layer, head))
        u, s, v = u[:, :16], s[:16], vt[:16].T
        x = torch.cat([cache[f"blocks.{layer}.ln1.hook_normalized"][0].double(),
                       torch.ones(len(trace.tokens), 1, dtype=torch.float64)], -1)
        terms = s * (x[i] @ u) * (x[j] @ v)
        assert abs(float(terms.sum()) - firing["score"]) < 1e-4 * max(1.0, abs(firing["score"]))
        order = torch.argsort(terms, descending=True)
        reached = (torch.cumsum(terms[order], 0) >= terms.sum() * (1 - 1e-4)).nonzero()
        kept = order[:int(reached[0]) + 1]
        assert abs(float(terms[kept].sum()) - firing["kept_score"]) < 1e-4 * max(1.0, abs(firing["score"]))
        assert sorted(kept.tolist()) == sorted(firing["components"])  # same SVD order: distinct singular values
        a = (u[:, kept] * (s[kept] * (x[j] @ v[:, kept]))).sum(-1)  # query-side covector
        b = (v[:, kept] * (s[kept] * (x[i] @ u[:, kept]))).sum(-1)  # key-side covector
        for side, position, covector in (("q", i, a), ("k", j, b)):
            scale = float(cache[f"blocks.{layer}.ln1.hook_scale"][0, position, 0])
            values = torch.zeros(layer * n_heads, dtype=torch.float64)
            for upstream in range(layer):
                z = cache[f"blocks.{upstream}.attn.hook_z"][0, position].double()  # [head, d_head]
                out = torch.einsum("he,hed->hd", z, bridge.W_O[upstream].detach().double())
                values[upstream * n_heads:(upstream + 1) * n_heads] = out @ covector[:-1] / scale
            whole = float(terms[kept].sum())
            shares = values / whole
            expected = {k: float(shares[k]) for k in _covering(values, 0.7) if shares[k] >= 0.02} \
                if float(values.sum()) > 0 and whole > 0 else {}
            ours = {upper * n_heads + h: share for upper, h, share in firing[f"{side}_upstream"]}
            assert set(ours) == set(expected), (firing, side, values.tolist(), whole)
            edges += len(ours)
            for k, share in ours.items():
                worst = max(worst, abs(share - expected[k]))
        checked += 1
    print(f"reference basis vs TransformerLens: {checked} firings, component sets and upstream-head sets equal, "
          f"({edges} kept upstream heads), max share difference {worst:.1e}")
    assert checked > 5 and edges > 5 and worst < 1e-4, (checked, edges, worst)


def test_bases_agree_on_scores_and_differ_in_components(biased_gpt2, folded):
    _, _, trace = folded
    reference = circuits.analyse(trace, model=biased_gpt2, firing_threshold=0.3)
    raw = circuits.analyse(trace, model=biased_gpt2, firing_threshold=0.3, basis="raw")
    assert raw.options["basis"] == "raw" and reference.options["basis"] == "reference"
    assert [f["score"] for f in raw.firings] == [f["score"] for f in reference.firings]
    assert raw.stats["max_completeness_error"] < 1e-4 and reference.stats["max_completeness_error"] < 1e-4
    assert any(r["components"] != f["components"] for r, f in zip(raw.firings, reference.firings))


def test_unknown_basis_is_refused(biased_gpt2, folded):
    with pytest.raises(InputError, match="--basis must be one of reference, raw"):
        circuits.analyse(folded[2], model=biased_gpt2, basis="folded")


def test_cli_basis_option_is_recorded_and_checked_first(tmp_path, models):
    """`workbench circuits --basis`: the choice lands in the JSON options, the default is the reference's, and a
    bad name is one error line (exit 2) before the bundle or the weights are read."""
    from tests.workbench.cli.cli_inprocess import run_cli

    bundle = tmp_path / "p.wbtrace"
    workbench.trace(models("planted-induction"), "f x r c e l f x r c e l", raw=True,
                    decomposition=True).save(bundle)
    for extra, expected in (((), "reference"), (("--basis", "raw"), "raw")):
        code, out, _ = run_cli("circuits", bundle, "--json", "-", "--no-store", *extra)
        assert code == 0 and json.loads(out)["options"]["basis"] == expected
    code, out, err = run_cli("circuits", tmp_path / "missing.wbtrace", "--basis", "folded")
    assert code == 2 and out == "" and err.strip().count("\n") == 0 and "--basis must be one of" in err


def test_reference_basis_on_rope_with_rmsnorm_gains(models):
    """RoPE + RMSNorm (no reference implementation): the folded basis (x = r / rms, gain folded into W_Q and
    W_K, nothing centred) still reproduces the model's pre-softmax scores at every offset, and its Omega is
    diag(gain) Omega_raw diag(gain) on the d_model block (checked on heads' offset-0 forms)."""
    from workbench.models.tiny import tiny_llama

    loaded = tiny_llama()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, parameter in loaded.model.named_parameters():
            if "norm" in name:
                parameter.mul_(1 + 0.5 * torch.rand(parameter.shape, generator=generator))
    trace = workbench.trace(loaded, "abcabd abcabd", raw=True, decomposition=True)
    reference = circuits.analyse(trace, model=loaded, firing_threshold=0.3)
    raw = circuits.analyse(trace, model=loaded, firing_threshold=0.3, basis="raw")
    assert reference.stats["max_reconstruction_error"] < 1e-5 and reference.stats["max_completeness_error"] < 1e-4
    assert any(a["components"] != b["components"] for a, b in zip(reference.firings, raw.firings))
    for layer in range(trace.n_layers()):
        gain = loaded.model.model.layers[layer].input_layernorm.weight.detach().double()
        scale = torch.cat([gain, torch.ones(1, dtype=torch.float64)])
        for head in (0, trace.n_heads() - 1):
            folded = circuits.omega_forms(loaded).head(layer, head).omega(0)
            expected = scale[:, None] * circuits.omega_forms(loaded, "raw").head(layer, head).omega(0) * scale[None]
            assert torch.allclose(folded, expected, atol=1e-6 * float(expected.abs().max()))
