"""Reading a sweep's JSONL inputs: ids, images, and user errors with line numbers."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from workbench.errors import InputError
from workbench.scale.inputs import read_inputs


def _write(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_ids_images_and_fingerprint(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    data = _write(tmp_path / "in.jsonl", [{"prompt": "one"}, "", {"prompt": "two", "id": "x-2", "image": "a.png"},
                                          {"prompt": "three", "name": "n3", "max_new_tokens": 2}])
    parsed = read_inputs(data, images=images)
    assert [(i.index, i.id) for i in parsed.items] == [(0, "000000"), (1, "x-2"), (2, "n3")]
    assert parsed.items[1].image == str((images / "a.png").resolve())
    assert parsed.items[2].max_new_tokens == 2
    # Reformatting the file (key order, blank lines) keeps the fingerprint; changing a prompt does not.
    same = _write(tmp_path / "same.jsonl", ['{"prompt": "one"}', '{"image": "a.png", "id": "x-2", "prompt": "two"}',
                                            {"max_new_tokens": 2, "name": "n3", "prompt": "three"}])
    assert read_inputs(same, images=images).fingerprint == parsed.fingerprint
    other = _write(tmp_path / "other.jsonl", [{"prompt": "one!"}, {"prompt": "two", "id": "x-2", "image": "a.png"},
                                              {"prompt": "three", "name": "n3", "max_new_tokens": 2}])
    assert read_inputs(other, images=images).fingerprint != parsed.fingerprint


@pytest.mark.parametrize("lines,fragment", [
    (["{not json"], "in.jsonl:1: not valid JSON"),
    ([{"prompt": "a"}, {"text": "b"}], 'in.jsonl:2: field "prompt" is missing (the line has "text")'),
    ([{"prompt": "  "}], 'in.jsonl:1: field "prompt" must not be empty'),
    ([{"prompt": "a", "id": "k"}, {"prompt": "b", "id": "k"}], "already used on line 1"),
    ([{"prompt": "a", "id": "bad id/"}], "may only use letters"),
    ([{"prompt": "a", "image": "missing.png"}], "missing.png does not exist"),
    ([{"prompt": "a", "max_new_tokens": -1}], "max_new_tokens"),
    ([""], "holds no prompts"),
])
def test_user_errors_name_the_line(tmp_path, lines, fragment):
    data = _write(tmp_path / "in.jsonl", lines)
    with pytest.raises(InputError, match=None) as caught:
        read_inputs(data)
    assert fragment in str(caught.value)


def test_unknown_fields_are_named_once_in_a_warning(tmp_path):
    data = _write(tmp_path / "in.jsonl", [{"prompt": "a", "colour": "red"}, {"prompt": "b", "colour": "blue"}])
    with pytest.warns(UserWarning) as caught:
        assert len(read_inputs(data)) == 2
    assert len(caught) == 1 and '"colour" (first on line 1) are not read by --data' in str(caught[0].message)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_inputs(tmp_path / "nope.jsonl")
