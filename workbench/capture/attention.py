"""The "workbench" attention implementation registered with transformers' AttentionInterface.

While a recorder is active it hands post-RoPE queries and keys, the mask and the scaling to it. Which
statistics kernel runs is decided by `kernel_choice.choose` (once per forward and kind of call, through
`recorder.kernel_for`): the one-pass CPU kernel computes the layer output and its statistics together (output
equal to SDPA's up to fp32 rounding); every other choice keeps the very SDPA path transformers uses
(bit-identical logits) and computes the statistics in a second pass.
While an edit is active (an intervention runtime, `workbench.interventions`, or an observer such as VHD's),
each layer's output is handed to `edit.apply(...)` before it goes on. Models switch to this implementation
with `model.set_attn_implementation("workbench")`; nothing relies on `output_attentions`.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref

from workbench.errors import InputError

IMPLEMENTATION_NAME = "workbench"
_active_recorder: contextvars.ContextVar = contextvars.ContextVar("workbench_recorder", default=None)
_active_edit: contextvars.ContextVar = contextvars.ContextVar("workbench_edit", default=None)
_registered = False


def _workbench_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                         **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    recorder = _active_recorder.get()
    edit = _active_edit.get()
    if recorder is None:  # SDPA's output, then the edit (if any)
        output, weights = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                                 scaling=scaling, is_causal=is_causal, **kwargs)
        if edit is None:
            return output, weights
        return _edit(edit, module, query, key, value, attention_mask, scaling, is_causal, output), None
    if getattr(recorder, "splits_rows", False):  # a padded batch: each row goes, unpadded, to its own recorder
        return recorder.attend_rows(module, query, key, value, attention_mask, lambda row_recorder, *row: (
            _attend_recorded(row_recorder, edit, module, *row, dropout=dropout, scaling=scaling, is_causal=is_causal,
                             **kwargs))), None
    return _attend_recorded(recorder, edit, module, query, key, value, attention_mask, dropout=dropout,
                            scaling=scaling, is_causal=is_causal, **kwargs), None


def _attend_recorded(recorder, edit, module, query, key, value, attention_mask, *, dropout, scaling, is_causal,
                     **kwargs):
    """The layer output [batch, query_pos, head, d_head] of one call, its statistics recorded into `recorder`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("softcap") is not None:
        raise InputError("this model soft-caps attention logits, which the workbench capture does not support yet")
    if kwargs.get("position_bias") is not None:
        raise InputError("this model adds a learned position bias to attention, which capture does not support yet")
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    call = recorder.locate_call(module, query, key)
    # The statistics read the very mask SDPA gets (for a sliding-window layer transformers' mask holds the
    # window; with a sliding KV cache `key` holds only the cached window, which locate_call places).
    mask = recorder.mask_for(attention_mask, causal=causal, n_queries=query.shape[2], n_keys=key.shape[2])
    biased = recorder.mask_adds_bias(attention_mask, causal=causal, n_queries=query.shape[2], n_keys=key.shape[2])
    choice = recorder.kernel_for(recorder.plan.kernel, query, key, value, mask=mask, biased_mask=biased,
                                 wants_maps=call["map_heads"] is not None, editing=edit is not None, dropout=dropout)
    kernel = choice.implementation
    if kernel == "one-pass":
        return recorder.attend_fused(call, query=query, key=key, value=value, scaling=scaling, mask=mask)
    output, log_normaliser = _forward_with_log_normaliser(query, key, value, attention_mask, scaling, causal, dropout)
    if output is None:  # a case the CPU lse path does not cover: transformers' own path, lse left to the stats
        output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                           scaling=scaling, is_causal=is_causal, **kwargs)
    if edit is not None:
        output = _edit(edit, module, query, key, value, attention_mask, scaling, is_causal, output)
    recorder.on_attention(
        call, query=query, key=key, attention_mask=attention_mask, scaling=scaling, causal=causal,
        attn_output=output, log_normaliser=log_normaliser, value=value, kernel=kernel, fallback=choice.fallback,
    )
    return output


def _edit(edit, module, query, key, value, attention_mask, scaling, is_causal, output):
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    return edit.apply(module, query=query, key=key, value=value, attention_mask=attention_mask,
                      scaling=scaling, causal=causal, output=output)


def _forward_with_log_normaliser(query, key, value, attention_mask, scaling, causal, dropout):
    """The layer output exactly as SDPA computes it, plus the row log-sum-exp the statistics reuse.

    Mirrors transformers' SDPA call: is_causal only with several queries and no mask. On CPU the fused
    flash kernel behind F.scaled_dot_product_attention returns the lse as well (bit-identical output;
    the tests compare logits with capture on and off). Returns (None, None) where that does not apply.
    """
    from workbench.kernels import sdpa_with_log_normaliser

    if dropout or query.device.type != "cpu" or key.shape[-1] != value.shape[-1]:
        return None, None
    n_queries = query.shape[2]
    mask = attention_mask[..., : key.shape[2]] if attention_mask is not None else None
    output, log_normaliser = sdpa_with_log_normaliser(
        query, key, value, scaling=scaling, attn_mask=mask, is_causal=causal and n_queries > 1 and mask is None,
    )
    if log_normaliser is None:
        return None, None
    return output.transpose(1, 2).contiguous(), log_normaliser


def register() -> str:
    """Register the implementation (idempotent) and return its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface, AttentionMaskInterface
        from transformers.masking_utils import sdpa_mask

        AttentionInterface.register(IMPLEMENTATION_NAME, _workbench_attention)
        AttentionMaskInterface.register(IMPLEMENTATION_NAME, sdpa_mask)
        _registered = True
    return IMPLEMENTATION_NAME


# model -> [(config, the implementation name set_attn_implementation gave it)] of every config its attention
# modules read: what switching to the workbench implementation sets, found once per model (see `_switched`)
_SWITCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _switch_of(model) -> list[tuple[object, str]]:
    """Every config of `model` (its own, sub-configs, sub-models') with the value `set_attn_implementation` gives
    it for the workbench implementation. That call walks every module (and checks each sub-model) each time,
    ~0.1 ms twice per capture of a small model; its outcome depends on the model's structure alone, so it runs
    once per model and later switches set the recorded values."""
    if model not in _SWITCHES:
        configs = {id(model.config): model.config}
        pending = [model.config]
        while pending:  # sub-configs at any depth (a VLM's text and vision configs)
            config = pending.pop()
            for name in getattr(config, "sub_configs", {}):
                sub = getattr(config, name, None)
                if sub is not None and id(sub) not in configs:
                    configs[id(sub)] = sub
                    pending.append(sub)
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None and hasattr(config, "_attn_implementation_internal"):
                configs.setdefault(id(config), config)
        before = {key: config._attn_implementation_internal for key, config in configs.items()}
        model.set_attn_implementation(IMPLEMENTATION_NAME)
        _SWITCHES[model] = [(config, config._attn_implementation_internal) for config in configs.values()]
        for key, config in configs.items():
            config._attn_implementation_internal = before[key]
    return _SWITCHES[model]


@contextlib.contextmanager
def _switched(model):
    """`model`'s attention through the workbench implementation while inside; each config's previous value is
    restored on exit."""
    switch = _switch_of(model)
    previous = [config._attn_implementation_internal for config, _ in switch]
    for config, value in switch:
        config._attn_implementation_internal = value
    try:
        yield
    finally:
        for (config, _), value in zip(switch, previous, strict=True):
            config._attn_implementation_internal = value


@contextlib.contextmanager
def _routed(model, variable: contextvars.ContextVar, value, install_hooks):
    """Route `model`'s attention through the workbench implementation while `variable` holds `value`.

    install_hooks() returns hook handles, removed on exit; the model's previous implementation is restored.
    """
    register()
    with _switched(model):
        token = variable.set(value)
        handles = install_hooks()
        try:
            yield value
        finally:
            variable.reset(token)
            for handle in handles:
                handle.remove()


def capturing(model, recorder):
    """Route every attention call of `model` through the workbench implementation, recording into `recorder`."""
    return _routed(model, _active_recorder, recorder, lambda: recorder.install_hooks() if recorder is not None else [])


def editing(model, edit):
    """Route `model`'s attention through the workbench implementation and hand each layer's output to
    `edit.apply(module, *, query, key, value, attention_mask, scaling, causal, output)`; `edit.install(model)`
    returns hook handles, removed on exit. A no-op for edit=None (the model's own attention path)."""
    if edit is None:
        return contextlib.nullcontext()
    return _routed(model, _active_edit, edit, lambda: edit.install(model))
