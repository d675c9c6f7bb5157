"""`workbench.images`: the one image loader reads the size from the header and refuses oversized images before
decoding a pixel; what it does decode equals Pillow's own decode."""

from __future__ import annotations

import io

import numpy as np
import pytest

from workbench.errors import InputError
from workbench.images import MAX_PIXELS, check_image, open_rgb


def _png(width: int, height: int, mode: str = "1") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """30000 x 30000 pixels in a file of about 100 kB: past twice Pillow's own limit (it raises in the header)."""
    return _png(30_000, 30_000)


def test_a_decompression_bomb_is_one_line_naming_its_size(bomb):
    assert len(bomb) < 2 * 2**20
    for read in (open_rgb, check_image):
        with pytest.raises(InputError) as raised:
            read(bomb, what="bomb.png")
        message = str(raised.value)
        assert "bomb.png is 900,000,000 pixels" in message and f"{MAX_PIXELS:,}" in message and "\n" not in message


def test_our_limit_applies_below_pillows():
    """7000 x 7000 = 49 M pixels: under Pillow's warning threshold (89 M), over ours."""
    with pytest.raises(InputError, match="7000 x 7000 pixels"):
        check_image(_png(7000, 7000))


def test_a_readable_image_decodes_to_pillows_own_pixels():
    from PIL import Image

    pixels = (np.random.RandomState(1).rand(20, 30, 3) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    image, fmt = open_rgb(buffer.getvalue())
    assert fmt == "PNG" and np.array_equal(np.asarray(image), pixels)
    with pytest.raises(InputError, match="not an image Pillow can read"):
        open_rgb(buffer.getvalue()[:100])  # truncated


def test_the_cli_and_api_image_path_goes_through_the_loader(tmp_path, bomb):
    from workbench.capture.inputs import load_image

    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(InputError, match="900,000,000 pixels"):
        load_image(tmp_path / "bomb.png")
