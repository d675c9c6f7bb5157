"""The transformers backend: every attention call goes through the registered "workbench" implementation
(`workbench/capture/attention.py`), and generation runs with the KV cache, recording each new token's row."""

from __future__ import annotations

import torch

from workbench.capture import heap
from workbench.capture.attention import IMPLEMENTATION_NAME, capturing, editing
from workbench.capture.backends.captured import Captured
from workbench.capture.generation import CachedDecoder, forward_inputs, greedy
from workbench.capture.layout import discover_layout
from workbench.capture.predictions import PREDICTION_AXES, Predictions
from workbench.capture.recorder import Recorder
from workbench.errors import InputError
from workbench.models.loaded import LoadedModel
from workbench.traces.names import tensor_name
from workbench.traces.tokens import REGIONS, Token

# Above this many prompt logits (positions x vocabulary) only the last prompt row's prediction is kept.
MAX_PROMPT_LOGITS = 64 * 1024 * 1024


class HFBackend:
    name = "hf"
    accepts_images = True

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.layout = discover_layout(loaded.model)

    def hf_model(self):
        return self.loaded.model

    def capture(self, prepared, plan, *, max_new_tokens: int, eos: set[int], edit=None, progress=None,
                continuation=None) -> Captured:
        """continuation: generate these token ids instead of the argmax (at most max_new_tokens of them)."""
        loaded = self.loaded
        prompt_length = prepared.input_ids.shape[1]
        capacity = prompt_length + max_new_tokens
        recorder = Recorder(self.layout, plan, text_capacity=capacity, prompt_length=prompt_length)
        if prepared.spans is not None:
            recorder.set_spans(prepared.spans.ids, len(prepared.spans.spans))
        recorder.set_regions("text", torch.tensor([REGIONS.index(t.region) for t in prepared.tokens]))
        tokens = list(prepared.tokens)
        predictions = Predictions(capacity)
        generated = REGIONS.index("generated")
        forward = forward_inputs(loaded, prepared.input_ids, prepared.model_inputs)
        final = None
        with torch.inference_mode(), capturing(loaded.model, recorder), editing(loaded.model, edit):
            recorder.begin_step(0, prompt_length)
            prompt_forward = heap.long_input(prompt_length)  # entered by the one branch that runs the prompt
            if loaded.kind == "vision":
                with prompt_forward:
                    output = loaded.model(**forward, output_hidden_states=plan.hidden_states)
                final = _final_residual(output, plan)
            elif loaded.kind == "encoder":
                with prompt_forward:
                    loaded.model(**forward)
            else:
                decoder = CachedDecoder(loaded.model)
                keep_all = prompt_length * loaded.text_config.vocab_size <= MAX_PROMPT_LOGITS
                with prompt_forward:
                    output = decoder.start(forward, all_logits=keep_all)
                predictions.record_rows(output.logits[0], prepared.input_ids[0], prompt_length)

                def on_token(step: int, token_id: int, logits: torch.Tensor) -> None:
                    position = prompt_length + step
                    if progress:
                        progress(step + 1, max_new_tokens + 1)
                    predictions.record_token(position, token_id, logits)
                    tokens.append(Token(position, token_id, loaded.tokenizer.decode([token_id]), "generated"))
                    recorder.set_regions("text", torch.tensor([generated]), start=position)
                    recorder.begin_step(position, 1)

                def feed(token_id: int) -> torch.Tensor:
                    logits = decoder.feed(token_id)
                    predictions.record_row_entropy(recorder.step_start, logits)
                    return logits

                greedy(output.logits[0, -1], feed, max_new_tokens=max_new_tokens, eos=eos, feed_last=True,
                       on_token=on_token, continuation=continuation)
        if progress:
            progress(max_new_tokens + 1, max_new_tokens + 1)
        tensors = recorder.tensors()
        if not any(name.endswith(".key_mass") for name in tensors):
            raise InputError(f"no attention call of {loaded.name} went through the workbench implementation (was the "
                             "model rewired, e.g. by a TransformerLens bridge, or is its attention not pluggable?); "
                             "load a fresh copy of the model")
        tensors.update(predictions.tensors(len(tokens)))
        if loaded.kind == "vision" and final is not None:
            tensors[tensor_name("text", self.layout.stacks["text"].n_layers - 1, "hidden_out")] = final
        return Captured(tokens, tensors, recorder, self.layout, IMPLEMENTATION_NAME)


def _final_residual(output, plan):
    """A vision encoder's residual stream after its last layer (before the final norm) as a bundle tensor, kept with
    hidden_states: the output norms of every layer are then hidden_in of the next layer, and this one for the last."""
    if not plan.hidden_states:
        return None
    return output.hidden_states[-1][0].detach().float().cpu(), ("query_pos", "d_model")


__all__ = ["HFBackend", "MAX_PROMPT_LOGITS", "PREDICTION_AXES"]
