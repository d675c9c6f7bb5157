"""`workbench export`: one view of the app as a self-contained HTML file or a PNG, without opening the app.

Everything a user can get wrong (view, bundle, selection, output path, Chromium) is checked before Chromium
starts; the app then runs in this process on a free loopback port and headless Chromium writes the file.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlencode

import typer

from workbench.errors import InputError

SUFFIXES = {".html": "html", ".htm": "html", ".png": "png"}
SELECTION = ("stack", "layer", "head", "pos")
PARAM = re.compile(r"^([a-z][a-z0-9_]{0,31})=(.{0,200})$", re.DOTALL)


def find_chromium(given: str | None) -> str:
    """--chromium, else $WORKBENCH_CHROMIUM, else `chromium` (Debian's) or `chromium-browser` on PATH."""
    candidates = [given] if given else [os.environ.get("WORKBENCH_CHROMIUM"), "/usr/bin/chromium",
                                        shutil.which("chromium"), shutil.which("chromium-browser")]
    for candidate in filter(None, candidates):
        path = Path(candidate).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    if given:
        raise InputError(f"--chromium {given} is not an executable file")
    raise InputError("workbench export needs Chromium and none was found; install it (`apt-get install chromium`) "
                     "or pass --chromium PATH (or set WORKBENCH_CHROMIUM)")


def check_playwright() -> None:
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        raise InputError("workbench export drives Chromium through playwright, which is not installed; run "
                         "`pip install 'attention-workbench[export]'` (never `playwright install`: it uses your "
                         "Chromium)")


def view_paths() -> dict[str, str]:
    """View name -> URL path for every page that shows one bundle (the Runs page lists folders, not a view)."""
    from workbench.app.pages import PAGES

    return {page.path.strip("/"): page.path for page in PAGES if page.path != "/"}


def bundle_id(bundle: Path) -> tuple[Path, str]:
    """(the folder the app serves, the bundle's id in it): the app finds bundles by their `.wbtrace` name."""
    resolved = bundle.expanduser().resolve()
    if not resolved.is_dir():
        raise InputError(f"{bundle} is not a trace bundle folder")
    if not resolved.name.endswith(".wbtrace") or resolved.name.startswith("."):
        raise InputError(f"{bundle}: the app opens only folders named NAME.wbtrace; rename the bundle")
    return resolved.parent, resolved.name[: -len(".wbtrace")]


def check_selection(trace, *, stack: str | None, layer: int | None, head: int | None, pos: int | None) -> None:
    if stack is not None and stack not in trace.stacks:
        raise InputError(f"--stack {stack} is not in this bundle; it has {', '.join(trace.stacks)}")
    stack = stack or "text"
    if stack not in trace.stacks:
        return  # a vision-only bundle: the page picks its stack
    limits = {"--layer": (layer, trace.n_layers(stack)), "--head": (head, trace.n_heads(stack)),
              "--pos": (pos, len(trace.tokens))}
    for option, (value, count) in limits.items():
        if value is not None and not 0 <= value < count:
            raise InputError(f"{option} {value} is out of range: the bundle has {count} (0..{count - 1})")


def parse_params(params: list[str]) -> dict[str, str]:
    """--param KEY=VALUE pairs for a page's own settings (e.g. metric=entropy, b=OTHER for compare)."""
    parsed = {}
    for text in params:
        match = PARAM.match(text)
        if match is None:
            raise InputError(f"--param {text[:60]!r} is not KEY=VALUE (a lowercase key, a value of at most 200 "
                             "characters)")
        key, value = match.groups()
        if key in ("bundle", *SELECTION):
            raise InputError(f"--param {key}=... : use --{key} (or BUNDLE) instead")
        parsed[key] = value
    return parsed


def export(
    bundle: Path = typer.Argument(..., help="The NAME.wbtrace bundle to show."),
    view: str = typer.Option(..., "--view", "-v", help="The view: model, heads, head, token, image, circuits, "
                             "hallucination, compare, causal or rollout."),
    out: Path = typer.Option(..., "--out", "-o", help="FILE.html (self-contained: opens from file:// with no "
                             "server or network) or FILE.png."),
    layer: int | None = typer.Option(None, "--layer", help="Layer to select."),
    head: int | None = typer.Option(None, "--head", help="Head to select."),
    pos: int | None = typer.Option(None, "--pos", help="Token position to select."),
    stack: str | None = typer.Option(None, "--stack", help="Stack (text, or vision for VLM bundles)."),
    param: list[str] | None = typer.Option(None, "--param", help="A page's own setting as KEY=VALUE, as in its URL "
                                            "(e.g. metric=entropy on model; b=OTHER for compare, OTHER a bundle in "
                                            "the same folder); repeatable."),
    width: int = typer.Option(1400, "--width", help="Browser window width in CSS pixels (600-4000)."),
    scale: float = typer.Option(2.0, "--scale", help="PNG pixels per CSS pixel (1-4)."),
    images: list[Path] | None = typer.Option(None, "--images", help="Another folder where the input image of a VLM "
                                                "bundle may be found (repeatable), as for `workbench app`."),
    no_recompute: bool = typer.Option(False, "--no-recompute", help="Never load a model to recompute the maps of a "
                                      "statistics-only bundle."),
    allow_model_dir: list[Path] | None = typer.Option(None, "--allow-model-dir", help="A model folder (or folder of "
                                                         "them) that may be loaded to recompute maps; repeatable."),
    chromium: str | None = typer.Option(None, "--chromium", help="Chromium executable (default: "
                                        "$WORKBENCH_CHROMIUM, then /usr/bin/chromium, then PATH)."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for the view to draw."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it is an export the workbench wrote."),
) -> None:
    """Save one view of the app as a self-contained HTML file or a PNG (headless Chromium; no server left running)."""
    from workbench import option_checks as options
    from workbench.app.export_capture import is_our_html, is_our_png
    from workbench.cli.paths import check_folders, check_output

    kind = SUFFIXES.get(out.suffix.lower())
    if kind is None:
        raise InputError(f"--out {out} must end in .html or .png")
    views = view_paths()
    if view.strip("/") not in views:
        raise InputError(f"--view {view} is not a view; choose one of {', '.join(views)}")
    path = views[view.strip("/")]
    options.count("--width", width, low=600, high=4000)
    options.real("--scale", scale, low=1, high=4)
    options.real("--timeout", timeout, low=1, high=3600)
    for value, option in ((layer, "--layer"), (head, "--head"), (pos, "--pos")):
        if value is not None:
            options.count(option, value, low=0, high=1_000_000)
    extra = parse_params(param or [])
    check_folders("--images", images)
    check_folders("--allow-model-dir", allow_model_dir)
    out = check_output(out, force=force, what="export", ours=is_our_html if kind == "html" else is_our_png,
                       ours_is="an export of the workbench")
    root, bundle_name = bundle_id(bundle)
    import workbench

    trace = workbench.load(root / f"{bundle_name}.wbtrace")  # a corrupt bundle is a one-line error here
    check_selection(trace, stack=stack, layer=layer, head=head, pos=pos)
    browser = find_chromium(chromium)
    check_playwright()

    from workbench.app.data.service import AppData
    from workbench.app.export_capture import export_view
    from workbench.app.server import create_app

    store = AppData(root, image_dirs=images or [], allow_recompute=not no_recompute,
                    allow_model_dirs=allow_model_dir or [])
    store.catalog.max_depth = 1  # the bundle's own folder only: a bundle in a big folder must not scan it all
    app = create_app(root, allow_trace=False, allow_recompute=not no_recompute, store=store)
    query = {"bundle": bundle_name, "stack": stack, "layer": layer, "head": head, "pos": pos, **extra}
    query = urlencode({key: value for key, value in query.items() if value is not None})
    done = export_view(app, f"{path}?{query}", out, kind=kind, chromium=browser, width=width, scale=scale,
                       timeout_s=timeout)
    size = out.stat().st_size
    figures = f"{done.figures} figure" + ("" if done.figures == 1 else "s")
    print(f"wrote {out} ({kind.upper()}, {size / 1e6:.1f} MB, {figures}, {done.seconds:.1f} s)")
