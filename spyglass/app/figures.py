"""Plotly figures and small HTML blocks for the pages; no Streamlit here.

Every piece of token text that reaches a figure or an HTML block passes through
:func:`spyglass.app.state.esc` first: Plotly interprets hover text and tick labels as HTML,
so a token such as ``<script>`` must arrive escaped to be shown as itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from spyglass.app.state import esc, tick_labels, visible

TICKS_ALL = 64  # heatmaps with more positions a side label every n-th one
FONT = "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"
_CHIP = (
    "display:inline-block;margin:2px 1px;padding:1px 4px;border:1px solid #c9ccd1;"
    f"border-radius:4px;font-family:{FONT};font-size:0.9em;white-space:pre;"
)


# --- tokens as HTML --------------------------------------------------------------------------


def heat(value: float, scale: float, signed: bool = False) -> str:
    """A background colour for ``value``: white at 0, red at ``scale`` (blue below 0)."""
    if not np.isfinite(value) or scale <= 0:
        return "transparent"
    strength = min(abs(value) / scale, 1.0) * 0.85
    rgb = "33, 102, 172" if signed and value < 0 else "214, 69, 65"
    return f"rgba({rgb}, {strength:.3f})"


def token_chips(labels: Sequence[str], ids: Sequence[int], caption: str,
                values: Sequence[float] | None = None, scale: float = 1.0,
                signed: bool = False, value_name: str = "") -> str:
    """One chip per token, whitespace made visible; hovering shows position and id."""
    chips = []
    for pos, (label, tid) in enumerate(zip(labels, ids, strict=True)):
        tip = f"position {pos} · id {tid}"
        style = _CHIP
        if values is not None:
            tip += f" · {value_name} {values[pos]:.3f}"
            style += f"background:{heat(values[pos], scale, signed)};"
        chips.append(f'<span style="{style}" title="{esc(tip)}">{esc(visible(label))}</span>')
    return (
        f'<div style="line-height:1.9"><div style="font-size:0.85em;color:#555">'
        f"{esc(caption)}</div>{''.join(chips)}</div>"
    )


def coloured_text(labels: Sequence[str], values: Sequence[float], tips: Sequence[str],
                  scale: float, signed: bool = False) -> str:
    """The text itself, each token's background coloured by its value; tips on hover."""
    spans = []
    for label, value, tip in zip(labels, values, tips, strict=True):
        spans.append(
            f'<span style="background:{heat(value, scale, signed)};border-radius:3px;'
            f'white-space:pre-wrap" title="{esc(tip)}">{esc(label)}</span>'
        )
    return (
        f'<div style="font-family:{FONT};line-height:1.8;padding:6px;border:1px solid #e3e5e8;'
        f'border-radius:6px">{"".join(spans)}</div>'
    )


# --- bar charts ------------------------------------------------------------------------------


def top_tokens_bar(labels: Sequence[str], probs: Sequence[float], title: str) -> go.Figure:
    """Horizontal bars of the most probable next tokens, most probable on top."""
    shown = [esc(visible(label)) for label in labels]
    fig = go.Figure(go.Bar(
        x=list(probs), y=list(range(len(shown))), orientation="h",
        customdata=shown, hovertemplate="%{customdata}: %{x:.4f}<extra></extra>",
        marker_color="#4c78a8",
    ))
    fig.update_yaxes(tickvals=list(range(len(shown))), ticktext=shown, autorange="reversed",
                     tickfont={"family": FONT})
    fig.update_layout(title=title, xaxis_title="probability", height=60 + 26 * len(shown),
                      margin={"l": 10, "r": 10, "t": 40, "b": 40})
    return fig


def vector_bar(vector: np.ndarray, title: str, name: str = "dim") -> go.Figure:
    """One bar per coordinate of a vector, with its value on hover."""
    fig = go.Figure(go.Bar(
        x=list(range(len(vector))), y=np.asarray(vector, dtype=float),
        hovertemplate=f"{name} %{{x}}: %{{y:.4f}}<extra></extra>", marker_color="#4c78a8",
    ))
    fig.update_layout(title=title, height=220, margin={"l": 10, "r": 10, "t": 40, "b": 30},
                      bargap=0.05)
    return fig


def position_bar(values: np.ndarray, labels: Sequence[str], positions: Sequence[int],
                 title: str, value_name: str) -> go.Figure:
    """One bar per token position (ticks ``"3: ␣the"``), e.g. scores or weights per key."""
    ticks = tick_labels(labels, positions)
    fig = go.Figure(go.Bar(
        x=list(range(len(positions))), y=np.asarray(values, dtype=float), customdata=ticks,
        hovertemplate=f"%{{customdata}}<br>{esc(value_name)} %{{y:.4f}}<extra></extra>",
        marker_color="#f58518",
    ))
    fig.update_xaxes(tickvals=list(range(len(positions))), ticktext=ticks, tickangle=-45,
                     tickfont={"family": FONT})
    fig.update_layout(title=title, height=280, margin={"l": 10, "r": 10, "t": 40, "b": 80},
                      yaxis_title=value_name)
    return fig


# --- attention -------------------------------------------------------------------------------

FIRST_MODES = ("show", "hide", "rescale")


def first_column(pattern: np.ndarray, mode: str) -> tuple[np.ndarray, int]:
    """Apply the first-column choice to a ``[q, k]`` pattern; returns (matrix, first key).

    ``hide`` drops key 0; ``rescale`` also renormalises each row over the remaining keys, so
    heads that park most weight on position 0 show where the rest goes.
    """
    if mode == "show":
        return pattern, 0
    if mode not in FIRST_MODES:
        raise ValueError(f"mode must be one of {FIRST_MODES}, got {mode!r}.")
    rest = pattern[:, 1:]
    if mode == "rescale":
        # Callers pass patterns whose future keys are NaN (drawn blank): sum around them and
        # keep them NaN, or every row but the last would come out as zeros.
        total = np.nansum(rest, axis=-1, keepdims=True)
        scaled = np.divide(rest, total, out=np.zeros_like(rest), where=total > 0)
        rest = np.where(np.isnan(rest), np.nan, scaled)
    return rest, 1


def block_mean(matrix: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Average ``matrix`` over a grid of about ``rows`` x ``cols`` blocks (NaNs ignored)."""
    r_edges = np.linspace(0, matrix.shape[0], min(rows, matrix.shape[0]) + 1).astype(int)
    c_edges = np.linspace(0, matrix.shape[1], min(cols, matrix.shape[1]) + 1).astype(int)
    out = np.empty((len(r_edges) - 1, len(c_edges) - 1), dtype=np.float32)
    for i in range(len(r_edges) - 1):
        band = matrix[r_edges[i]:r_edges[i + 1]]
        sums = np.add.reduceat(np.nan_to_num(band), c_edges[:-1], axis=1).sum(axis=0)
        counts = np.add.reduceat(~np.isnan(band), c_edges[:-1], axis=1).sum(axis=0)
        out[i] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


def bin_labels(labels: Sequence[str], n_bins: int, offset: int = 0) -> list[str]:
    """Escaped labels for ``n_bins`` equal runs of positions: ``"120–127: ␣the…"``.

    ``labels[0]`` is position ``offset`` (e.g. 1 when the first key is hidden).
    """
    edges = np.linspace(0, len(labels), min(n_bins, len(labels)) + 1).astype(int)
    out = []
    for a, b in itertools.pairwise(edges):
        first = esc(visible(labels[a]))
        lo, hi = a + offset, b - 1 + offset
        out.append(f"{lo}: {first}" if hi == lo else f"{lo}–{hi}: {first}…")
    return out


@dataclass
class AttentionView:
    """What the heatmap draws of one head: the matrix, its escaped ticks, and a notice."""

    matrix: np.ndarray
    q_ticks: list[str]
    k_ticks: list[str]
    notice: str | None = None


def causal(pattern: np.ndarray) -> np.ndarray:
    """A ``[q, k]`` pattern with keys after the query set to NaN, so they draw blank."""
    return np.where(np.tril(np.ones(pattern.shape, dtype=bool)), pattern, np.nan)


def attention_view(pattern: np.ndarray, labels: Sequence[str], first: str, max_side: int,
                   view: str = "window", start: int = 0) -> AttentionView:
    """Cut one head's ``[q, k]`` pattern to what a browser can draw.

    Up to ``max_side`` positions everything is shown. Longer texts get either a ``window``
    of ``max_side`` positions from ``start`` (full resolution, as queries and keys) or are
    ``downsample``-d to ``max_side`` blocks a side, each the mean weight of its block; the
    notice says which.
    """
    matrix, k0 = first_column(causal(pattern), first)
    n_pos = len(labels)
    if n_pos <= max_side:
        return AttentionView(matrix, tick_labels(labels), tick_labels(labels, range(k0, n_pos)))
    if view == "window":
        rows = slice(start, start + max_side)
        cols = slice(max(start - k0, 0), start + max_side - k0)
        q_pos, k_pos = np.arange(n_pos)[rows], np.arange(k0, n_pos)[cols]
        return AttentionView(
            matrix[rows, cols], tick_labels(labels, q_pos), tick_labels(labels, k_pos),
            f"{n_pos:,} tokens: showing a window of {max_side} positions ({start}–"
            f"{start + max_side - 1}) as queries and keys, at full resolution. Keys before "
            "the window are not drawn. Move the window in the sidebar.",
        )
    if view != "downsample":
        raise ValueError(f"view must be 'window' or 'downsample', got {view!r}.")
    small = block_mean(matrix, max_side, max_side)
    return AttentionView(
        small, bin_labels(labels, max_side), bin_labels(labels[k0:], max_side, offset=k0),
        f"{n_pos:,} tokens: downsampled on the server to {small.shape[0]}×{small.shape[1]} "
        "blocks; each cell is the mean weight of its block (future keys count as absent).",
    )


def thumbnails(patterns: Sequence[np.ndarray], first: str, side: int) -> np.ndarray:
    """Every head's pattern averaged to at most ``side`` x ``side``: ``[layer, head, t, t]``.

    ``patterns[layer]`` is ``[head, q, k]``; ``first`` is applied as in :func:`first_column`.
    """
    n_heads, n_pos, _ = patterns[0].shape
    t = min(side, n_pos)
    out = np.zeros((len(patterns), n_heads, t, t), dtype=np.float32)
    for layer, per_head in enumerate(patterns):
        for head, pattern in enumerate(per_head):
            small = block_mean(first_column(causal(pattern), first)[0], t, t)
            out[layer, head, :small.shape[0], :small.shape[1]] = np.nan_to_num(small)
    return out


def attention_heatmap(matrix: np.ndarray, q_ticks: Sequence[str], k_ticks: Sequence[str],
                      title: str, zmax: float = 1.0) -> go.Figure:
    """Queries as rows, keys as columns; ticks (already escaped) are unique per row/column.

    Cells above the diagonal (keys after the query) are NaN and stay blank. The axes are
    categorical, so repeated tokens keep a row and column each; up to :data:`TICKS_ALL`
    positions every one is labelled. Cells are square; draw with
    ``st.plotly_chart(..., width="content")`` to keep the size.
    """
    n = max(len(q_ticks), len(k_ticks))
    cell = int(np.clip(760 / max(n, 1), 6, 56))
    # Every row and column keeps its own category (and its label on hover); above
    # TICKS_ALL positions only every step-th gets a printed tick, so the labels stay legible.
    step = 1 if n <= TICKS_ALL else int(np.ceil(n / TICKS_ALL))
    fig = go.Figure(go.Heatmap(
        z=matrix, x=list(k_ticks), y=list(q_ticks), zmin=0.0, zmax=zmax,
        colorscale="Blues", hoverongaps=False, colorbar={"title": "weight"},
        hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.4f}<extra></extra>",
    ))
    size = 11 if n <= 40 else 8
    fig.update_xaxes(type="category", tickmode="array", tickvals=list(k_ticks)[::step],
                     ticktext=list(k_ticks)[::step], tickangle=-60, side="top", title="key",
                     tickfont={"family": FONT, "size": size}, constrain="domain")
    fig.update_yaxes(type="category", tickmode="array", tickvals=list(q_ticks)[::step],
                     ticktext=list(q_ticks)[::step], autorange="reversed", title="query",
                     tickfont={"family": FONT, "size": size}, scaleanchor="x",
                     constrain="domain")
    fig.update_layout(title=title, width=len(k_ticks) * cell + 260,
                      height=len(q_ticks) * cell + 200,
                      margin={"l": 10, "r": 10, "t": 150, "b": 10})
    return fig


def overview_grid(thumbs: np.ndarray, selected: tuple[int, int]) -> go.Figure:
    """Every head as a small multiple in one figure: columns are layers, rows heads.

    ``thumbs`` is ``[layer, head, t, t]``. One heatmap holds every tile (with a blank gutter
    between tiles), because hundreds of separate subplots render slowly; an almost
    transparent square marker over each tile carries the click that opens that head. Draw
    with ``st.plotly_chart(..., width="content")``.
    """
    n_layers, n_heads, t, _ = thumbs.shape
    step = t + 1
    canvas = np.full((n_heads * step, n_layers * step), np.nan, dtype=np.float32)
    for layer in range(n_layers):
        for head in range(n_heads):
            canvas[head * step:head * step + t, layer * step:layer * step + t] = thumbs[
                layer, head]
    top = float(np.nanmax(thumbs)) if np.isfinite(thumbs).any() else 1.0
    fig = go.Figure(go.Heatmap(z=canvas, colorscale="Blues", zmin=0, zmax=top or 1.0,
                               showscale=False, hoverinfo="skip"))
    tile = int(np.clip(960 / n_layers, 26, 90))  # pixels per tile
    layer_of = np.repeat(np.arange(n_layers), n_heads)
    head_of = np.tile(np.arange(n_heads), n_layers)
    centre = (t - 1) / 2
    fig.add_trace(go.Scatter(
        x=layer_of * step + centre, y=head_of * step + centre, mode="markers",
        marker={"size": tile - 2, "symbol": "square", "color": "rgba(0,0,0,0.01)"},
        customdata=np.stack([layer_of, head_of], axis=1),
        hovertemplate="layer %{customdata[0]}, head %{customdata[1]}<extra>click to open</extra>",
        showlegend=False,
    ))
    layer, head = selected
    fig.add_shape(type="rect", x0=layer * step - 0.9, x1=layer * step + t - 0.1,
                  y0=head * step - 0.9, y1=head * step + t - 0.1,
                  line={"color": "#e45756", "width": 2})
    fig.update_xaxes(tickvals=np.arange(n_layers) * step + centre,
                     ticktext=[f"L{la}" for la in range(n_layers)], side="top", showgrid=False,
                     zeroline=False, title="layer", constrain="domain")
    fig.update_yaxes(tickvals=np.arange(n_heads) * step + centre,
                     ticktext=[f"H{h}" for h in range(n_heads)], autorange="reversed",
                     showgrid=False, zeroline=False, title="head", scaleanchor="x",
                     constrain="domain")
    fig.update_layout(width=n_layers * tile + 90, height=n_heads * tile + 90,
                      clickmode="event+select", dragmode=False, plot_bgcolor="white",
                      margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return fig


def score_grid(scores: np.ndarray, title: str, selected: tuple[int, int],
               zmin: float | None = None, zmax: float | None = None) -> go.Figure:
    """A ``[layer, head]`` score drawn with layers as columns (as in the overview)."""
    n_layers, n_heads = scores.shape
    fig = go.Figure(go.Heatmap(
        z=scores.T, x=list(range(n_layers)), y=list(range(n_heads)), colorscale="Viridis",
        zmin=zmin, zmax=zmax,
        hovertemplate="layer %{x}, head %{y}: %{z:.3f}<extra></extra>",
    ))
    layer, head = selected
    fig.add_shape(type="rect", x0=layer - 0.5, x1=layer + 0.5, y0=head - 0.5, y1=head + 0.5,
                  line={"color": "#e45756", "width": 2})
    fig.update_xaxes(title="layer", dtick=1 if n_layers <= 32 else None)
    fig.update_yaxes(title="head", autorange="reversed", dtick=1 if n_heads <= 16 else None)
    fig.update_layout(title=title, height=120 + 22 * n_heads,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def matrix_heatmap(matrix: np.ndarray, row_ticks: Sequence[str], title: str,
                   col_name: str = "dim", value_name: str = "value") -> go.Figure:
    """A small ``[row, column]`` heatmap, diverging around 0; rows are labelled tokens.

    ``row_ticks`` must already be escaped and unique (see :func:`state.tick_labels`).
    """
    limit = float(np.abs(matrix).max()) if matrix.size else 1.0
    fig = go.Figure(go.Heatmap(
        z=matrix, y=list(row_ticks), x=list(range(matrix.shape[1])), colorscale="RdBu_r",
        zmid=0.0, zmin=-limit, zmax=limit,
        hovertemplate=(f"%{{y}}<br>{col_name} %{{x}}<br>{esc(value_name)} %{{z:.4f}}"
                       "<extra></extra>"),
    ))
    fig.update_yaxes(type="category", tickmode="array", tickvals=list(row_ticks),
                     ticktext=list(row_ticks), autorange="reversed",
                     tickfont={"family": FONT, "size": 10})
    fig.update_xaxes(title=col_name)
    fig.update_layout(title=title, height=min(700, 120 + 16 * len(row_ticks)),
                      margin={"l": 10, "r": 10, "t": 40, "b": 40})
    return fig


def neuron_grid(acts: np.ndarray, neurons: Sequence[int], ticks: Sequence[str],
                title: str) -> go.Figure:
    """Activations ``[pos, neuron]`` of a few neurons at every position (ticks escaped)."""
    cols = [f"n{n}" for n in neurons]
    limit = float(np.abs(acts).max()) if acts.size else 1.0
    fig = go.Figure(go.Heatmap(
        z=acts, x=cols, y=list(ticks), colorscale="RdBu_r", zmid=0.0, zmin=-limit, zmax=limit,
        hovertemplate="%{y}<br>neuron %{x}<br>activation %{z:.4f}<extra></extra>",
    ))
    fig.update_xaxes(type="category", tickangle=-60, side="top")
    fig.update_yaxes(type="category", tickmode="array", tickvals=list(ticks),
                     ticktext=list(ticks), autorange="reversed",
                     tickfont={"family": FONT, "size": 10})
    fig.update_layout(title=title, height=min(900, 160 + 18 * len(ticks)),
                      margin={"l": 10, "r": 10, "t": 110, "b": 10})
    return fig


def lens_grid(top_probs: np.ndarray, top_labels: np.ndarray, layers: Sequence[int],
              pos_ticks: Sequence[str], title: str) -> go.Figure:
    """The logit lens as a layer x position grid.

    Colour is the top-1 probability, the cell text the top-1 token; hover lists the top-k.
    ``top_probs`` / ``top_labels`` are ``[layer, pos, k]``; ``pos_ticks`` already escaped.
    """
    n_layers, n_pos, k = top_probs.shape
    words = np.vectorize(lambda s: esc(visible(s)), otypes=[object])(top_labels)
    hover = np.empty((n_layers, n_pos), dtype=object)
    for i in range(n_layers):
        for j in range(n_pos):
            hover[i, j] = "<br>".join(f"{words[i, j, r]}  {top_probs[i, j, r]:.3f}"
                                      for r in range(k))
    rows = [f"L{la}" for la in layers]
    fig = go.Figure(go.Heatmap(
        z=top_probs[:, :, 0], x=list(pos_ticks), y=rows, zmin=0.0, zmax=1.0,
        colorscale="Blues", text=words[:, :, 0], texttemplate="%{text}",
        textfont={"family": FONT, "size": 10}, customdata=hover,
        colorbar={"title": "p(top 1)"},
        hovertemplate="%{y} · %{x}<br>%{customdata}<extra></extra>",
    ))
    fig.update_xaxes(type="category", tickmode="array", tickvals=list(pos_ticks),
                     ticktext=list(pos_ticks), tickangle=-60, side="top",
                     tickfont={"family": FONT, "size": 10})
    fig.update_yaxes(type="category", title="layer (read through final norm + unembedding)")
    fig.update_layout(title=title, height=min(1400, 160 + 24 * n_layers),
                      margin={"l": 10, "r": 10, "t": 120, "b": 10})
    return fig


# --- embeddings ------------------------------------------------------------------------------


def similarity_heatmap(matrix: np.ndarray, words: Sequence[str], title: str,
                       metric: str) -> go.Figure:
    """A word x word table of cosine similarity or Euclidean distance, values written in."""
    names = [esc(w) for w in words]
    cosine = metric == "cosine"
    fig = go.Figure(go.Heatmap(
        z=matrix, x=names, y=names, colorscale="RdBu_r" if cosine else "Viridis_r",
        zmid=0.0 if cosine else None, zmin=-1.0 if cosine else None,
        zmax=1.0 if cosine else None, text=np.round(matrix, 3), texttemplate="%{text}",
        hovertemplate=f"%{{y}} · %{{x}}<br>{metric} %{{z:.4f}}<extra></extra>",
    ))
    fig.update_xaxes(type="category", tickmode="array", tickvals=names, ticktext=names)
    fig.update_yaxes(type="category", tickmode="array", tickvals=names, ticktext=names,
                     autorange="reversed")
    fig.update_layout(title=title, height=120 + 48 * len(words),
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def layer_lines(values: np.ndarray, names: Sequence[str], steps: Sequence[str],
                title: str, metric: str, marked: int | None = None) -> go.Figure:
    """One line per pair across ``steps`` (embedding, then each block): ``[pair, step]``."""
    fig = go.Figure()
    for row, name in zip(values, names, strict=True):
        fig.add_trace(go.Scatter(
            x=list(steps), y=row, mode="lines+markers", name=esc(name),
            hovertemplate=f"{esc(name)}<br>%{{x}}: %{{y:.4f}}<extra></extra>",
        ))
    if marked is not None:
        fig.add_vline(x=marked, line={"color": "#999", "dash": "dot"})
    fig.update_xaxes(type="category", title="where the vector is read")
    fig.update_layout(title=title, yaxis_title=metric, height=420,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def pca_scatter(coords: np.ndarray, words: Sequence[str], explained: np.ndarray,
                title: str) -> go.Figure:
    """The words on their first two principal components."""
    names = [esc(w) for w in words]
    fig = go.Figure(go.Scatter(
        x=coords[:, 0], y=coords[:, 1], mode="markers+text", text=names,
        textposition="top center", marker={"size": 11, "color": "#4c78a8"}, cliponaxis=False,
        hovertemplate="%{text}<br>PC1 %{x:.3f}<br>PC2 %{y:.3f}<extra></extra>",
    ))
    pad = 0.15 * max(float(np.ptp(coords[:, 0])), 1e-9)
    fig.update_xaxes(range=[coords[:, 0].min() - pad, coords[:, 0].max() + pad])
    fig.update_layout(title=title, height=420, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      xaxis_title=f"PC1 ({explained[0]:.0%} of variance)",
                      yaxis_title=f"PC2 ({explained[1]:.0%} of variance)")
    return fig
