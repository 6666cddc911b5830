"""Q · K · V: one head's attention for one query, step by step."""

from __future__ import annotations

import numpy as np
import streamlit as st

from spyglass.app import figures, state

MAX_KEYS = 128  # keys drawn at most; the numbers are computed over all of them

st.set_page_config(page_title="Spyglass · Q·K·V", layout="wide")
ctx = state.sidebar()
layer, head = state.layer_head(ctx)
query = state.slider_int("query", "Query position", 0, ctx.n_pos - 1, ctx.n_pos - 1,
                         where=st.sidebar)
steps = state.attention_steps(ctx.model, ctx.trace, layer, head, query)
model = ctx.model

st.title("Q · K · V")
st.markdown(f"Layer **{layer}**, head **{head}**, query position **{query}**:")
st.code(state.visible(ctx.labels[query]), language=None)
if model.n_kv_heads != model.n_heads:
    sharing = [h for h in range(model.n_heads) if model.kv_head_of(h) == steps.kv_head]
    st.info(f"Grouped-query attention: query head {head} reads key/value head "
            f"{steps.kv_head}, shared by query heads {', '.join(map(str, sharing))}.")
if steps.rotary:
    st.caption("This model uses rotary position embeddings: q and k are shown after rotation "
               "(hook_rot_q / hook_rot_k), the vectors whose dot products are the scores. "
               "hook_q / hook_k hold them before rotation.")

keys = np.arange(query + 1)
shown = keys[-MAX_KEYS:]
ticks = state.tick_labels(ctx.labels, shown)
if len(shown) < len(keys):
    st.info(f"Showing the last {MAX_KEYS} of {len(keys)} keys; scores and the softmax use "
            "all of them.")
cut = slice(len(keys) - len(shown), len(keys))

st.subheader("1 · the query vector")
st.plotly_chart(figures.vector_bar(steps.q, f"q (d_head = {model.d_head})"), key="q")

st.subheader("2 · the key vectors")
st.plotly_chart(figures.matrix_heatmap(steps.keys[cut], ticks, "k for each key position",
                                       value_name="k"), key="k")

st.subheader("3 · scores q·k / √d_head")
st.plotly_chart(figures.position_bar(steps.scores[cut], ctx.labels, shown,
                                     f"scores (÷ √{model.d_head})", "score"), key="scores")
if steps.captured_scores is not None:
    gap = float(np.abs(steps.scores - steps.captured_scores).max())
    st.caption(f"Largest difference from the model's own hook_attn_scores: {gap:.2e}.")
else:
    st.caption("The model's scores were not kept for this long text; these are recomputed.")

st.subheader("4 · softmax: attention weights")
st.plotly_chart(figures.position_bar(steps.weights[cut], ctx.labels, shown,
                                     "softmax(scores)", "weight"), key="weights")
gap = float(np.abs(steps.weights - steps.captured_weights).max())
st.caption(f"Largest difference from the model's own hook_pattern: {gap:.2e}.")

st.subheader("5 · values, weighted and summed")
left, right = st.columns(2)
left.plotly_chart(figures.matrix_heatmap(steps.values[cut], ticks, "v for each key",
                                         value_name="v"), key="v")
right.plotly_chart(figures.matrix_heatmap(steps.weighted[cut], ticks, "weight × v",
                                          value_name="weight × v"), key="weighted")
st.plotly_chart(figures.vector_bar(steps.output, "head output Σ weight·v (hook_z)"), key="z")
if steps.captured_output is not None:
    gap = float(np.abs(steps.output - steps.captured_output).max())
    st.caption(f"Largest difference from the model's own hook_z: {gap:.2e}.")
