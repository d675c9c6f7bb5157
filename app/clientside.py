"""Clientside (browser-only) callbacks: navigation and selection bookkeeping that needs no server data.

Each of these would otherwise cost a server round trip on every page render or click; in the browser they
are instant and leave the server to the callbacks that slice bundles.
"""

from __future__ import annotations

import json

# The selection keys the shell merges from {"type": "wb-sel", "key": KEY} controls.
MERGE_SELECTION = """
function(values, current) {
    const ctx = dash_clientside.callback_context;
    const keys = %(keys)s;
    const merged = Object.assign({}, current || {});
    let changed = false;
    (ctx.inputs_list[0] || []).forEach(function(item) {
        const key = item.id.key, value = item.value;
        if (keys.indexOf(key) >= 0 && value !== null && value !== undefined && merged[key] !== value) {
            merged[key] = value; changed = true;
        }
    });
    return changed ? merged : dash_clientside.no_update;
}
"""

LINK_HELPER = """
    function link(path, params) {
        const query = new URLSearchParams();
        Object.keys(params).forEach(function(key) {
            const value = params[key];
            if (value !== null && value !== undefined && value !== "") { query.set(key, value); }
        });
        const text = query.toString();
        return text ? path + "?" + text : path;
    }
"""

NAV_LINKS = """
function(selection) {
    const pages = %(pages)s;
    const ctx = dash_clientside.callback_context;
    const chosen = selection || {};
""" + LINK_HELPER + """
    const hrefs = ctx.outputs_list[0].map(function(output) {
        const page = pages[output.id.page], params = {};
        page.params.forEach(function(key) { params[key] = chosen[key]; });
        return link(page.path, params);
    });
    return [hrefs, chosen.bundle ? "bundle " + chosen.bundle : ""];
}
"""

# Rebuild the page when its bundle (or stack) control moves away from what the page was built for.
REOPEN = """
function(value, built, path, selection, bundle) {
    const key = %(key)s;
    const byPath = %(paths)s;
""" + LINK_HELPER + """
    if (!value || (built && built[key] === value) || !byPath[path]) { return dash_clientside.no_update; }
    const params = {};
    byPath[path].forEach(function(name) { if (name !== "pos") { params[name] = (selection || {})[name]; } });
    params.bundle = key === "bundle" ? value : bundle;
    params.stack = key === "stack" ? value : null;
    return link(path, params);
}
"""

# Model view: a heatmap cell opens that head.
OPEN_HEAD_FROM_GRID = """
function(click, bundle, stack) {
    if (!click || !click.points || !click.points.length) { return dash_clientside.no_update; }
    const point = click.points[0];
    const query = new URLSearchParams({bundle: bundle, stack: stack || "text", layer: Math.round(point.y),
                                       head: Math.round(point.x)});
    return "/head?" + query.toString();
}
"""

# Head view: a zoom or a reset of the map becomes the window the server slices.
ZOOM = """
function(relayout, bundle, stack, current) {
    const ctx = dash_clientside.callback_context;
    const trigger = ctx.triggered.length ? ctx.triggered[0].prop_id : "";
    if (trigger.indexOf("head-map") !== 0) { return null; }
    if (!relayout) { return dash_clientside.no_update; }
    if (relayout["xaxis.autorange"] || relayout["yaxis.autorange"]) { return null; }
    function range(axis) {
        if ((axis + ".range[0]") in relayout) { return [relayout[axis + ".range[0]"], relayout[axis + ".range[1]"]]; }
        return Array.isArray(relayout[axis + ".range"]) ? relayout[axis + ".range"] : null;
    }
    const x = range("xaxis"), y = range("yaxis");
    if (!x && !y) { return dash_clientside.no_update; }
    const view = Object.assign({}, current || {});
    if (x) { view.k = x; }
    if (y) { view.q = y; }
    return view;
}
"""

# Token view: a token chip selects its position; a cell of the layer heatmap opens that head.
PICK_TOKEN = """
function(clicks) {
    const trigger = dash_clientside.callback_context.triggered_id;
    if (!trigger || typeof trigger !== "object" || !(clicks || []).some(function(c) { return c; })) {
        return dash_clientside.no_update;
    }
    return trigger.pos;
}
"""

OPEN_HEAD_FROM_TOKEN = """
function(click, bundle, pos, heads) {
    if (!click || !click.points || !click.points.length) { return dash_clientside.no_update; }
    const head = /^[0-9]+$/.test(heads || "") ? heads : "0";
    const query = new URLSearchParams({bundle: bundle, stack: "text", layer: Math.round(click.points[0].y),
                                       head: head, pos: pos});
    return "/head?" + query.toString();
}
"""


def merge_selection(keys) -> str:
    return MERGE_SELECTION % {"keys": json.dumps(list(keys))}


def nav_links(pages) -> str:
    return NAV_LINKS % {"pages": json.dumps({p.name: {"path": p.path, "params": list(p.params)} for p in pages})}


def reopen(key: str, pages) -> str:
    return REOPEN % {"key": json.dumps(key), "paths": json.dumps({p.path: list(p.params) for p in pages})}
