"""Compare view builders: two bundles A and B side by side and as a difference (B - A, diverging colours
centred at 0): per-head metric grids, per-layer profiles, token curves, and one head's attention maps."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from workbench.app.data.maps import Window
from workbench.app.figures.common import FONT, labels_that_fit, layer_ticks, position_ticks, token_label

DIVERGING = "RdBu_r"  # red = B higher, blue = B lower, white = equal
COLORS = {"A": "#1f77b4", "B": "#d62728", "diff": "#555555"}
HOVER_TEXT_CELLS = 160 * 160  # map cells carrying token text in hover, per panel
BAR_LIMIT = 600  # difference of token curves as bars up to this many positions, a filled line above
MAP_PANEL_PIXELS = 300  # three square maps share about 1,000 px of a 1,400 px wide window


def _symmetric(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return max(float(finite.max()) if finite.size else 0.0, 1e-9)


def _colorbar(fig: go.Figure, axis: str, x: float, title: str) -> None:
    fig.layout[axis].colorbar = dict(x=x, xanchor="left", thickness=12, len=0.9, title=dict(text=title, side="right"))


def _panel_domains(fig: go.Figure, count: int) -> list[list[float]]:
    return [list(fig.layout[f"xaxis{'' if i == 0 else i + 1}"].domain) for i in range(count)]


def metric_comparison(values_a: np.ndarray, values_b: np.ndarray, difference: np.ndarray | None, *, label: str,
                      names: tuple[str, str] = ("A", "B"), zmin: float | None = None, zmax: float | None = None,
                      colorscale: str = "Viridis", reason: str | None = None, title: str | None = None) -> go.Figure:
    """Heatmaps [layer, head] of one metric for A and B (one shared colour scale) and, on the same grid, B - A
    (diverging, centred at 0). Hover names the head `LxHy`. Without a difference, `reason` says why."""
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    both = np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)]])
    low = zmin if zmin is not None else (float(both.min()) if both.size else 0.0)
    high = zmax if zmax is not None else (float(both.max()) if both.size else 1.0)
    panels = 3 if difference is not None else 2
    titles = [f"A: {names[0]}", f"B: {names[1]}"] + (["B − A"] if difference is not None else [])
    fig = make_subplots(rows=1, cols=panels, subplot_titles=titles, horizontal_spacing=0.09)
    for column, (key, values, name) in enumerate((("A", a, names[0]), ("B", b, names[1])), start=1):
        fig.add_trace(go.Heatmap(z=values, x=np.arange(values.shape[1]), y=np.arange(values.shape[0]),
                                 coloraxis="coloraxis", xgap=1, ygap=1, name=name,
                                 hovertemplate=f"L%{{y}}H%{{x}}<br>{label}: %{{z:.4f}}<extra>{key}</extra>"),
                      row=1, col=column)
    if difference is not None:
        custom = np.stack([a, b], axis=-1)
        fig.add_trace(go.Heatmap(z=difference, x=np.arange(a.shape[1]), y=np.arange(a.shape[0]), coloraxis="coloraxis2",
                                 customdata=custom, xgap=1, ygap=1, name="B − A",
                                 hovertemplate=("L%{y}H%{x}<br>B − A: %{z:+.4f}<br>A %{customdata[0]:.4f}, "
                                                "B %{customdata[1]:.4f}<extra>difference</extra>")), row=1, col=3)
    n_layers = max(a.shape[0], b.shape[0])
    fig.update_layout(template="plotly_white", font=FONT, title=title,
                      height=int(min(900, max(360, 20 * n_layers + 140))),
                      margin=dict(l=60, r=70, t=80 if title else 50, b=50),
                      coloraxis=dict(colorscale=colorscale, cmin=low, cmax=high))
    domains = _panel_domains(fig, panels)
    _colorbar(fig, "coloraxis", domains[1][1] + 0.005, label)
    if difference is not None:
        bound = _symmetric(difference)
        fig.update_layout(coloraxis2=dict(colorscale=DIVERGING, cmin=-bound, cmax=bound, cmid=0.0))
        _colorbar(fig, "coloraxis2", domains[2][1] + 0.005, "B − A")
    elif reason:
        fig.add_annotation(text=reason, xref="paper", yref="paper", x=0.0, y=0.0, yanchor="top", yshift=-45,
                           showarrow=False, align="left", font=dict(size=12, color="#874d00"))
        fig.update_layout(margin=dict(b=90))
    for column, values in enumerate((a, b), start=1):
        fig.update_xaxes(title_text="head", dtick=1 if values.shape[1] <= 16 else None, row=1, col=column)
        fig.update_yaxes(title_text="layer" if column == 1 else None, autorange="reversed",
                         **layer_ticks(values.shape[0]), row=1, col=column)
    if difference is not None:
        fig.update_xaxes(title_text="head", dtick=1 if a.shape[1] <= 16 else None, row=1, col=3)
        fig.update_yaxes(autorange="reversed", **layer_ticks(a.shape[0]), row=1, col=3)
    return fig


def layer_profiles(profile_a: np.ndarray, profile_b: np.ndarray, *, label: str, names: tuple[str, str] = ("A", "B"),
                   title: str | None = None, height: int = 300) -> go.Figure:
    """Per-layer means over heads of one metric for A and B: x = layer when the depths match, else relative
    depth (layer / (layers - 1)) so models of one family with different depths share the axis."""
    from workbench.app.data.compare import relative_depth

    same = len(profile_a) == len(profile_b)
    fig = go.Figure()
    for key, profile, name in (("A", profile_a, names[0]), ("B", profile_b, names[1])):
        layers = np.arange(len(profile))
        x = layers if same else relative_depth(len(profile))
        fig.add_trace(go.Scatter(x=x, y=profile, mode="lines+markers", name=f"{key}: {name}", customdata=layers,
                                 line=dict(color=COLORS[key]), marker=dict(size=5),
                                 hovertemplate=f"{key} layer %{{customdata}}<br>{label}: %{{y:.4f}}<extra></extra>"))
    fig.update_layout(template="plotly_white", font=FONT, height=height, title=title,
                      margin=dict(l=60, r=20, t=50 if title else 20, b=50), legend=dict(orientation="h", y=-0.3),
                      xaxis=dict(title="layer" if same else "relative depth (layer / (layers − 1))",
                                 **(dict(layer_ticks(len(profile_a)), range=[-0.5, len(profile_a) - 0.5]) if same
                                    else dict(range=[-0.03, 1.03]))),
                      yaxis=dict(title="mean over heads"))
    return fig


def token_curves(values_a: np.ndarray, values_b: np.ndarray, pairs: np.ndarray, *, texts_a: list[str],
                 texts_b: list[str], label: str, names: tuple[str, str] = ("A", "B"), mode: str = "position",
                 title: str | None = None, height: int = 420) -> go.Figure:
    """A per-token quantity of A and B overlaid at aligned positions, and B - A below. values_a / values_b are
    already paired: one value per row of `pairs` [pair, 2] (positions in A and in B); x = A's position, or the
    index of the pair when the image tokens differ (mode "text"). Hover names both tokens and positions."""
    pairs = np.asarray(pairs, dtype=np.int64)
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    x = pairs[:, 0] if mode == "position" else np.arange(len(pairs))
    label_a = np.array([token_label(texts_a[p], 40) for p in pairs[:, 0]], dtype=object)
    label_b = np.array([token_label(texts_b[p], 40) for p in pairs[:, 1]], dtype=object)
    custom = np.stack([pairs[:, 0], pairs[:, 1], label_a, label_b], axis=-1)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.08)
    for key, values, name in (("A", a, names[0]), ("B", b, names[1])):
        column = 0 if key == "A" else 1
        fig.add_trace(go.Scatter(x=x, y=values, mode="lines", name=f"{key}: {name}", customdata=custom,
                                 line=dict(color=COLORS[key], width=1.6),
                                 hovertemplate=(f"{key} position %{{customdata[{column}]}} "
                                                f"<b>%{{customdata[{column + 2}]}}</b><br>{label}: %{{y:.4f}}"
                                                "<extra></extra>")), row=1, col=1)
    hover = ("A %{customdata[0]} <b>%{customdata[2]}</b> · B %{customdata[1]} <b>%{customdata[3]}</b><br>"
             "B − A: %{y:+.4f}<extra></extra>")
    if len(x) <= BAR_LIMIT:  # one bar per position, red where B is higher
        fig.add_trace(go.Bar(x=x, y=b - a, name="B − A", marker_color=np.where(b - a >= 0, COLORS["B"], COLORS["A"]),
                             customdata=custom, hovertemplate=hover), row=2, col=1)
    else:  # thousands of SVG bars draw slowly: a filled step line carries the same values
        fig.add_trace(go.Scatter(x=x, y=b - a, name="B − A", mode="lines", fill="tozeroy", customdata=custom,
                                 line=dict(shape="hvh", color=COLORS["diff"], width=1), hovertemplate=hover),
                      row=2, col=1)
    fig.update_layout(template="plotly_white", font=FONT, height=height, title=dict(text=title, y=0.97),
                      hovermode="closest", margin=dict(l=60, r=20, t=80 if title else 40, b=50), bargap=0,
                      legend=dict(orientation="h", x=0, y=1.02, yanchor="bottom"))
    fig.update_yaxes(title_text=label, row=1, col=1)
    fig.update_yaxes(title_text="B − A", zeroline=True, zerolinecolor="#999", row=2, col=1)
    fig.update_xaxes(title_text="position" if mode == "position" else "shared text token (image tokens left out)",
                     row=2, col=1)
    return fig


def _map_hover(win: Window, texts_q: list[str], texts_k: list[str]) -> dict:
    if win.pooled:
        return dict(hovertemplate=(f"queries ~%{{y:.0f}} → keys ~%{{x:.0f}} (blocks of {win.q_step} x {win.k_step})"
                                   "<br>%{z:.4f}<extra></extra>"))
    if win.values.size > HOVER_TEXT_CELLS:
        return dict(hovertemplate="query %{y} → key %{x}<br>%{z:.4f}<extra></extra>")
    q = np.array([token_label(texts_q[p], 40) for p in range(win.q0, win.q1)], dtype=object)
    k = np.array([token_label(texts_k[p], 40) for p in range(win.k0, win.k1)], dtype=object)
    return dict(customdata=np.stack(np.broadcast_arrays(q[:, None], k[None, :]), axis=-1),
                hovertemplate="query %{y} <b>%{customdata[0]}</b> → key %{x} <b>%{customdata[1]}</b><br>%{z:.4f}"
                              "<extra></extra>")


def map_comparison(win_a: Window | None, win_b: Window | None, win_diff: Window | None, *, texts_a: list[str],
                   texts_b: list[str], head: tuple[int, int], names: tuple[str, str] = ("A", "B"),
                   reason: str | None = None, missing: tuple[str | None, str | None] = (None, None),
                   height: int = 560) -> go.Figure:
    """One head's query x key map in A and in B (shared 0..max colour scale) and their difference B - A
    (diverging, centred at 0) when the sequences align; integer position axes labelled with token text.
    A missing panel is None (`missing` says why: the head does not exist in that model, no map). Pooled windows show block maxima (the
    difference: the value of largest magnitude in each block)."""
    layer, index = head
    wins = [w for w in (win_a, win_b, win_diff) if w is not None]
    panels = 2 + (win_diff is not None)
    titles = [f"A: {names[0]}", f"B: {names[1]}"] + (["B − A"] if win_diff is not None else [])
    fig = make_subplots(rows=1, cols=panels, subplot_titles=titles, horizontal_spacing=0.1)
    peak = max([float(w.values.max(initial=0)) for w in (win_a, win_b) if w is not None] + [1e-6])
    fitting = labels_that_fit(MAP_PANEL_PIXELS)
    for column, (win, texts_q, texts_k, axis) in enumerate(
            ((win_a, texts_a, texts_a, "coloraxis"), (win_b, texts_b, texts_b, "coloraxis"),
             (win_diff, texts_a, texts_b, "coloraxis2")), start=1):
        if win is None:
            if column <= 2:
                why = missing[column - 1] or f"no layer {layer} head {index} in {names[column - 1]}"
                fig.add_annotation(text=token_label(why, 90), showarrow=False,
                                   xref=f"x{'' if column == 1 else column} domain",
                                   yref=f"y{'' if column == 1 else column} domain", x=0.5, y=0.5)
            continue
        fig.add_trace(go.Heatmap(z=win.values.astype(np.float64), x=win.k_centers(), y=win.q_centers(), coloraxis=axis,
                                 **_map_hover(win, texts_q, texts_k)), row=1, col=column)
        ticks_k = position_ticks(texts_k, win.k0, win.k1, max_labels=fitting)
        ticks_q = position_ticks(texts_q, win.q0, win.q1, max_labels=fitting)
        fig.update_xaxes(range=[win.k0 - 0.5, win.k1 - 0.5], showgrid=False, zeroline=False, tickangle=-60,
                         title_text="key position", constrain="domain", **ticks_k, row=1, col=column)
        fig.update_yaxes(range=[win.q1 - 0.5, win.q0 - 0.5], showgrid=False, zeroline=False, constrain="domain",
                         scaleanchor=f"x{'' if column == 1 else column}", title_text="query position" if column == 1
                         else None, **ticks_q, row=1, col=column)
    fig.update_layout(template="plotly_white", font=dict(FONT, size=11), height=height,
                      title=f"layer {layer}, head {index}" + (" — max-pooled blocks" if any(w.pooled for w in wins)
                                                              else ""),
                      margin=dict(l=90, r=70, t=70, b=130 if reason else 100),
                      coloraxis=dict(colorscale="Blues", cmin=0.0, cmax=peak))
    domains = _panel_domains(fig, panels)
    _colorbar(fig, "coloraxis", domains[1][1] + 0.005, "weight")
    if win_diff is not None:
        bound = _symmetric(win_diff.values)
        fig.update_layout(coloraxis2=dict(colorscale=DIVERGING, cmin=-bound, cmax=bound, cmid=0.0))
        _colorbar(fig, "coloraxis2", domains[2][1] + 0.005, "B − A")
    if reason:
        fig.add_annotation(text=reason, xref="paper", yref="paper", x=0.0, y=0.0, yanchor="top", yshift=-95,
                           showarrow=False, align="left", font=dict(size=12, color="#874d00"))
    return fig
