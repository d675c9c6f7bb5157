"""Checks of a manifest's metadata (model, inputs, generation, dims, tokens) before a `Trace` is built from it.

Everything downstream (`info`, the JSON export, the app) indexes these fields directly, so a manifest that is
valid JSON but of the wrong shape must fail here, as one `BundleError` naming manifest.json, not later as a
KeyError or TypeError deep in a view.
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench.errors import BundleError
from workbench.traces.tokens import Token

_DICTS = ("model", "inputs", "generation", "dims")
_OPTIONAL_DICTS = ("capture", "checks")
_STACK_INTS = ("layers", "heads", "positions")


def _fail(where: Path, what: str) -> BundleError:
    return BundleError(f"{where}: {what}; the bundle is corrupt, trace again")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_metadata(where: Path, manifest: dict) -> tuple[list[Token], dict]:
    """(tokens, meta) of a manifest, or a BundleError naming `where` (the manifest file)."""
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
    if not isinstance(manifest["generation"].get("text", ""), str):
        raise _fail(where, "has a generated text that is not a string")
    stacks = manifest["dims"].get("stacks")
    if not isinstance(stacks, dict) or "text" not in stacks:
        raise _fail(where, "has no dims.stacks.text")
    for name, dims in stacks.items():
        if not isinstance(dims, dict) or not all(_is_count(dims.get(key)) for key in _STACK_INTS):
            raise _fail(where, f"has invalid dims for the {name!r} stack (layers, heads, positions)")
    raw_tokens = manifest.get("tokens")
    if not isinstance(raw_tokens, list):
        raise _fail(where, "has no token list")
    try:
        tokens = [Token.from_json(token) for token in raw_tokens]
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as error:
        raise _fail(where, f"has invalid metadata (a token: {type(error).__name__}: {str(error)[:80]})") from None
    if any(token.i != index for index, token in enumerate(tokens)):
        raise _fail(where, "has tokens out of order (token i must equal its position)")
    if stacks["text"]["positions"] != len(tokens):
        raise _fail(where, f"lists {len(tokens)} tokens but dims say {stacks['text']['positions']} text positions")
    meta = {key: manifest[key] for key in _DICTS}
    for key in (*_OPTIONAL_DICTS, "created", "workbench_version"):
        if key in manifest:
            meta[key] = manifest[key]
    return tokens, meta
