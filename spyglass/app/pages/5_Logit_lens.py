"""Logit lens: what each layer's residual stream would predict if it were the last."""

from __future__ import annotations

import dataclasses

import numpy as np
import streamlit as st

from spyglass.app import figures, state
from spyglass.hooks import Trace
from spyglass.probes.lens import logit_lens

# Limitation: 48 positions are read at once, because each costs one unembedding per layer
# (about 2 s for 48 positions on the embedded model); longer texts move a window.
WINDOW = 48
K = 5

st.set_page_config(page_title="Spyglass · Logit lens", layout="wide")
ctx = state.sidebar()
stream = state.radio("stream", "Residual stream", ("resid_post", "resid_pre"), "resid_post",
                     where=st.sidebar, horizontal=True,
                     help="resid_post: after each block; resid_pre: before it.")
start = 0
if ctx.n_pos > WINDOW:
    start = state.slider_int("lens_start", "First position", 0, ctx.n_pos - WINDOW,
                             ctx.n_pos - WINDOW, where=st.sidebar)
stop = min(start + WINDOW, ctx.n_pos)


def _window() -> Trace:
    """The trace cut to positions start..stop, holding only the chosen stream."""
    tokens = ctx.trace.trace.tokens
    cut = slice(start, stop)
    sliced = dataclasses.replace(
        tokens, ids=tokens.ids[cut], pieces=tokens.pieces[cut], labels=tokens.labels[cut],
        spans=tokens.spans[cut],
    )
    names = [f"blocks.{la}.hook_{stream}" for la in range(ctx.model.n_layers)]
    return Trace(sliced, ctx.trace.trace.provenance, {n: ctx.trace[n][cut] for n in names})


with st.spinner("Reading every layer through the unembedding …"):
    lens = ctx.trace.derived(f"lens:{stream}:{start}:{stop}",
                             lambda: logit_lens(ctx.model, _window(), k=K, stream=stream))

st.title("Logit lens")
st.caption(f"Each row reads blocks.L.hook_{stream} through the model's final norm and "
           "unembedding. Cell text: the most likely next token; colour: its probability; "
           f"hover: the top {K}.")
if ctx.n_pos > WINDOW:
    st.info(f"{ctx.n_pos:,} tokens: showing positions {start}–{stop - 1}, a window of "
            f"{WINDOW}. Move it in the sidebar.")
ticks = state.tick_labels(ctx.labels, list(range(start, stop)))
st.plotly_chart(figures.lens_grid(lens.top_probs, lens.top_labels, lens.layers, ticks,
                                  f"Top next token by layer ({stream})"), key="lens")
last = stop - 1 - start
st.dataframe(
    {
        "layer": list(lens.layers),
        "top token": [state.visible(s) for s in lens.top_labels[:, last, 0]],
        "p": np.round(lens.top_probs[:, last, 0], 4),
        "entropy (nats)": np.round(lens.entropy[:, last], 3),
        "p(final answer)": np.round(lens.final_token_prob[:, last], 4),
    },
    hide_index=True, key="lens_table",
)
st.caption(f"Table: position {stop - 1} ({state.md(state.visible(ctx.labels[stop - 1]))}) at every "
           "layer; 'p(final answer)' is the probability each layer gives the last layer's "
           "top token.")
