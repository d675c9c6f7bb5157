"""The one way the workbench opens an image file: its size is read from the header and checked before any
pixel is decoded, so a small file that expands to gigabytes (a 30000 x 30000 PNG) is a one-line error.

    >>> from workbench.images import MAX_PIXELS, open_rgb
    >>> image, fmt = open_rgb(png_bytes)         # (PIL RGB image, "PNG"), or InputError saying what to do

The CLI's --image, the Python API, sweep inputs and the app's uploads all come through here.
"""

from __future__ import annotations

import io
import re
import warnings

from workbench.errors import InputError

MAX_PIXELS = 40_000_000  # an 8K photo has 33 M; vision towers see 336 x 336, so more is never needed
MAX_FILE_BYTES = 256 * 1024 * 1024  # bytes read from an image file at most (a photo is a few MB)


def open_rgb(data: bytes, *, what: str = "the image") -> tuple[object, str]:
    """(PIL RGB image, format name) of image file bytes; InputError for anything not a readable image of at most
    MAX_PIXELS pixels. `what` names the image in the message (a path, "the upload")."""
    return _read(data, what, decode=True)


def check_image(data: bytes, *, what: str = "the image") -> str:
    """The format name of image file bytes whose header and checksums read and whose size is within MAX_PIXELS,
    without decoding the pixels (cheap: for checking uploads and input files up front)."""
    return _read(data, what, decode=False)[1]


def read_image_file(path, *, what: str | None = None) -> bytes:
    """The bytes of an image file that exists and is at most MAX_FILE_BYTES (checked before reading)."""
    from pathlib import Path

    path = Path(path).expanduser()
    what = what or f"image {path}"
    if not path.is_file():
        raise InputError(f"{what} does not exist; pass the path of a PNG or JPEG file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise InputError(f"{what} is {size / 2**20:.0f} MB, more than the {MAX_FILE_BYTES // 2**20} MB the "
                         "workbench reads; resize it")
    return path.read_bytes()


def _read(data: bytes, what: str, *, decode: bool) -> tuple[object, str]:
    from PIL import Image, UnidentifiedImageError

    image = None
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past twice its limit raises) while reading the header; our own, lower limit is
            # checked below from the same header, so its warning adds nothing.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                if width * height > MAX_PIXELS:
                    raise _too_large(what, f"{width} x {height}")
                fmt = probe.format
                probe.verify()  # checks chunks and checksums without decoding pixels
            if decode:
                image = Image.open(io.BytesIO(data))
                image.load()
    except InputError:
        raise
    except Image.DecompressionBombError as error:  # past twice Pillow's own limit: it refuses in the header
        counted = re.search(r"\((\d+) pixels\)", str(error))
        raise _too_large(what, f"{int(counted.group(1)):,}" if counted else "too many") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise InputError(f"{what} is not an image Pillow can read ({type(error).__name__}); use a PNG or JPEG") \
            from None
    return (image.convert("RGB") if image is not None else None), fmt


def _too_large(what: str, size: str) -> InputError:
    return InputError(f"{what} is {size} pixels, more than the {MAX_PIXELS:,} the workbench decodes; resize it "
                      "(vision models see a few hundred pixels a side)")
