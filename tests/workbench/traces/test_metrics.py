"""One definition per derived quantity: the JSON export, sweep features, the app and the probe features give
identical values of Gu's alpha, Sink^eps, the Lookback ratio and region shares on the same bundle, and those
values equal a dense computation from the bundle's stored maps, written here from the definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from workbench.app.data.metrics import (
    key_alpha,
    sink_keys,
    statistics_metrics,
    token_lookback,
    token_region_shares,
)
from workbench.probes.features import token_features

import workbench
from workbench.analyses import sinks
from workbench.scale.features import head_rows, layer_head_rows
from workbench.traces import metrics
from workbench.traces.summary import layer_summary
from workbench.traces.tokens import REGIONS

GENERATED = REGIONS.index("generated")


# --------------------------------------------------------------------------------------- the dense reference
def dense_reference(trace, eps: float = 0.3) -> dict[str, np.ndarray]:
    """Every quantity from the stored maps [head, query_pos, key_pos] of a causal stack, with plain loops.

    alpha[layer, head, k]     sum of column k over the queries that see k (q >= k), divided by their number
    sink_percent[k]           100 x fraction of (layer, head) with alpha > eps (Gu et al.'s Sink^eps)
    lookback[layer, head, t]  C / (C + N) on the row predicting generated token t: C the mean weight on
                              visible non-generated keys, N the mean on visible generated keys (0 if none),
                              0.5 when C + N = 0
    shares[layer, head, r]    mean over all rows of the row's summed weight on region r; gen_shares the same
                              over the rows predicting generated tokens
    """
    regions = np.array([REGIONS.index(token.region) for token in trace.tokens])
    n = len(regions)
    start, end = trace.generation["start"], trace.generation["end"]
    rows = list(range(start - 1, end - 1))
    n_layers, n_heads = trace.n_layers(), trace.n_heads()
    alpha = np.zeros((n_layers, n_heads, n))
    lookback = np.zeros((n_layers, n_heads, len(rows)))
    shares = np.zeros((n_layers, n_heads, len(REGIONS)))
    gen_shares = np.zeros((n_layers, n_heads, len(REGIONS)))
    for layer in range(n_layers):
        maps = trace.layer(layer)["maps"].double().numpy()
        for head in range(n_heads):
            a = maps[head]
            for k in range(n):
                alpha[layer, head, k] = a[k:, k].sum() / (n - k)
            per_row = np.array([[a[q, regions == r].sum() for r in range(len(REGIONS))] for q in range(n)])
            shares[layer, head] = per_row.mean(0)
            if rows:
                gen_shares[layer, head] = per_row[rows].mean(0)
            for t, row in enumerate(rows):
                visible = np.arange(n) <= row
                context = visible & (regions != GENERATED)
                generated = visible & (regions == GENERATED)
                c = a[row, context].mean() if context.any() else 0.0
                g = a[row, generated].mean() if generated.any() else 0.0
                lookback[layer, head, t] = c / (c + g) if c + g > 0 else 0.5
    percent = 100.0 * (alpha > eps).mean((0, 1))
    return {"alpha": alpha, "sink_percent": percent, "lookback": lookback, "shares": shares,
            "gen_shares": gen_shares, "rows": np.array(rows)}


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-llava"])
def bundle(request, models, tmp_path_factory):
    """A real capture with generated tokens and every map in float32, saved and loaded back as a bundle."""
    folder = tmp_path_factory.mktemp(request.param)
    image = None
    if request.param == "tiny-llava":
        image = folder / "scene.png"
        Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    trace = workbench.trace(models(request.param), "Anna's code is 4821. Ben's code is 1234. What is Ben's code?",
                            image, max_new_tokens=6, maps="all", map_dtype="float32")
    assert trace.generation["end"] - trace.generation["start"] == 6
    trace.save(folder / "t.wbtrace")
    loaded = workbench.load(folder / "t.wbtrace")
    # Every path below averages alpha over all query rows; the sinks analysis does so by name (its default, the
    # prompt rows of Gu et al.'s reference, is tested in tests/analyses/test_sink_conventions.py).
    loaded.add_result("sinks", sinks.analyse(loaded, query_rows="all").to_json())
    return loaded


def test_the_sink_epsilon_is_gu_et_al_default():
    assert metrics.SINK_EPSILON == 0.3


def test_four_paths_give_identical_values_equal_to_the_dense_maps(bundle):
    trace = bundle
    reference = dense_reference(trace)
    n_layers, n_heads, n = trace.n_layers(), trace.n_heads(), len(trace.tokens)
    present = sorted({REGIONS.index(token.region) for token in trace.tokens})
    image = REGIONS.index("image")
    rows = reference["rows"]
    assert np.array_equal(metrics.predicting_rows(trace).numpy(), rows)

    # ---- path 1: the JSON export (statistics summary + the stored sinks result)
    exported = trace.to_json()
    summary = exported["summary"]["text"]
    heads_json = [[summary[layer]["heads"][head] for head in range(n_heads)] for layer in range(n_layers)]
    json_alpha0 = np.array([[h["alpha_first"] for h in heads] for heads in heads_json])
    json_sink0 = 100.0 * np.mean([[0 in h["sink_keys"] for h in heads] for heads in heads_json])
    json_sink_percent = np.array(exported["results"]["sinks"]["sink_percent"])
    json_lookback = np.array([[h["generated_rows_lookback_ratio"] for h in heads] for heads in heads_json])
    json_shares = {r: np.array([[h["region_share"][REGIONS[r]] for h in heads] for heads in heads_json])
                   for r in present}
    json_gen_shares = {r: np.array([[h["generated_rows_region_share"][REGIONS[r]] for h in heads]
                                    for heads in heads_json]) for r in present}

    # ---- path 2: the sweep's per-head features
    sweep = {(row["layer"], row["head"]): row for row in head_rows(trace) if row["stack"] == "text"}
    sweep_alpha0 = np.array([[sweep[layer, head]["sink_score"] for head in range(n_heads)] for layer in range(n_layers)])
    sweep_sink0 = 100.0 * np.mean([[sweep[layer, head]["sink"] for head in range(n_heads)] for layer in range(n_layers)])
    sweep_lookback = np.array([[sweep[layer, head]["lookback_ratio"] for head in range(n_heads)]
                               for layer in range(n_layers)])
    sweep_shares = {r: np.array([[sweep[layer, head][f"share_{REGIONS[r]}"] for head in range(n_heads)]
                                 for layer in range(n_layers)]) for r in present}
    sweep_gen_image = np.array([[sweep[layer, head]["gen_share_image"] for head in range(n_heads)]
                                for layer in range(n_layers)])

    # ---- path 3: the app (Model view metrics, Head view alpha and sink keys, Hallucination page ratios)
    app = statistics_metrics(trace)
    app_alpha = np.stack([key_alpha(trace, "text", layer) for layer in range(n_layers)])
    app_sink_percent = 100.0 * np.array([np.mean([[k in sink_keys(trace, "text", layer, head) for head in range(n_heads)]
                                                  for layer in range(n_layers)]) for k in range(n)])
    app_token_lookback = token_lookback(trace)  # [layer, head, generated token]
    app_token_shares = np.stack([token_region_shares(trace, int(row)) for row in rows], -1)  # [layer, head, region, t]

    # ---- path 4: the probe features (Lookback Lens dataset columns)
    probe = token_features(trace, variants=["context"])
    probe_lookback = probe["lookback_context"].transpose(1, 2, 0)  # [layer, head, generated token]
    probe_sink0 = 100.0 * np.mean(probe["sink"] > metrics.SINK_EPSILON)

    # alpha: identical through every path (JSON rounds to 6 digits, the probe dataset stores float32)
    assert np.array_equal(sweep_alpha0, app_alpha[:, :, 0])
    assert np.array_equal(app["sink"].values, app_alpha[:, :, 0])
    assert np.array_equal(json_alpha0, np.round(app_alpha[:, :, 0], 6))
    assert np.array_equal(probe["sink"], app_alpha[:, :, 0].astype(np.float32))
    np.testing.assert_allclose(app_alpha, reference["alpha"], rtol=1e-5, atol=1e-6)

    # Sink^eps: the full vector from the sinks result and the app's sink keys; position 0 from every path
    # (the sinks result keeps Sink^eps as float32 tensors, so its JSON rounds the float32 value)
    assert np.array_equal(json_sink_percent, np.round(app_sink_percent.astype(np.float32).astype(np.float64), 6))
    np.testing.assert_allclose(app_sink_percent, reference["sink_percent"], atol=1e-9)
    assert json_sink0 == sweep_sink0 == app_sink_percent[0] == probe_sink0 == reference["sink_percent"][0]
    assert trace.model["name"] in ("tiny-llama", "tiny-llava")
    if trace.model["name"] == "tiny-llama":  # tiny-llava's random heads are near uniform: no alpha above 0.3
        assert reference["sink_percent"].max() > 0, "no sink at all: the comparison would be vacuous"

    # Lookback ratio: per generated token (app, probes) and per head over the predicting rows (JSON, sweep, app)
    assert np.array_equal(probe_lookback, app_token_lookback.astype(np.float32))
    np.testing.assert_allclose(app_token_lookback, reference["lookback"], rtol=1e-5, atol=1e-6)
    assert np.array_equal(sweep_lookback, app["lookback"].values)
    np.testing.assert_allclose(sweep_lookback, app_token_lookback.mean(-1), rtol=1e-12)  # numpy vs torch sums
    assert np.array_equal(json_lookback, np.round(sweep_lookback, 6))
    assert (app_token_lookback[..., 0] == 1.0).all(), "the first generated token's row sees no generated key"

    # region shares: over all rows (JSON, sweep, app) and over the predicting rows (JSON, sweep, app, probes)
    for r in present:
        assert np.array_equal(sweep_shares[r], app[f"share:{REGIONS[r]}"].values)
        assert np.array_equal(json_shares[r], np.round(sweep_shares[r], 6))
        np.testing.assert_allclose(sweep_shares[r], reference["shares"][..., r], rtol=1e-5, atol=1e-6)
        gen_share = app_token_shares[:, :, r].mean(-1)
        np.testing.assert_allclose(json_gen_shares[r], gen_share, rtol=0, atol=5.1e-7)  # JSON: 6 digits
        np.testing.assert_allclose(gen_share, reference["gen_shares"][..., r], rtol=1e-5, atol=1e-6)
    assert np.array_equal(json_gen_shares[GENERATED], np.round(app["gen_generated"].values, 6))
    np.testing.assert_allclose(app["gen_generated"].values, app_token_shares[:, :, GENERATED].mean(-1), rtol=1e-12)
    np.testing.assert_allclose(sweep_gen_image, app_token_shares[:, :, image].mean(-1), rtol=1e-12, atol=1e-15)
    if image in present:
        assert np.array_equal(json_gen_shares[image], np.round(sweep_gen_image, 6))
    if "share_image" in probe:
        assert np.array_equal(probe["share_image"].transpose(1, 2, 0), app_token_shares[:, :, image].astype(np.float32))
        assert reference["gen_shares"][..., image].max() > 0


# ------------------------------------------------------------------------------------------ C + N = 0
def planted_statistics() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One head, 4 positions (prompt, prompt, generated, generated) and a planted row 1 that attends to
    nothing (as a masked row would: no visible key, no mass), predicting the first generated token."""
    prompt, generated = REGIONS.index("prompt"), REGIONS.index("generated")
    region_count = torch.zeros(4, len(REGIONS))
    region_count[0, prompt] = 1
    region_count[2, prompt], region_count[2, generated] = 2, 1
    region_count[3, prompt], region_count[3, generated] = 2, 2
    region_mass = torch.zeros(1, 4, len(REGIONS))
    region_mass[0, 0, prompt] = 1.0
    region_mass[0, 2, prompt], region_mass[0, 2, generated] = 0.6, 0.4  # C = 0.3, N = 0.4
    region_mass[0, 3, prompt], region_mass[0, 3, generated] = 0.8, 0.2  # C = 0.4, N = 0.1
    stats = {"key_mass": torch.tensor([[1.8, 0.6, 0.4, 0.2]]), "key_count": torch.tensor([3, 2, 2, 1]),
             "region_mass": region_mass, "region_count": region_count,
             "entropy": torch.zeros(1, 4), "normaliser": torch.tensor([[1.0, 0.0, 1.0, 1.0]])}
    return stats, torch.tensor([1, 2])  # rows predicting the generated tokens at 2 and 3


def test_a_row_with_no_attention_on_either_set_has_ratio_one_half_on_every_path():
    stats, rows = planted_statistics()
    expected = [0.5, 0.3 / 0.7]  # C + N = 0 on row 1; C / (C + N) on row 2
    ratios = metrics.lookback_ratio(stats["region_mass"][:, rows], stats["region_count"][rows])
    assert ratios[0].tolist() == pytest.approx(expected, abs=1e-7)
    assert metrics.LOOKBACK_UNDEFINED == 0.5
    from workbench.app.data.metrics import lookback_ratio as app_lookback_ratio

    app = app_lookback_ratio(stats["region_mass"].numpy()[:, rows], stats["region_count"].numpy()[rows])
    assert app[0].tolist() == pytest.approx(expected, abs=1e-7)
    sweep = layer_head_rows(stats, rows)[0]["lookback_ratio"]
    exported = layer_summary(stats, [REGIONS.index("prompt"), GENERATED], rows)["heads"][0]
    assert sweep == pytest.approx(np.mean(expected), abs=1e-7)
    assert exported["generated_rows_lookback_ratio"] == round(sweep, 6)


def test_a_context_set_the_trace_lacks_gives_one_half_then_zero_in_the_probe_features(models):
    """The probe's "image" variant on a text-only trace: the first generated token's row sees neither an image
    key nor a generated key (C + N = 0: 0.5); later rows see generated keys only (C = 0: ratio 0)."""
    trace = workbench.trace(models("tiny-llama"), "Hello there", max_new_tokens=3)
    ratios = token_features(trace, variants=["image"])["lookback_image"]
    assert (ratios[0] == 0.5).all() and (ratios[1:] == 0.0).all()
