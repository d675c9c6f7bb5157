"""Turn a prompt (and image) into model inputs plus one labelled `Token` per input position.

Chat templates are applied when the model has one (unless raw). Regions come from character offsets in
the rendered text: the user's prompt -> "prompt", the system message (given or the template's default)
-> "system", image placeholders -> "image" with their patch (row, col), everything else (special tokens,
role names, separators) -> "special".
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.capture.vision_inputs import check_vision_request, vision_input
from workbench.errors import InputError
from workbench.images import open_rgb, read_image_file
from workbench.models.loaded import LoadedModel
from workbench.traces.tokens import Token

_SYSTEM_MARK = "\u00a7"


@dataclass
class PreparedInput:
    input_ids: torch.Tensor  # [1, query_pos]
    model_inputs: dict  # extra forward kwargs (pixel_values, attention_mask)
    tokens: list[Token]
    meta: dict  # prompt, system, raw, chat_template, image {sha256, width, height, source}
    image: object = None  # the RGB PIL image the processor saw (stored in the bundle as inputs.image)
    offsets: list | None = None  # (start, end) characters of every position in meta["text"]
    spans: object = None  # user spans placed on the tokens (`workbench.capture.spans.TokenSpans`), or None

    def image_positions(self) -> list[int]:
        """Positions of the image tokens in the input."""
        return [token.i for token in self.tokens if token.region == "image"]

    def image_tensors(self) -> dict[str, tuple[torch.Tensor, tuple[str, ...]]]:
        """The input image as a bundle tensor ([height, width, channel] uint8), so a bundle is self-contained."""
        if self.image is None:
            return {}
        import numpy as np

        pixels = torch.from_numpy(np.array(self.image, dtype=np.uint8, copy=True))
        return {"inputs.image": (pixels, ("height", "width", "channel"))}


def load_image(image):
    """A PIL RGB image from a path or a PIL image, with a clear error for anything else."""
    from PIL import Image

    if isinstance(image, Image.Image):
        rgb = image.convert("RGB")
        return rgb, {"sha256": hashlib.sha256(rgb.tobytes()).hexdigest(), "source": "in-memory image",
                     "width": rgb.width, "height": rgb.height}
    path = Path(os.fspath(image)).expanduser()
    data = read_image_file(path)
    rgb, _ = open_rgb(data, what=str(path))
    return rgb, {"sha256": hashlib.sha256(data).hexdigest(), "source": str(path), "width": rgb.width,
                 "height": rgb.height}


def _render(holder, messages, add_generation_prompt: bool) -> str:
    return holder.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _default_system_span(holder, messages, text: str, add_generation_prompt: bool) -> tuple[int, int] | None:
    """Where a template's built-in system prompt sits in `text`: diff against a render with a marker system."""
    try:
        marked = _render(holder, [{"role": "system", "content": _SYSTEM_MARK}] + messages, add_generation_prompt)
    except Exception:  # templates without a system role
        return None
    prefix = len(os.path.commonprefix([text, marked]))
    suffix = len(os.path.commonprefix([text[prefix:][::-1], marked[prefix:][::-1]]))
    middle = (prefix, len(text) - suffix)
    return middle if text[middle[0]:middle[1]].strip() else None


def _spans(text: str, prompt: str, system: str | None, default_system: tuple[int, int] | None):
    prompt_start = text.rfind(prompt)
    prompt_span = (prompt_start, prompt_start + len(prompt)) if prompt_start >= 0 else (0, len(text))
    if system:
        start = text.find(system)
        system_span = (start, start + len(system)) if start >= 0 else None
    else:
        system_span = default_system
    return prompt_span, system_span


def _overlaps(span, start: int, end: int) -> bool:
    return span is not None and start < span[1] and end > span[0]


def prepare_input(loaded: LoadedModel, prompt: str, image=None, *, system: str | None = None,
                  raw: bool = False) -> PreparedInput:
    if loaded.kind == "vision":  # an image encoder: pixels in, [CLS] / registers / patches out, no text
        check_vision_request(loaded, prompt, image)
        pil_image, image_meta = load_image(image)
        return PreparedInput(*vision_input(loaded, pil_image, image_meta), image=pil_image)
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty; pass some text with --prompt")
    if image is not None and loaded.kind != "vlm":
        raise InputError(f"{loaded.name} is a text-only model and cannot take an image; drop --image or use a "
                         "vision-language model (e.g. --model llava)")
    pil_image, image_meta = load_image(image) if image is not None else (None, None)
    holder = loaded.processor if loaded.processor is not None else loaded.tokenizer
    image_token = getattr(loaded.processor, "image_token", "<image>") if loaded.kind == "vlm" else None
    use_template = loaded.has_chat_template and not raw
    default_system = None
    if use_template:
        content = [{"type": "image"}, {"type": "text", "text": prompt}] if pil_image is not None else prompt
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        add_prompt = loaded.kind != "encoder"
        text = _render(holder, messages, add_prompt)
        if not system:
            default_system = _default_system_span(holder, messages, text, add_prompt)
    else:
        text = (f"{image_token}\n" if pil_image is not None else "") + (f"{system}\n" if system else "") + prompt
    if pil_image is not None:
        encoded = loaded.processor(text=text, images=pil_image, return_tensors="pt", return_offsets_mapping=True,
                                   return_text_replacement_offsets=True)
        replacements = (encoded.pop("text_replacement_offsets", None) or [[]])[0]
        n_image_tokens = int((encoded["input_ids"] == loaded.model.config.image_token_id).sum())
        # Offsets refer to the text the processor laid out (PaliGemma adds BOS and a newline) and then expanded
        # each image placeholder in.
        text = _expanded(_laid_out(loaded.processor, text, pil_image), replacements, image_token, n_image_tokens)
    else:
        encoded = loaded.tokenizer(text, return_tensors="pt", return_offsets_mapping=True)
    input_ids = encoded["input_ids"]
    offsets = encoded.pop("offset_mapping")[0].tolist()
    tokens = _label_tokens(loaded, input_ids[0].tolist(), offsets, text, prompt, system, default_system,
                           dict(encoded, text_replacements=replacements) if pil_image is not None else None)
    model_inputs = {key: value for key, value in encoded.items()
                    if key not in ("input_ids", "attention_mask", "labels")}  # (PaliGemma's processor adds labels)
    if loaded.kind == "encoder" and "token_type_ids" in encoded:
        model_inputs["token_type_ids"] = encoded["token_type_ids"]
    meta = {"prompt": prompt, "system": system, "raw": raw, "chat_template": use_template, "text": text,
            "image": image_meta}
    return PreparedInput(input_ids, model_inputs, tokens, meta, pil_image, offsets)


def _laid_out(processor, text: str, image) -> str:
    """The text as the processor lays it out before expanding placeholders (its `prepare_inputs_layout`: most
    return it as is, PaliGemma's puts BOS after the image and a newline at the end)."""
    layout = getattr(processor, "prepare_inputs_layout", None)
    if layout is None:
        return text
    laid = layout(images=image, text=text)[1]
    return laid[0] if isinstance(laid, (list, tuple)) else laid


def _expanded(text: str, replacements: list[dict], image_token: str, n_image_tokens: int) -> str:
    """`text` with its image placeholders expanded as the processor did: from the processor's own replacement
    record where it gives one, else each placeholder repeated once per image token (LLaVA's expansion)."""
    if not replacements:
        return text.replace(image_token, image_token * max(n_image_tokens, 1))
    out, done = [], 0
    for replacement in sorted(replacements, key=lambda r: r["span"][0]):
        start, end = replacement["span"]
        out += [text[done:start], replacement["replacement"]]
        done = end
    return "".join(out) + text[done:]


def _label_tokens(loaded, ids, offsets, text, prompt, system, default_system, encoded=None) -> list[Token]:
    """One Token per position; image tokens get their patch (and tile) from the family's layout
    (`workbench.models.image_tokens`), read off the processor's output `encoded`."""
    from workbench.models.image_tokens import image_token_places
    prompt_span, system_span = _spans(text, prompt, system, default_system)
    special_ids = set(loaded.tokenizer.all_special_ids)
    image_id = getattr(loaded.model.config, "image_token_id", None) if loaded.kind == "vlm" else None
    n_image = sum(1 for token_id in ids if token_id == image_id)
    places = image_token_places(loaded.model.config, encoded, n_image) if n_image and encoded is not None else []
    tokens, image_index = [], 0
    for i, (token_id, (start, end)) in enumerate(zip(ids, offsets)):
        piece = text[start:end] if end > start else loaded.tokenizer.decode([token_id])
        patch = tile = None
        if token_id == image_id:
            region = "image"
            if image_index < len(places):
                patch, tile = places[image_index].patch, places[image_index].tile
            image_index += 1
        elif token_id in special_ids or end <= start:
            region = "special"
        elif _overlaps(prompt_span, start, end):
            region = "prompt"
        elif _overlaps(system_span, start, end):
            region = "system"
        else:
            region = "special"
        tokens.append(Token(i, int(token_id), piece, region, patch, tile))
    return tokens
