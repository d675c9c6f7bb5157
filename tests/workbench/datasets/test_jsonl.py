"""The strict JSONL reader: every bad line ends in one InputError naming FILE:LINE (and the field), never another
exception, and a file that passes holds only what the format allows.

The planted-line tests put known-good lines before one bad line of a known kind, so the expected line number
and field are known by construction; the property tests throw arbitrary bytes and arbitrary JSON values at the
reader and check the outcome against rules written out independently here (name rules, types, uniqueness).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from workbench.datasets import jsonl
from workbench.datasets.prompt_lines import read_prompt_lines
from workbench.errors import InputError, WorkbenchError
from workbench.scale.inputs import read_inputs

GOOD = [{"prompt": "one", "name": "a"}, {"prompt": "two"}, {"prompt": "three", "max_new_tokens": 2}]

# (bad line as bytes, field the message must name or None)
PLANTED = {
    "invalid UTF-8": (b'{"prompt": "caf\xe9"}', None),
    "truncated UTF-8": (b'{"prompt": "\xe2\x82"}', None),
    "NaN": (b'{"prompt": "x", "max_new_tokens": NaN}', None),
    "Infinity": (b'{"prompt": "x", "extra": -Infinity}', None),
    "1e999": (b'{"prompt": "x", "truth": 1e999}', "truth"),
    "deep nesting": (b'{"prompt": "x", "truth": ' + b"[" * 17 + b"]" * 17 + b"}", "truth"),
    "very deep nesting": (b"[" * 100_000 + b"]" * 100_000, None),
    "huge integer": (b'{"prompt": "x", "max_new_tokens": ' + b"9" * 5000 + b"}", None),
    "wrong type": (b'{"prompt": 3}', "prompt"),
    "bool for int": (b'{"prompt": "x", "max_new_tokens": true}', "max_new_tokens"),
    "float for int": (b'{"prompt": "x", "max_new_tokens": 2.5}', "max_new_tokens"),
    "negative tokens": (b'{"prompt": "x", "max_new_tokens": -1}', "max_new_tokens"),
    "missing prompt": (b'{"name": "q"}', "prompt"),
    "empty prompt": (b'{"prompt": " \\n "}', "prompt"),
    "name ..": (b'{"prompt": "x", "name": ".."}', "name"),
    "hidden name": (b'{"prompt": "x", "name": ".hidden"}', "name"),
    "name with slash": (b'{"prompt": "x", "name": "a/b"}', "name"),
    "name escaping": (b'{"prompt": "x", "id": "../../etc"}', "id"),
    "name with control character": (b'{"prompt": "x", "name": "a\\u001b[2J"}', "name"),
    "name with newline": (b'{"prompt": "x", "name": "a\\nb"}', "name"),
    "duplicate name": (b'{"prompt": "x", "name": "a"}', "name"),
    "duplicate name other case": (b'{"prompt": "x", "name": "A"}', "name"),
    "duplicate key": (b'{"prompt": "x", "prompt": "y"}', "prompt"),
    "name and id disagree": (b'{"prompt": "x", "name": "p", "id": "q"}', "name"),
    "lone surrogate": (b'{"prompt": "\\udc80"}', "prompt"),
    "top-level list": (b'["prompt", "x"]', None),
    "top-level string": (b'"prompt"', None),
    "broken JSON": (b'{"prompt": ', None),
    "image missing": (b'{"prompt": "x", "image": "nope.png"}', "image"),
    "image not an image": (b'{"prompt": "x", "image": "fake.png"}', "image"),
}


def _write(path, lines: list[bytes | dict]) -> str:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n"
                              for line in lines))
    return str(path)


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_planted_bad_line_is_named_with_its_field(tmp_path, kind):
    (tmp_path / "fake.png").write_text("not a png")
    bad, field = PLANTED[kind]
    path = _write(tmp_path / "in.jsonl", [*GOOD, b"", bad, {"prompt": "after"}])
    with pytest.raises(InputError) as raised:
        read_prompt_lines(path)
    message = str(raised.value)
    assert message.startswith(f"{path}:5: "), message  # line 4 is blank, the bad one is line 5
    assert "\n" not in message and len(message) < 600
    if field is not None:
        assert f'field "{field}"' in message, message


def test_line_longer_than_the_bound_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 1000)
    path = _write(tmp_path / "in.jsonl", [GOOD[0], {"prompt": "x" * 2000}])
    with pytest.raises(InputError, match=re.escape(f"{path}:2: line longer than")):
        read_prompt_lines(path)


def test_special_files_are_refused_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.jsonl")
    with pytest.raises(InputError, match="is not a regular file"):
        read_prompt_lines(tmp_path / "pipe.jsonl")  # reading a FIFO would block forever
    with pytest.raises(InputError, match="is not a regular file"):
        read_prompt_lines(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        read_prompt_lines(tmp_path / "missing.jsonl")


def test_byte_order_mark_crlf_and_blank_lines_are_fine(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "one"}\r\n\r\n   \n{"prompt": "two", "name": "b"}\r\n')
    lines = read_prompt_lines(path)
    assert [(line.line, line.name, line.prompt) for line in lines] == [(1, "0000", "one"), (4, "b", "two")]


def test_images_resolve_and_items_leave_out_unset_keys(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "cat.png")
    path = _write(tmp_path / "in.jsonl", [{"prompt": "x", "image": "cat.png", "max_new_tokens": 0}, {"prompt": "y"}])
    first, second = read_prompt_lines(path)
    assert first.as_item() == {"prompt": "x", "name": "0000", "image": str((tmp_path / "cat.png").resolve()),
                               "max_new_tokens": 0}
    assert second.as_item() == {"prompt": "y", "name": "0001"}  # --system / -n of the command apply


def test_unknown_fields_warn_once_naming_them_and_the_first_line(tmp_path):
    path = _write(tmp_path / "in.jsonl", [{"prompt": "x", "answer": 1}, {"prompt": "y", "answer": 2, "sytem": "s"}])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_prompt_lines(path)
    assert len(caught) == 1
    assert '"answer" (first on line 1), "sytem" (first on line 2) are not read by --prompts' in str(caught[0].message)


def test_strict_formats_refuse_unknown_fields(tmp_path):
    path = _write(tmp_path / "in.jsonl", [{"a": 1}, {"a": 2, "b": 3}])
    with pytest.raises(InputError, match=re.escape(f'{path}:2: unknown field(s) "b"; allowed: a')):
        jsonl.read_records(path, {"a": jsonl.Field((int,))}, what="--x")


# ------------------------------------------------------------------------------------------------ properties
def _name_allowed(name: str) -> bool:
    """The name rule, written out independently: safe as one file name on every system we run on."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    return 0 < len(name) <= 128 and not name.startswith(".") and set(name) <= allowed


JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                        st.text(max_size=12))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=3)), max_leaves=40)
NAMES = st.one_of(st.sampled_from(["a", "A", "b", "..", ".", ".hidden", "a/b", "/", "x\x00", "x\x1b", "ok-1.2_3",
                                   "0001", "", " ", "\u202e", "a" * 129]), st.text(max_size=8), st.integers(-3, 3))
FIELD_VALUES = {"prompt": st.one_of(st.text(max_size=10), JSON_VALUES), "name": NAMES, "id": NAMES,
                "system": st.one_of(st.text(max_size=5), JSON_VALUES),
                "max_new_tokens": st.one_of(st.integers(-5, 2_000_000), JSON_VALUES),
                "truth": JSON_VALUES}


@st.composite
def records(draw):
    keys = draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), unique=True, max_size=5))
    return {key: draw(FIELD_VALUES[key]) for key in keys}


@st.composite
def good_records(draw) -> dict:
    record = {"prompt": draw(st.text(min_size=1, max_size=12).filter(str.strip))}
    if draw(st.booleans()):
        record["name"] = draw(st.text("abAB01._-", min_size=1, max_size=4))
    if draw(st.booleans()):
        record["max_new_tokens"] = draw(st.integers(0, 2))
    return record


@st.composite
def files(draw) -> list[bytes]:
    """1-5 lines: all well-formed (half the files), or mixed with wrong records, random JSON and random bytes."""
    lines = []
    clean = draw(st.booleans())
    for _ in range(draw(st.integers(1, 5))):
        kind = "good" if clean else draw(st.sampled_from(["good", "record", "record", "bytes", "json"]))
        if kind == "good":
            lines.append(json.dumps(draw(good_records())).encode())
        elif kind == "record":
            lines.append(json.dumps(draw(records()), allow_nan=True).encode())
        elif kind == "json":
            lines.append(json.dumps(draw(JSON_VALUES), allow_nan=True).encode())
        else:
            lines.append(draw(st.binary(max_size=30)).replace(b"\n", b" "))
    return lines


def _finite_everywhere(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite_everywhere(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite_everywhere(v) for v in value)
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=files())
def test_any_file_is_read_or_refused_with_file_and_line(tmp_path, lines):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = read_inputs(path)
    except InputError as error:
        message = str(error)
        assert "\n" not in message
        located = re.match(re.escape(str(path)) + r":(\d+): ", message)
        assert located or message.startswith(f"{path} holds no prompts"), message
        if located:
            assert 1 <= int(located.group(1)) <= len(lines)
        return
    except WorkbenchError as error:  # pragma: no cover - a different family member would still be a bug here
        raise AssertionError(f"unexpected {type(error).__name__}: {error}")
    # Accepted: check every rule independently of the reader.
    names = [item.id for item in parsed.items]
    assert all(_name_allowed(name) for name in names), names
    assert len({name.lower() for name in names}) == len(names)
    for item in parsed.items:
        assert isinstance(item.prompt, str) and item.prompt.strip()
        item.prompt.encode("utf-8")  # no lone surrogates
        assert item.system is None or isinstance(item.system, str)
        assert item.max_new_tokens is None or (type(item.max_new_tokens) is int and 0 <= item.max_new_tokens
                                               <= 1_000_000)
    for raw in lines:
        if raw.strip():
            assert _finite_everywhere(json.loads(raw.decode("utf-8")))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES)
def test_a_name_is_accepted_exactly_when_it_is_a_safe_file_name(tmp_path, name):
    path = _write(tmp_path / "in.jsonl", [{"prompt": "x", "name": name}])
    expected = _name_allowed(str(name)) if not isinstance(name, int) else name >= 0
    try:
        parsed = read_prompt_lines(path)
    except InputError as error:
        assert not expected and str(error).startswith(f"{path}:1: field \"name\""), str(error)
    else:
        assert expected and parsed[0].name == str(name)
