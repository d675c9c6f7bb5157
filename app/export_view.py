"""Export the view on screen: a self-contained HTML file (opens from file:// with no server and no network) or a PNG.

Works for every page without knowing its body: a script in the browser (`window.workbenchExport`) copies the page's
`<main>` element, replaces each plotly graph by its current figure (data and layout as drawn, zoom included) and
each canvas and server image by a data URI, inlines the page's CSS and plotly.js (the copy that ships with the
installed plotly package, served by this app, never a CDN), and hands back one HTML document. The shell's Export
control saves it (or a PNG of the page) from the browser; `workbench export` calls the same script in headless
Chromium, so both paths write the same file.
"""

from __future__ import annotations

import functools

PLOTLY_ROUTE = "/_workbench/export/plotly.min.js"
SCRIPT_ROUTE = "/_workbench/export/export.js"
GENERATOR = "attention-workbench export"  # the <meta name="generator"> that marks a file as ours (--force)

EXPORT_SCRIPT = r"""
window.workbenchExport = (function () {
    "use strict";
    const PLOTLY_URL = %(plotly_url)s, GENERATOR = %(generator)s;
    const DTYPES = [["Float64Array", "f8"], ["Float32Array", "f4"], ["Int32Array", "i4"], ["Uint32Array", "u4"],
                    ["Int16Array", "i2"], ["Uint16Array", "u2"], ["Int8Array", "i1"], ["Uint8Array", "u1"],
                    ["Uint8ClampedArray", "u1c"]];
    let plotlyText = null;

    function base64(bytes) {
        let text = "";
        for (let i = 0; i < bytes.length; i += 0x8000) {
            text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
        }
        return btoa(text);
    }
    function dtype(array) {
        const found = DTYPES.find(function (pair) { return array.constructor.name === pair[0]; });
        return found ? found[1] : null;
    }
    // Typed arrays as plotly's {dtype, bdata[, shape]} (exact and compact); a list of equal typed rows as one 2-D block.
    function packed(value) {
        if (ArrayBuffer.isView(value) && dtype(value)) {
            return {dtype: dtype(value), bdata: base64(new Uint8Array(value.buffer, value.byteOffset, value.byteLength))};
        }
        if (Array.isArray(value) && value.length && value.every(function (row) {
                return ArrayBuffer.isView(row) && dtype(row) && dtype(row) === dtype(value[0]) &&
                       row.length === value[0].length; })) {
            const joined = new value[0].constructor(value.length * value[0].length);
            value.forEach(function (row, i) { joined.set(row, i * value[0].length); });
            return Object.assign(packed(joined), {shape: value.length + "," + value[0].length});
        }
        return null;
    }
    function replacer(key, value) {
        if (typeof key === "string" && key.charAt(0) === "_") { return undefined; }  // plotly's private keys
        const typed = packed(value);
        if (typed) { return typed; }
        if (ArrayBuffer.isView(value)) { return Array.from(value); }
        return value;
    }
    // JSON that is safe inside a <script> element.
    function scriptJson(value) { return JSON.stringify(value, replacer).replace(/</g, "\\u003c"); }

    function figureOf(gd) {
        const full = gd._fullLayout || {};
        const layout = Object.assign({}, gd.layout || {}, {width: full.width, height: full.height, autosize: false});
        return {data: gd.data || [], layout: layout};
    }
    function outside(element) { return !element.closest(".js-plotly-plot"); }

    function dataUri(url) {
        return fetch(url).then(function (response) { return response.blob(); }).then(function (blob) {
            return new Promise(function (resolve) {
                const reader = new FileReader();
                reader.onload = function () { resolve(reader.result); };
                reader.readAsDataURL(blob);
            });
        }).catch(function () { return ""; });
    }

    // A static copy of <main>: figures as numbered placeholders, canvases and images as data URIs, form values kept,
    // links and scripts removed (they would point at a server the file does not have).
    async function copyOfMain() {
        const root = document.querySelector("main");
        if (!root) { throw new Error("this page has no <main> element to export"); }
        const graphs = Array.from(root.querySelectorAll(".js-plotly-plot"));
        const canvases = Array.from(root.querySelectorAll("canvas")).filter(outside);
        const fields = Array.from(root.querySelectorAll("input, textarea, select"));
        const clone = root.cloneNode(true);
        Array.from(clone.querySelectorAll("canvas")).filter(outside).forEach(function (canvas, i) {
            const image = document.createElement("img");
            try { image.src = canvases[i].toDataURL("image/png"); } catch (error) { image.alt = "(canvas)"; }
            image.style.cssText = canvases[i].style.cssText;
            image.width = canvases[i].clientWidth; image.height = canvases[i].clientHeight;
            canvas.replaceWith(image);
        });
        Array.from(clone.querySelectorAll("input, textarea, select")).forEach(function (field, i) {
            const live = fields[i];
            if (field.type === "checkbox" || field.type === "radio") {
                if (live.checked) { field.setAttribute("checked", ""); } else { field.removeAttribute("checked"); }
            } else if (field.tagName === "SELECT") {
                Array.from(field.options).forEach(function (option, j) {
                    if (live.options[j].selected) { option.setAttribute("selected", ""); }
                });
            } else if (field.tagName === "TEXTAREA") {
                field.textContent = live.value;
            } else {
                field.setAttribute("value", live.value);
            }
            field.setAttribute("disabled", "");
        });
        Array.from(clone.querySelectorAll(".js-plotly-plot")).forEach(function (gd, i) {
            const holder = document.createElement("div");
            holder.className = "wb-export-figure";
            holder.setAttribute("data-wb-figure", String(i));
            const full = graphs[i]._fullLayout || {};
            holder.style.width = (full.width || graphs[i].clientWidth) + "px";
            holder.style.height = (full.height || graphs[i].clientHeight) + "px";
            gd.replaceWith(holder);
        });
        clone.querySelectorAll("script, .wb-export, [id='_dash-global-error-container']").forEach(function (node) {
            node.remove();
        });
        clone.querySelectorAll("a[href]").forEach(function (anchor) { anchor.removeAttribute("href"); });
        for (const image of Array.from(clone.querySelectorAll("img[src]"))) {
            const source = image.getAttribute("src");
            if (!source.startsWith("data:")) { image.setAttribute("src", await dataUri(image.src)); }
        }
        return {clone: clone, figures: graphs.map(figureOf), graphs: graphs};
    }

    function pageCss() {
        const rules = [];
        Array.from(document.styleSheets).forEach(function (sheet) {
            try { Array.from(sheet.cssRules).forEach(function (rule) { rules.push(rule.cssText); }); }
            catch (error) { /* a cross-origin sheet: none in this app */ }
        });
        return rules.join("\n");
    }

    function escapeText(text) {
        return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
    }

    async function plotly() {
        if (plotlyText === null) {
            const response = await fetch(PLOTLY_URL);
            if (!response.ok) { throw new Error("cannot read plotly.js from the server (" + response.status + ")"); }
            plotlyText = (await response.text()).replace(/<\/script/gi, "<\\/script");
        }
        return plotlyText;
    }

    function caption() {
        const where = window.location.pathname + window.location.search;
        return "Attention workbench · " + document.title.split(" · ")[0] + " · " + decodeURIComponent(where) +
               " · exported " + new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC";
    }

    // The whole page as one HTML document: every figure interactive (hover, zoom), nothing fetched when opened.
    async function html() {
        const copied = await copyOfMain();
        const code = await plotly();
        const draw = "(function () { const figures = " + scriptJson(copied.figures) + ";\n" +
            "figures.forEach(function (figure, i) { Plotly.newPlot(" +
            "document.querySelector('[data-wb-figure=\"' + i + '\"]'), figure.data, figure.layout, " +
            "{displaylogo: false, responsive: false}); }); })();";
        return "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n" +
            "<meta name=\"generator\" content=\"" + GENERATOR + "\">\n" +
            "<title>" + escapeText(document.title) + "</title>\n<style>\n" + pageCss().replace(/<\/style/gi, "") +
            "\n.wb-export-caption { color: #6b7280; font-size: 12px; padding: 6px 18px 0; }\n</style>\n</head>\n" +
            "<body>\n<div class=\"wb-export-caption\">" + escapeText(caption()) + "</div>\n<main>" +
            copied.clone.innerHTML + "</main>\n<script>" + code + "</script>\n<script>" + draw + "</script>\n" +
            "</body>\n</html>\n";
    }

    function loadImage(source) {
        return new Promise(function (resolve, reject) {
            const image = new Image();
            image.onload = function () { resolve(image); };
            image.onerror = function () { reject(new Error("an image of the page could not be drawn")); };
            image.src = source;
        });
    }

    // Characters XML 1.0 forbids (token texts hold control bytes, lone surrogates): an SVG holding one fails to load.
    function xmlSafe(text) {
        return text.replace(/[\x00-\x08\x0B\x0C\x0E-\x1F\uFFFE\uFFFF]/g, "\uFFFD")
            .replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "\uFFFD");
    }

    // A figure as an image: plotly's SVG (made XML-safe), drawn sharp at any canvas scale.
    async function figureImage(gd, width, height) {
        const url = await Plotly.toImage(gd, {format: "svg", width: width, height: height});
        const svg = xmlSafe(decodeURIComponent(url.slice(url.indexOf(",") + 1)));
        return loadImage("data:image/svg+xml;charset=utf-8," + encodeURIComponent(svg));
    }

    // The body's font and colour (its CSS rules match no element inside the foreignObject).
    function bodyStyle() {
        const style = getComputedStyle(document.body);
        return "font-family: " + style.fontFamily.replace(/"/g, "'") + "; color: " + style.color + "; font-size: " +
            style.fontSize + "; line-height: " + style.lineHeight + ";";
    }

    // The page as a PNG drawn in the browser: the page's HTML (through an SVG foreignObject), then each figure
    // drawn from plotly's SVG at its place. `scale` multiplies the pixels (2 for print).
    async function png(scale) {
        scale = scale || 2;
        const root = document.querySelector("main");
        const box = root.getBoundingClientRect();
        const width = Math.ceil(box.width), height = Math.ceil(box.height);
        const copied = await copyOfMain();
        const canvas = document.createElement("canvas");
        canvas.width = width * scale; canvas.height = height * scale;
        const context = canvas.getContext("2d");
        context.fillStyle = getComputedStyle(document.body).backgroundColor || "#fff";
        context.fillRect(0, 0, canvas.width, canvas.height);
        context.scale(scale, scale);
        const body = new XMLSerializer().serializeToString(copied.clone);
        const svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + width + "\" height=\"" + height + "\">" +
            "<foreignObject width=\"100%%\" height=\"100%%\"><div xmlns=\"http://www.w3.org/1999/xhtml\" " +
            "style=\"" + escapeText(bodyStyle()) + "\">" +
            "<style>" + escapeText(pageCss()) + "</style>" + body + "</div></foreignObject></svg>";
        try {
            context.drawImage(await loadImage("data:image/svg+xml;charset=utf-8," + encodeURIComponent(xmlSafe(svg))), 0, 0);
        } catch (error) { /* text and tables left out; the figures below still draw */ }
        if (copied.graphs.length && !window.Plotly) { throw new Error("plotly.js is not loaded in this page"); }
        for (const gd of copied.graphs) {
            const rect = gd.getBoundingClientRect();
            context.drawImage(await figureImage(gd, rect.width, rect.height), rect.left - box.left,
                              rect.top - box.top, rect.width, rect.height);
        }
        return canvas.toDataURL("image/png");
    }

    function fileName(extension) {
        const query = new URLSearchParams(window.location.search);
        const page = window.location.pathname.replace(/[^a-z0-9]+/gi, "") || "runs";
        const bundle = (query.get("bundle") || query.get("a") || "").replace(/[^A-Za-z0-9._-]+/g, "_");
        return ["workbench", page, bundle].filter(Boolean).join("-") + "." + extension;
    }

    function save(url, name) {
        const anchor = document.createElement("a");
        anchor.href = url; anchor.download = name;
        document.body.appendChild(anchor); anchor.click(); anchor.remove();
    }

    // The Export control: save the file, and say so (or why not) beside the control.
    async function download(kind) {
        try {
            if (kind === "png") {
                save(await png(2), fileName("png"));
                return "saved " + fileName("png");
            }
            const url = URL.createObjectURL(new Blob([await html()], {type: "text/html"}));
            save(url, fileName("html"));
            setTimeout(function () { URL.revokeObjectURL(url); }, 60000);
            return "saved " + fileName("html");
        } catch (error) {
            return "export failed: " + error.message;
        }
    }

    return {html: html, png: png, download: download, fileName: fileName};
})();
"""


@functools.cache
def export_script() -> str:
    import json

    return EXPORT_SCRIPT % {"plotly_url": json.dumps(PLOTLY_ROUTE), "generator": json.dumps(GENERATOR)}


@functools.cache
def plotly_js() -> str:
    """plotly.js as shipped in the installed plotly package (the file the export inlines)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def export_control():
    """The shell's Export control: two buttons and a line that says what was saved."""
    from dash import html

    return html.Div([html.Span("Export", className="wb-export-label"),
                     html.Button("HTML", id="wb-export-html", className="wb-export-button",
                                 title="Save this view as one HTML file that opens without a server"),
                     html.Button("PNG", id="wb-export-png", className="wb-export-button",
                                 title="Save this view as a PNG image"),
                     html.Span(id="wb-export-status", className="wb-export-status")], className="wb-export")


EXPORT_STYLE = """
.wb-export { display: flex; gap: 6px; align-items: center; font-size: 12px; color: #cbd5e1; }
.wb-export-button { background: #374151; color: #fff; border: 0; border-radius: 4px; padding: 3px 9px; cursor: pointer;
                    font-size: 12px; }
.wb-export-button:hover { background: #4b5563; }
.wb-export-status { color: #9ca3af; max-width: 320px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
"""

DOWNLOAD = """
function(clicks) {
    if (!clicks) { return dash_clientside.no_update; }
    return window.workbenchExport.download(%s);
}
"""


def register(app) -> None:
    """Serve the export script and plotly.js, load the script on every page, wire the Export control's buttons."""
    import flask
    from dash import Input, Output

    @app.server.route(SCRIPT_ROUTE)
    def _export_script():
        return flask.Response(export_script(), mimetype="application/javascript",
                              headers={"Cache-Control": "max-age=3600"})

    @app.server.route(PLOTLY_ROUTE)
    def _plotly_js():
        return flask.Response(plotly_js(), mimetype="application/javascript",
                              headers={"Cache-Control": "max-age=86400"})

    app.config.external_scripts.append(SCRIPT_ROUTE)
    for kind in ("html", "png"):
        app.clientside_callback(DOWNLOAD % f'"{kind}"', Output("wb-export-status", "children", allow_duplicate=True),
                                Input(f"wb-export-{kind}", "n_clicks"), prevent_initial_call=True)
