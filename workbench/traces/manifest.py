"""The one validator of a manifest's metadata (model, inputs, generation, dims, capture, checks, tokens), run
before a `Trace` is built from it and checked against the tensors the shards actually hold.

Everything downstream (`info`, the JSON export, the app) indexes these fields and loops over their numbers:
`range(layers)`, a grid of layers x heads, a region list of `positions` entries. So every number is type- and
range-checked here, and each size is bounded by the tensors: a manifest claiming 10^9 layers, heads or
positions, a token list that disagrees with the tensor shapes, a count that no tensor could produce, or a
value of the wrong type fails as one `BundleError` naming manifest.json, at load, never later as a hang, a
giant allocation or a KeyError deep in a view. (NaN and Infinity never get here: the manifest is read as
strict JSON.) `index` is the bundle's tensor index after the loader checked it against the shard headers.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from workbench.errors import BundleError
from workbench.traces.tokens import REGIONS, Token

_DICTS = ("model", "inputs", "generation", "dims")
_OPTIONAL_DICTS = ("capture", "checks")
_STACK_INTS = ("layers", "heads", "positions")
_LAYER_TENSOR = re.compile(r"^(?:(?P<stack>.+)\.)?layer_(?P<layer>[0-9]{1,9})\.[^.]+$")
_POSITION_AXES = ("query_pos", "key_pos")
MAX_INT = 2**53  # larger integers lose precision in JavaScript (the app) and no count gets near it
MAX_TEXT = 1 << 20  # a model name, dtype or flagged layer label longer than a megabyte is not one


def _fail(where: Path, what: str) -> BundleError:
    return BundleError(f"{where}: {what}; the bundle is corrupt, trace again")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(where: Path, value, what: str, *, at_most: int = MAX_INT, optional: bool = False) -> int | None:
    """A non-negative integer no larger than `at_most` (what the tensors can hold), else a BundleError."""
    if value is None and optional:
        return None
    if not _is_int(value) or value < 0:
        raise _fail(where, f"has {what} that is not a non-negative integer")
    if value > at_most:
        raise _fail(where, f"has {what} of {value if value < 10**18 else 'an absurd number'}, more than the "
                           f"tensors hold ({at_most})")
    return value


def _text(where: Path, value, what: str, *, optional: bool = True) -> None:
    if (value is None and optional) or (isinstance(value, str) and len(value) <= MAX_TEXT):
        return
    raise _fail(where, f"has {what} that is not a string")


def _flag(where: Path, value, what: str) -> None:
    if value is not None and not isinstance(value, bool):
        raise _fail(where, f"has {what} that is not true or false")


def check_metadata(where: Path, manifest: dict, index: dict[str, dict]) -> tuple[list[Token], dict]:
    """(tokens, meta) of a manifest whose tensor `index` (name -> {shape, axes}) matches the shards, or a
    BundleError naming `where` (the manifest file)."""
    try:
        # A lone surrogate (a JSON "\\ud800" escape) is valid JSON but no text: printing or serving it fails.
        json.dumps(manifest, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(where, "holds text that is not valid Unicode (a lone surrogate escape)") from None
    except (ValueError, RecursionError):
        raise _fail(where, "holds values JSON cannot represent") from None
    for key in _DICTS:
        if not isinstance(manifest.get(key), dict):
            raise _fail(where, f"has no {key} object")
    for key in _OPTIONAL_DICTS:
        if key in manifest and not isinstance(manifest[key], dict):
            raise _fail(where, f"has a {key} field that is not an object")
    for key in ("created", "workbench_version"):
        _text(where, manifest.get(key), key)
    dims = manifest["dims"]
    stacks = dims.get("stacks")
    if not isinstance(stacks, dict) or "text" not in stacks:
        raise _fail(where, "has no dims.stacks.text")
    raw_tokens = manifest.get("tokens")
    if not isinstance(raw_tokens, list):
        raise _fail(where, "has no token list")
    held = _held(where, index, stacks)
    _check_stacks(where, stacks, held, len(raw_tokens))
    if dims.get("tokens", len(raw_tokens)) != len(raw_tokens):
        raise _fail(where, f"lists {len(raw_tokens)} tokens but dims.tokens says {_shown(dims.get('tokens'))}")
    regions = dims.get("regions", [])
    if not isinstance(regions, list) or len(regions) > 64 or not all(isinstance(r, str) for r in regions):
        raise _fail(where, "has dims.regions that is not a short list of names")
    tokens = _tokens(where, raw_tokens, max(d["positions"] for d in stacks.values()))
    _check_model(where, manifest["model"])
    _check_inputs(where, manifest["inputs"], index)
    _check_spans(where, manifest["inputs"].get("spans"), index, len(tokens))
    _check_generation(where, manifest["generation"], len(tokens))
    _check_capture(where, manifest.get("capture", {}), stacks, len(tokens))
    _check_checks(where, manifest.get("checks", {}), stacks, index)
    meta = {key: manifest[key] for key in _DICTS}
    for key in (*_OPTIONAL_DICTS, "created", "workbench_version"):
        if key in manifest:
            meta[key] = manifest[key]
    return tokens, meta


def _shown(value) -> str:
    text = repr(value) if not _is_int(value) or abs(value) < 10**18 else "an absurd number"
    return text if len(text) <= 40 else text[:37] + "..."


# ----------------------------------------------------------------------------------- dims vs. the tensors
def _held(where: Path, index: dict[str, dict], stacks: dict) -> dict[str, dict]:
    """Per stack, what its tensors hold: the layer indices stored and the largest size of each axis."""
    held = {name: {"layers": set(), "axes": {}} for name in stacks}
    for name, entry in index.items():
        match = _LAYER_TENSOR.match(name)
        stack = "text" if match is None else (match["stack"] or "text")
        if stack not in held:
            raise _fail(where, f"has tensor {_shown(name)} of a stack dims.stacks does not list")
        if match is not None:
            held[stack]["layers"].add(int(match["layer"]))
        for axis, size in zip(entry["axes"], entry["shape"]):
            if isinstance(axis, str):
                held[stack]["axes"][axis] = max(held[stack]["axes"].get(axis, 0), size)
    return held


def _check_stacks(where: Path, stacks: dict, held: dict[str, dict], n_tokens: int) -> None:
    """Each stack's numbers equal (or, where a tensor may keep a subset, bound) what its tensors hold."""
    for name, dims in stacks.items():
        if not isinstance(dims, dict) or not all(_is_int(dims.get(key)) and dims[key] >= 0 for key in _STACK_INTS):
            raise _fail(where, f"has invalid dims for the {_shown(name)} stack (layers, heads, positions)")
        layers, axes = held[name]["layers"], held[name]["axes"]
        stored = max(layers) + 1 if layers else 0
        if dims["layers"] != stored:
            raise _fail(where, f"says the {_shown(name)} stack has {_shown(dims['layers'])} layers but its tensors "
                               f"hold {stored}")
        if "head" in axes and dims["heads"] != axes["head"]:
            raise _fail(where, f"says the {_shown(name)} stack has {_shown(dims['heads'])} heads but its tensors "
                               f"hold {axes['head']}")
        positions = max(axes.get(axis, 0) for axis in _POSITION_AXES)
        tiles = dims.get("tile_positions")
        if tiles is not None and not (isinstance(tiles, list) and len(tiles) == 2 and all(_is_int(v) for v in tiles)
                                      and 1 <= tiles[1] <= tiles[0] and dims["positions"] % tiles[0] == 0):
            raise _fail(where, f"has {_shown(name)} tile_positions that are not [positions per tile, of which "
                               "[CLS] and patches] dividing its positions")
        if "key_positions" in dims:  # rectangular: text rows over other keys (Mllama's cross-attention stack)
            _check_rectangular(where, name, dims, axes, n_tokens)
        elif name == "text":
            if dims["positions"] != n_tokens:
                raise _fail(where, f"lists {n_tokens} tokens but dims say {_shown(dims['positions'])} text positions")
            if any(axis in axes for axis in _POSITION_AXES) and positions != n_tokens:
                raise _fail(where, f"lists {n_tokens} tokens but the text tensors hold {positions} positions")
        elif dims["positions"] != positions:
            raise _fail(where, f"says the {_shown(name)} stack has {_shown(dims['positions'])} positions but its "
                               f"tensors hold {positions}")
        _count(where, dims.get("kv_heads"), f"{name} kv_heads", at_most=dims["heads"], optional=True)
        d_model = _count(where, dims.get("d_model"), f"{name} d_model", optional=True)
        if axes.get("kv_head", 0) > (dims.get("kv_heads") or dims["heads"]) or \
                axes.get("d_model", 0) > (d_model if d_model is not None else MAX_INT):
            raise _fail(where, f"has {name} tensors larger than its kv_heads or d_model")
        if axes.get("region", len(REGIONS)) != len(REGIONS):
            raise _fail(where, f"has {name} tensors over {axes['region']} regions, not the {len(REGIONS)} there are")


def _check_rectangular(where: Path, name: str, dims: dict, axes: dict, n_tokens: int) -> None:
    """A stack whose query rows are the tokens and whose keys are `key_positions` other positions, each labelled
    by `key_places` ([tile] for a tile's [CLS], [tile, row, col] for a patch)."""
    n_keys = dims["key_positions"]
    if not _is_int(n_keys) or n_keys < 0 or dims["positions"] != n_tokens or \
            axes.get("query_pos", n_tokens) != n_tokens or axes.get("key_pos", n_keys) != n_keys:
        raise _fail(where, f"says the {_shown(name)} stack has {_shown(dims['positions'])} query rows over "
                           f"{_shown(n_keys)} keys but lists {n_tokens} tokens and its tensors hold "
                           f"{axes.get('query_pos', 0)} x {axes.get('key_pos', 0)}")
    places = dims.get("key_places")
    if places is not None and not (isinstance(places, list) and len(places) == n_keys and all(
            isinstance(p, list) and len(p) in (1, 3) and all(_is_int(v) and v >= 0 for v in p) for p in places)):
        raise _fail(where, f"has {_shown(name)} key_places that are not one [tile] or [tile, row, col] per key")


# ----------------------------------------------------------------------------------------- the tokens
def _tokens(where: Path, raw: list, positions: int) -> list[Token]:
    tokens = []
    for position, data in enumerate(raw):
        if not isinstance(data, dict):
            raise _fail(where, f"has invalid metadata (token {position} is not an object)")
        token_id, text, region, patch = data.get("id"), data.get("text"), data.get("region"), data.get("patch")
        if data.get("i") != position or not _is_int(data.get("i")):
            raise _fail(where, f"has tokens out of order (token i must equal its position {position})")
        if not _is_int(token_id) or not 0 <= token_id < 2**32:
            raise _fail(where, f"has invalid metadata (token {position}: id {_shown(token_id)} is not a token id)")
        if not isinstance(text, str):
            raise _fail(where, f"has invalid metadata (token {position}: text is not a string)")
        if region not in REGIONS:
            raise _fail(where, f"has invalid metadata (token {position}: unknown region {_shown(region)})")
        if patch is not None and patch != [] and not (
                isinstance(patch, list) and len(patch) == 2 and all(_is_int(v) and 0 <= v < positions for v in patch)):
            raise _fail(where, f"has invalid metadata (token {position}: patch is not [row, column])")
        tile = data.get("tile")
        if tile is not None and not (_is_int(tile) and 0 <= tile < positions):
            raise _fail(where, f"has invalid metadata (token {position}: tile is not a tile index)")
        tokens.append(Token(position, token_id, text, region, tuple(patch) if patch else None, tile))
    return tokens


# ------------------------------------------------------------------------------------ the other objects
def _check_model(where: Path, model: dict) -> None:
    for key in ("name", "source", "revision", "kind", "architecture", "dtype", "device", "attention_backend",
                "transformers_version"):
        _text(where, model.get(key), f"model.{key}")
    _count(where, model.get("trained_positions"), "model.trained_positions", optional=True)
    if not isinstance(model.get("rope_scaling"), (dict, type(None))):
        raise _fail(where, "has model.rope_scaling that is not an object")


def _check_spans(where: Path, spans, index: dict[str, dict], n_tokens: int) -> None:
    """inputs.spans (user spans: name, characters, tokens [first, last + 1)) agree with the span tensors' width."""
    widths = {entry["shape"][list(entry["axes"]).index("span")] for entry in index.values() if "span" in entry["axes"]}
    if spans is None:
        if widths:
            raise _fail(where, "has span tensors but no inputs.spans")
        return
    if not isinstance(spans, list) or len(spans) > 4096:
        raise _fail(where, "has inputs.spans that is not a list of spans")
    for span in spans:
        tokens = span.get("tokens") if isinstance(span, dict) else None
        if not (isinstance(tokens, list) and len(tokens) == 2 and all(_is_int(t) for t in tokens)
                and 0 <= tokens[0] < tokens[1] <= n_tokens and isinstance(span.get("name"), str)):
            raise _fail(where, f"has an invalid span in inputs.spans ({_shown(span)})")
    if widths and widths != {len(spans)}:
        raise _fail(where, f"lists {len(spans)} spans but its span tensors hold {sorted(widths)}")


def _check_inputs(where: Path, inputs: dict, index: dict[str, dict]) -> None:
    for key in ("prompt", "system", "text"):
        _text(where, inputs.get(key), f"inputs.{key}")
    for key in ("raw", "chat_template"):
        _flag(where, inputs.get(key), f"inputs.{key}")
    image = inputs.get("image")
    if image is None:
        return
    if not isinstance(image, dict):
        raise _fail(where, "has inputs.image that is not an object")
    _text(where, image.get("sha256"), "inputs.image.sha256")
    _text(where, image.get("source"), "inputs.image.source")
    stored = index.get("inputs.image", {}).get("shape")  # [height, width, channel]
    height = _count(where, image.get("height"), "inputs.image.height", optional=True,
                    at_most=stored[0] if stored else 1 << 20)
    width = _count(where, image.get("width"), "inputs.image.width", optional=True,
                   at_most=stored[1] if stored else 1 << 20)
    if stored and (height, width) != tuple(stored[:2]):
        raise _fail(where, f"says the image is {_shown(width)}x{_shown(height)} but it holds {stored[1]}x{stored[0]}")


def _check_generation(where: Path, generation: dict, n_tokens: int) -> None:
    _text(where, generation.get("text", ""), "a generated text", optional=False)
    start = _count(where, generation.get("start", 0), "generation.start", at_most=n_tokens)
    _count(where, generation.get("end", start), "generation.end", at_most=n_tokens)
    if generation.get("end", start) < start:
        raise _fail(where, "has a generation that ends before it starts")
    _count(where, generation.get("max_new_tokens"), "generation.max_new_tokens", optional=True, at_most=2**31)
    for key in ("strategy", "note"):
        _text(where, generation.get(key), f"generation.{key}")


def _check_capture(where: Path, capture: dict, stacks: dict, n_tokens: int) -> None:
    maps = capture.get("maps", {})
    if not isinstance(maps, dict):
        raise _fail(where, "has capture.maps that is not an object")
    for stack, chosen in maps.items():
        if stack not in stacks or not isinstance(chosen, dict):
            raise _fail(where, f"has capture.maps for {_shown(stack)}, not a stack of this trace")
        for key, limit in (("layers", stacks[stack]["layers"]), ("heads", stacks[stack]["heads"])):
            values = chosen.get(key)
            if values is not None and not (isinstance(values, list) and
                                           all(_is_int(v) and 0 <= v < limit for v in values)):
                raise _fail(where, f"has capture.maps.{stack}.{key} outside the stack's {limit} {key}")
    head_outputs = capture.get("head_outputs")
    if not (head_outputs is None or isinstance(head_outputs, str) or (
            isinstance(head_outputs, list) and all(_is_int(v) and 0 <= v < n_tokens for v in head_outputs))):
        raise _fail(where, "has capture.head_outputs that are not positions of this trace")
    _count(where, capture.get("top_k", 0), "capture.top_k", at_most=max(d["positions"] for d in stacks.values()))
    for key in ("hidden_states", "decomposition"):
        _flag(where, capture.get(key), f"capture.{key}")
    for key in ("map_dtype", "kernel", "implementation"):
        _text(where, capture.get(key), f"capture.{key}")
    # One attention call per layer and forward pass, and a trace runs at most one pass per token.
    calls = sum(d["layers"] for d in stacks.values()) * (n_tokens + 1)
    _count(where, capture.get("one_pass_calls", 0), "capture.one_pass_calls", at_most=calls)
    ran = capture.get("kernels_run", {})
    if not isinstance(ran, dict) or not all(stack in stacks and isinstance(counts, dict) for stack, counts in ran.items()):
        raise _fail(where, "has capture.kernels_run that is not an object of stacks")
    for stack, counts in ran.items():
        for number in counts.values():
            _count(where, number, f"capture.kernels_run.{stack} calls", at_most=calls)
    fallbacks = capture.get("kernel_fallbacks", {})
    if not isinstance(fallbacks, dict) or not all(stack in stacks and isinstance(reasons, dict) and
                                                  all(isinstance(reason, str) and len(reason) <= 200
                                                      for reason in reasons)
                                                  for stack, reasons in fallbacks.items()):
        raise _fail(where, "has capture.kernel_fallbacks that is not an object of stacks and reasons")
    for stack, reasons in fallbacks.items():
        for number in reasons.values():
            _count(where, number, f"capture.kernel_fallbacks.{stack} calls", at_most=calls)


def _check_checks(where: Path, checks: dict, stacks: dict, index: dict[str, dict]) -> None:
    """The numerics verdict: counts no larger than the stored values could produce, finite errors."""
    values = sum(math.prod(entry["shape"]) for entry in index.values())
    _count(where, checks.get("non_finite", 0), "checks.non_finite", at_most=values)
    _count(where, checks.get("unrecorded_rows", 0), "checks.unrecorded_rows", at_most=values)
    for key in ("max_normaliser_error", "z_tolerance"):
        number = checks.get(key)
        if number is not None and (not isinstance(number, (int, float)) or isinstance(number, bool) or number < 0
                                   or not math.isfinite(number)):
            raise _fail(where, f"has checks.{key} that is not a non-negative number")
    _flag(where, checks.get("healthy"), "checks.healthy")
    flagged = checks.get("flagged", [])
    layers = sum(d["layers"] for d in stacks.values())
    if not isinstance(flagged, list) or len(flagged) > layers + 8 or \
            not all(isinstance(item, str) and len(item) <= 200 for item in flagged):
        raise _fail(where, f"has checks.flagged that is not a list of at most {layers} layer names")
