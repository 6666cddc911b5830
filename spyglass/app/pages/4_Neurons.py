"""Neurons: the MLP neurons that fire hardest at each token, and one neuron across the text."""

from __future__ import annotations

import numpy as np
import streamlit as st

from spyglass.app import figures, state

TOP = 5  # neurons listed per token
MAX_ROWS = 128  # positions in the heatmap; the table always has all of them

st.set_page_config(page_title="Spyglass · Neurons", layout="wide")
ctx = state.sidebar()
model = ctx.model
layer = state.slider_int("layer", "Layer", 0, model.n_layers - 1, 0, where=st.sidebar)
acts = ctx.trace[f"blocks.{layer}.mlp.hook_post"]  # (pos, d_mlp)

# The TOP most active neurons at each position, strongest first.
top = np.argpartition(-acts, TOP - 1, axis=1)[:, :TOP]  # (pos, TOP)
order = np.argsort(-np.take_along_axis(acts, top, axis=1), axis=1, kind="stable")
top = np.take_along_axis(top, order, axis=1)

st.title("MLP neurons")
st.caption(f"Layer {layer}: activations after the nonlinearity (blocks.{layer}.mlp.hook_post), "
           f"{model.d_mlp:,} neurons.")
table: dict[str, list] = {
    "position": list(range(ctx.n_pos)),
    "token": [state.visible(label) for label in ctx.labels],
}
for rank in range(TOP):
    table[f"#{rank + 1}"] = [
        f"n{top[p, rank]} ({acts[p, top[p, rank]]:.2f})" for p in range(ctx.n_pos)
    ]
st.dataframe(table, hide_index=True, key="top_table")

# A heatmap of the neurons that appear in anyone's top list.
union = list(dict.fromkeys(int(n) for n in top[:, 0]))[:40]
rows = np.arange(min(ctx.n_pos, MAX_ROWS))
if ctx.n_pos > MAX_ROWS:
    st.info(f"The heatmap shows the first {MAX_ROWS} of {ctx.n_pos:,} positions; the table "
            "above lists all of them.")
st.plotly_chart(figures.neuron_grid(acts[np.ix_(rows, union)], union,
                                    state.tick_labels(ctx.labels, rows),
                                    "Each position's strongest neuron, across the text"),
                key="neuron_grid")

# One neuron across the text.
st.subheader("One neuron")
neuron = state.number_int("neuron", "Neuron", 0, model.d_mlp - 1, int(top[-1, 0]))
values = acts[:, neuron]
scale = float(np.abs(values).max()) or 1.0
tips = [f"position {p} · neuron {neuron} · {values[p]:.4f}" for p in range(ctx.n_pos)]
st.html(figures.coloured_text(ctx.labels, values, tips, scale, signed=True))
st.caption(f"Red = positive, blue = negative; darkest = |{scale:.3f}|. Hover for values.")
st.plotly_chart(figures.position_bar(values, ctx.labels, list(range(ctx.n_pos)),
                                     f"neuron {neuron} at each position", "activation"),
                key="neuron_bar")

# Where this neuron fires hardest across a corpus export.
st.subheader("Open an export folder")
try:
    from spyglass.hooks.store import Export, ExportError
    from spyglass.probes.neurons import top_contexts
except ImportError as exc:
    st.info(f"Corpus search is not available in this installation ({exc}).")
else:
    folder = state.text_input("export", "Export folder (made by `spyglass export`)", "")
    if folder.strip():
        try:
            # Ask for no more rows than the export's index keeps per neuron.
            index = Export(folder.strip(), verify=False).manifest.get("neuron_index") or {}
            found = top_contexts(folder.strip(), layer, neuron,
                                 top=min(20, int(index.get("top_k", 20))))
        except (OSError, ValueError, KeyError, ExportError) as exc:
            st.error(state.md(f"Could not read {folder!r}: {exc}"))
        else:
            st.caption(f"The {len(found)} strongest activations of neuron {neuron} at layer "
                       f"{layer} in the export, with the text around each.")
            st.dataframe(
                {
                    "value": [round(r["value"], 4) for r in found],
                    "before": [state.visible(r["left"]) for r in found],
                    "token": [state.visible(r["token"]) for r in found],
                    "after": [state.visible(r["right"]) for r in found],
                    "document": [str(r["name"] or r["doc"]) for r in found],
                    "position": [r["position"] for r in found],
                },
                hide_index=True, key="contexts",
            )
