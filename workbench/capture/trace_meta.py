"""The manifest of a fresh trace: model, inputs, generation, dims, what the capture recorded and ran, and the
numerics verdict. Built by `Tracer.trace` for every backend, so all bundles carry the same manifest."""

from __future__ import annotations

import datetime

from workbench.traces.tokens import REGIONS
from workbench.version import __version__


def trace_meta(loaded, prepared, tokens, prompt_length, max_new_tokens, layout, plan, recorder) -> dict:
    import transformers

    generated = tokens[prompt_length:]
    stacks = {
        name: {"layers": stack.n_layers, "heads": stack.n_heads, "kv_heads": stack.n_kv_heads,
               "d_model": stack.d_model, "positions": recorder.length.get(name, 0)}
        for name, stack in layout.stacks.items() if name in recorder.length
    }
    for name, stack in layout.stacks.items():
        if name in stacks and stack.tiles is not None and name not in recorder.key_capacity:
            stacks[name]["tile_positions"] = list(stack.tiles)  # Mllama's tower: padded tiles end to end
    for name, n_keys in recorder.key_capacity.items():  # rows are the text's, keys the image features
        from workbench.models.image_tokens import cross_key_places

        stacks[name]["key_positions"] = n_keys
        stacks[name]["key_places"] = [[place.tile, *(place.patch or ())]
                                      for place in cross_key_places(loaded.model.config, n_keys)]
    return {
        "workbench_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": loaded.name, "source": loaded.source, "revision": loaded.revision, "kind": loaded.kind,
                  "rope_scaling": loaded.extra.get("rope_scaling"), "trained_positions": loaded.extra.get("trained_positions") or loaded.max_positions,
                  "architecture": type(loaded.model).__name__, "dtype": loaded.dtype, "device": loaded.device,
                  "transformers_version": transformers.__version__},
        "inputs": {k: v for k, v in prepared.meta.items()},
        "generation": {"text": "".join(t.text for t in generated), "start": prompt_length, "end": len(tokens),
                       "max_new_tokens": max_new_tokens, "strategy": "greedy",
                       "note": "the token at position p was predicted by query row p - 1"},
        "dims": {"tokens": len(tokens), "regions": list(REGIONS), "stacks": stacks},
        # kernels_run: per stack, how many attention calls each statistics implementation served; "one-pass"
        # calls computed the layer output too (equal to SDPA's up to fp32 rounding, not bit-identical);
        # kernel_fallbacks: per stack, why calls that "auto" would have given the one-pass kernel took two passes
        "capture": {**plan.to_json(), "kernels_run": recorder.kernels_run,
                    "kernel_fallbacks": recorder.kernel_fallbacks},
        "checks": numerics_checks(recorder),
    }


def numerics_checks(recorder) -> dict:
    """The manifest's numerics verdict (see workbench/traces/health.py): healthy, and what failed where."""
    from workbench.traces.health import Z_TOLERANCE

    non_finite, error, missing, flagged = recorder.checks()
    return {"max_normaliser_error": error if error != float("inf") else 1e308, "non_finite": non_finite,
            "unrecorded_rows": missing,
            "healthy": non_finite == 0 and missing == 0 and error < Z_TOLERANCE, "z_tolerance": Z_TOLERANCE,
            "flagged": flagged}
