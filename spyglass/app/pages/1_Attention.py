"""Attention: one head's pattern, every head at a glance, and per-head scores."""

from __future__ import annotations

import numpy as np
import streamlit as st

from spyglass.app import figures, state

MAX_SIDE = state.ATTENTION_MAX_SIDE
THUMB = 16  # side of each overview tile

st.set_page_config(page_title="Spyglass · Attention", layout="wide")
ctx = state.sidebar()
layer, head = state.layer_head(ctx)
first = state.radio("first", "First key position", figures.FIRST_MODES, "show",
                    where=st.sidebar, horizontal=True,
                    help="Many heads park most weight on position 0. 'hide' drops that "
                         "column; 'rescale' also renormalises each row over the other keys.")
st.title("Attention")
kv = ctx.model.kv_head_of(head)
st.caption(f"Layer {layer}, head {head}" + (
    f" (shares key/value head {kv})" if ctx.model.n_kv_heads != ctx.model.n_heads else ""))

# The chosen head: rows are queries, columns keys; long texts get a window or blocks.
view, start = "window", 0
if ctx.n_pos > MAX_SIDE:
    view = state.radio("view", "Long text", ("window", "downsample"), "window",
                       where=st.sidebar, horizontal=True)
    if view == "window":
        start = state.slider_int("start", "Window start", 0, ctx.n_pos - MAX_SIDE, 0,
                                 where=st.sidebar)
shown = figures.attention_view(ctx.trace[f"blocks.{layer}.attn.hook_pattern"][head],
                               ctx.labels, first, MAX_SIDE, view, start)
if shown.notice:
    st.info(shown.notice)
# Raw weights use the full 0-1 scale; hidden, rescaled or averaged ones their own maximum.
stretched = first != "show" or (ctx.n_pos > MAX_SIDE and view == "downsample")
finite = np.isfinite(shown.matrix).any()
zmax = float(np.nanmax(shown.matrix)) if stretched and finite else 1.0
st.plotly_chart(figures.attention_heatmap(shown.matrix, shown.q_ticks, shown.k_ticks,
                                          f"Layer {layer}, head {head}", zmax=zmax),
                key="heatmap", width="content")


def _open_clicked() -> None:
    event = st.session_state.get("overview")
    points = [p for p in (event.selection.points if event else []) if p.get("curve_number") == 1]
    if points:
        index = int(points[0]["point_index"])
        state.set_value("layer", index // ctx.model.n_heads)
        state.set_value("head", index % ctx.model.n_heads)


st.subheader("All heads")
thumbs = ctx.trace.derived(f"thumbs:{first}", lambda: figures.thumbnails(
    [ctx.trace[f"blocks.{la}.attn.hook_pattern"] for la in range(ctx.model.n_layers)],
    first, THUMB))
st.caption(f"Columns are layers, rows heads; each tile is a head's pattern averaged to at most "
           f"{THUMB}×{THUMB} cells. Click a tile to open it.")
st.plotly_chart(figures.overview_grid(thumbs, (layer, head)), key="overview",
                on_select=_open_clicked, selection_mode="points", width="content")

# Per-head scores.
st.subheader("Head scores")
try:
    scores = state.head_scores(ctx.trace)
except ValueError as exc:
    st.info(str(exc))
else:
    specs = (("entropy", "Entropy (nats)", None), ("first", "Weight on position 0", 1.0),
             ("previous", "Previous-token score", 1.0))
    for field, title, zmax in specs:
        st.plotly_chart(figures.score_grid(getattr(scores, field), title, (layer, head),
                                           zmin=0.0, zmax=zmax), key=f"score_{field}")
    st.caption(f"Layer {layer}, head {head}: entropy {scores.entropy[layer, head]:.3f} nats, "
               f"weight on position 0 {scores.first[layer, head]:.3f}, previous-token "
               f"{scores.previous[layer, head]:.3f} (means over queries 1 onwards).")
