"""Shared page plumbing: the page spec, data access from callbacks, selection ids, panels, error guards.

Selections live in the URL (deep links) and in the browser tab's `wb-selection` store; every control
that is part of the selection has the pattern id {"type": "wb-sel", "key": KEY}, and one shell callback
merges them into the store, from which the navigation links are built. Nothing but ids and numbers is
stored client-side; concurrent users share only read-only server caches.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from dash import dcc, html, no_update

from workbench.errors import WorkbenchError

log = logging.getLogger("workbench.app")
SELECTION_KEYS = ("bundle", "stack", "layer", "head", "pos")


@dataclass(frozen=True)
class Page:
    """One view. `layout(**query_params)` builds it; `register(app)` adds its callbacks; `params` are the
    selection keys its navigation link carries."""

    module: str
    path: str
    name: str
    order: int
    layout: Callable
    register: Callable
    params: tuple[str, ...] = ("bundle",)
    description: str = ""
    needs: tuple[str, ...] = field(default_factory=tuple)  # analyses (results.ANALYSES keys) it shows


def data():
    """The app's AppData (one per app; found through the Flask app handling this request)."""
    import flask

    return flask.current_app.config["WORKBENCH_DATA"]


def sel(key: str) -> dict:
    return {"type": "wb-sel", "key": key}


def first(value):
    """A query parameter as one string (repeated parameters arrive as lists)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value if isinstance(value, str) else (str(value) if isinstance(value, (int, float)) else None)


def as_int(value, default: int | None = None, low: int | None = None, high: int | None = None) -> int | None:
    value = first(value) if isinstance(value, (list, tuple)) else value
    try:
        number = int(float(value)) if value not in (None, "") else default
    except (TypeError, ValueError, OverflowError):
        number = default
    if number is None:
        return None
    if low is not None:
        number = max(low, number)
    if high is not None:
        number = min(high, number)
    return number


def link(path: str, **params) -> str:
    clean = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urlencode(clean)}" if clean else path


def error_panel(message: str, *, title: str = "Cannot show this") -> html.Div:
    return html.Div([html.Strong(title + ": "), html.Span(message)], className="wb-error", role="alert")


def hint_panel(message: str) -> html.Div:
    return html.Div(message, className="wb-hint")


def note(message: str, *, warning: bool = False) -> html.Div:
    return html.Div(message, className="wb-warning" if warning else "wb-note")


def bundle_picker(selected: str | None, stack: str | None = None) -> html.Div:
    """The bundle dropdown, plus the `wb-page` store recording what the page was rendered for (the shell
    rebuilds the page when the dropdown or the stack picker moves away from it)."""
    infos = [info for info in data().catalog.scan() if info.ok]
    options = [{"label": f"{info.id} · {info.model} · {info.tokens} tokens", "value": info.id} for info in infos]
    return html.Div([dcc.Dropdown(id=sel("bundle"), options=options, value=selected, clearable=False,
                                  placeholder="choose a bundle"),
                      dcc.Store(id="wb-page", data={"bundle": selected, "stack": stack or "text"}),
                      health_warning(selected)],
                     className="wb-bundle")


def health_warning(bundle_id: str | None):
    """A visible warning on every page of a bundle whose statistics hold NaN/Inf or a normaliser Z far from 1."""
    if not bundle_id:
        return None
    try:
        found = data().health(bundle_id)
    except WorkbenchError:
        return None  # the page itself reports an unreadable bundle
    if found.healthy:
        return None
    return html.Div([html.Strong("Numerics check failed: "), found.describe()], id="wb-health",
                    className="wb-warning", role="alert")


def stack_picker(trace, selected: str | None) -> html.Div:
    stacks = sorted(trace.stacks if trace is not None else ["text"], key=lambda s: (s != "text", s))
    value = selected if selected in stacks else "text" if "text" in stacks else stacks[0]
    return html.Div(dcc.RadioItems(id=sel("stack"), options=[{"label": s, "value": s} for s in stacks], value=value,
                                   inline=True), style={"display": "inline-block" if len(stacks) > 1 else "none"})


def describe_error(error: BaseException) -> str:
    if isinstance(error, WorkbenchError):
        return str(error)
    log.error("unexpected error in a view:\n%s", "".join(traceback.format_exception(error)))
    return f"internal error ({type(error).__name__}: {error}); the server log has the details"


def guarded(*kinds: str):
    """Decorate a callback so any error fills its outputs instead of breaking the page.

    kinds, one per output: "figure" (a message figure), "panel" (an error panel), "children" ([]),
    "skip" (no_update), "none" (None).
    """
    from workbench.app.figures.common import message_figure

    def wrap(function):
        @functools.wraps(function)
        def inner(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - every failure becomes a visible panel
                message = describe_error(error)
                out = []
                for kind in kinds:
                    out.append({"figure": lambda: message_figure(message), "panel": lambda: error_panel(message),
                                "children": list, "skip": lambda: no_update, "none": lambda: None}[kind]())
                return out[0] if len(out) == 1 else tuple(out)
        return inner
    return wrap


def guarded_layout(function):
    """Page layouts never raise: errors (corrupt bundle, bad parameters) become an error panel."""
    @functools.wraps(function)
    def inner(**params):
        try:
            return function(**params)
        except Exception as error:  # noqa: BLE001
            return html.Div([error_panel(describe_error(error)), dcc.Link("back to the runs", href="/")])
    return inner


def region_key() -> html.Div:
    """The region colours used by every figure's position strips."""
    from workbench.app.figures.common import REGION_COLORS

    return html.Div([html.Span("regions: ", className="wb-muted")] + [
        html.Span(region, className="wb-key", style={"borderLeft": f"12px solid {color}"})
        for region, color in REGION_COLORS.items()], className="wb-regions")


def graph(id_, figure=None, *, height: int | None = None, loading: bool = False, **kwargs):
    """A dcc.Graph; loading=True wraps it in a spinner shown while a slow callback (a recompute) runs."""
    style = {"height": f"{height}px"} if height else None
    component = dcc.Graph(id=id_, figure=figure or {}, config={"displaylogo": False, "scrollZoom": False},
                          style=style, **kwargs)
    return dcc.Loading(component, type="circle", delay_show=400,
                       overlay_style={"visibility": "visible", "opacity": 0.5}) if loading else component


def no_bundle() -> html.Div:
    return html.Div([hint_panel("No readable bundles under the traces directory yet. Trace one on the Runs page, "
                                "or run `workbench trace --model smollm2 --prompt '...' --out DIR/NAME.wbtrace`."),
                     dcc.Link("go to the runs", href="/")])
