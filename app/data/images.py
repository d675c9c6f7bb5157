"""Input images of VLM bundles: finding them (only under allowed folders), uploads, and what the model saw.

A bundle stores the image's pixels (`inputs.image`) and sha256; older bundles only the sha256. For those the
app looks for the image, in order: the recorded source
path if it lies under an allowed folder, then `<root>/images/<sha256>.<ext>` and `<root>/<sha256>.<ext>`
for each allowed folder (the traces directory first; `workbench app --images DIR` adds more). A file
is accepted only if its bytes (or, for in-memory images, its decoded RGB pixels) hash to the recorded
sha256, so no path in a manifest can make the app show an arbitrary file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from pathlib import Path

from workbench.errors import InputError
from workbench.images import check_image, open_rgb

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
UPLOAD_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
MAX_UPLOAD_BYTES = 8 * 1024 * 1024


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except (ValueError, OSError):
        return False


class ImageFinder:
    def __init__(self, roots: list[Path]):
        self.roots = [Path(r).expanduser().resolve() for r in roots]
        self._verified: dict[tuple[str, int, str], bool] = {}
        self._lock = threading.Lock()

    def _matches(self, path: Path, sha256: str) -> bool:
        try:
            stat = path.stat()
        except OSError:
            return False
        key = (str(path), stat.st_mtime_ns, sha256)
        with self._lock:
            if key in self._verified:
                return self._verified[key]
        ok = False
        if path.is_file() and not path.is_symlink() and stat.st_size <= 4 * MAX_UPLOAD_BYTES:
            data = path.read_bytes()
            ok = hashlib.sha256(data).hexdigest() == sha256
            if not ok:
                try:
                    ok = hashlib.sha256(open_rgb(data)[0].tobytes()).hexdigest() == sha256
                except InputError:
                    ok = False
        with self._lock:
            self._verified[key] = ok
        return ok

    def find(self, trace) -> Path | None:
        """The bundle's input image file under an allowed folder, or None."""
        image = trace.meta.get("inputs", {}).get("image")
        if not isinstance(image, dict) or not isinstance(image.get("sha256"), str):
            return None
        sha256 = image["sha256"]
        if not all(c in "0123456789abcdef" for c in sha256) or len(sha256) != 64:
            return None
        candidates = []
        source = image.get("source")
        if isinstance(source, str) and source and "\x00" not in source:
            candidates.append(Path(source))
        for root in self.roots:
            for folder in (root / "images", root):
                candidates += [folder / f"{sha256}{ext}" for ext in IMAGE_EXTENSIONS]
        for path in candidates:
            if any(_inside(path, root) for root in self.roots) and self._matches(path, sha256):
                return path
        return None

    def load(self, trace):
        embedded = trace.image()  # bundles written since the image is stored inside them
        if embedded is not None:
            return embedded
        path = self.find(trace)
        return None if path is None else open_rgb(path.read_bytes(), what=path.name)[0]


def decode_upload(contents: str, filename: str | None, *, max_bytes: int = MAX_UPLOAD_BYTES) -> tuple[bytes, str]:
    """(bytes, extension) of a dcc.Upload data URL, checked: size limit, a real image, an allowed format."""
    if not isinstance(contents, str) or "," not in contents or not contents.startswith("data:"):
        raise InputError("the upload is not a file; choose a PNG or JPEG image")
    header, _, payload = contents.partition(",")
    if ";base64" not in header:
        raise InputError("the upload is not base64-encoded; choose a PNG or JPEG image")
    if len(payload) > (max_bytes * 4) // 3 + 8:
        raise InputError(f"the image is larger than {max_bytes // (1024 * 1024)} MB; upload a smaller one")
    try:
        data = base64.b64decode(payload, validate=True)
    except (ValueError, TypeError):
        raise InputError("the upload is not valid base64; choose the file again") from None
    if len(data) > max_bytes:
        raise InputError(f"the image is larger than {max_bytes // (1024 * 1024)} MB; upload a smaller one")
    if not data:
        raise InputError("the upload is empty; choose a PNG or JPEG image")
    fmt = check_image(data, what="the upload")  # the pixels are decoded once, by the trace job
    if fmt not in UPLOAD_FORMATS:
        raise InputError(f"{filename or 'the upload'} is a {fmt} image; upload PNG, JPEG, WebP, GIF or BMP")
    return data, UPLOAD_FORMATS[fmt]


def model_view(image, side: int | None = None):
    """The square centre crop the CLIP/LLaVA image processor feeds the model (its patch grid covers this)."""
    width, height = image.size
    crop = min(width, height)
    left, top = (width - crop) // 2, (height - crop) // 2
    square = image.crop((left, top, left + crop, top + crop))
    return square.resize((side, side)) if side and side != crop else square


def data_uri(image, max_side: int = 336, fmt: str = "PNG") -> str:
    """A small base64 data URI of a PIL image (for plotly layout images and thumbnails)."""
    copy = image.copy()
    copy.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    copy.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"
