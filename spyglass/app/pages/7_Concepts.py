"""Concepts: is one word near another at each layer, compared with frequency-matched controls?"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from spyglass.app import state
from spyglass.model import Model
from spyglass.probes import baselines, concepts, linear

READ_IN = ("templates", "your text")

st.set_page_config(page_title="Spyglass · Concepts", layout="wide")
ctx = state.sidebar()
model = ctx.model

st.title("Concepts")
left, right, n_col = st.columns([2, 2, 1])
concept = state.text_input("concept", "Concept", "SpongeBob", where=left).strip()
target = state.text_input("target", "Near which word?", "underwater", where=right).strip()
n_controls = state.number_int("controls", "Control words", 20, 500, 100, where=n_col)
left, mid, right = st.columns(3)
read_in = state.radio("read_in", "Concept read in", READ_IN, "templates", where=left,
                      horizontal=True, help="templates: five neutral sentences such as "
                      f"{concepts.DEFAULT_TEMPLATES[0]!r}; your text: the sidebar text, which "
                      "must contain the concept. The target and controls always use templates.")
pool = state.radio("pool", "Pooling of multi-token words", concepts.POOLS, "mean", where=mid,
                   horizontal=True)
how = state.radio("measure", "Measure", baselines.MEASURES, "centered", where=right,
                  horizontal=True, help="centered: cosine after subtracting the controls' "
                  "mean vector at each layer; cosine: raw; euclidean: distance.")
if not concept or not target:
    st.info("Type a concept and a word to compare it with.")
    st.stop()


@st.cache_resource(show_spinner=False, max_entries=8)
def _probe(model_key: tuple, concept: str, target: str, n: int, pool: str, how: str,
           contexts: tuple[str, ...] | None, bos: bool, _model: Model) -> baselines.PairProbe:
    # Keyed by the model's name and identity: the Model object itself cannot be hashed.
    return baselines.probe_pair(_model, concept, target, n_controls=n, pool=pool, how=how,
                                concept_contexts=contexts, prepend_bos=bos)


@st.cache_resource(show_spinner=False, max_entries=4)
def _linear(model_key: tuple, texts_a: tuple[str, ...], texts_b: tuple[str, ...],
            pool: str, _model: Model) -> linear.ProbeCurve:
    return linear.linear_probe(_model, texts_a, texts_b, pool=pool)


contexts = (ctx.text,) if read_in == "your text" else None
try:
    with st.spinner(f"Reading {concept}, {target} and {n_controls} controls at every layer …"):
        probe = _probe((model.name, id(model)), concept, target, n_controls, pool, how,
                       contexts, ctx.bos, model)
except ValueError as exc:
    st.error(state.md(str(exc)))
    st.stop()

if read_in == "your text" and probe.concept_vectors.at_sink:
    st.warning(state.md(
        f"{concept} is the first token of your text and there is no BOS token: its "
        "residual there is the model's attention sink, not a typical reading. Turn on "
        "'Prepend BOS token' or start the text with other words."))

st.caption(state.md(f"Concept: {probe.concept_note}. Target: {probe.target_note}. "
                    f"{probe.controls.describe()}. Measure: {probe.measure_note}."))
b = probe.baseline
rows = list(probe.row_names)
low, high = np.percentile(b.controls, [5, 95], axis=0).tolist()  # (row,) each
layer = state.slider_int("layer", "Layer", 0, model.n_layers - 1, model.n_layers // 2)
marked = rows.index(str(layer))

fig = go.Figure([
    go.Scatter(x=rows, y=high, mode="lines", line={"width": 0}, hoverinfo="skip",
               showlegend=False),
    go.Scatter(x=rows, y=low, mode="lines", line={"width": 0}, fill="tonexty",
               fillcolor="rgba(150,150,150,0.3)", name="controls, middle 90%",
               hoverinfo="skip"),
    go.Scatter(x=rows, y=b.mean.tolist(), mode="lines", line={"dash": "dash", "color": "#777"},
               name="controls, mean"),
    go.Scatter(x=rows, y=b.value.tolist(), mode="lines+markers", name=state.esc(target),
               customdata=np.stack([b.z, b.rank], axis=1).tolist(),
               hovertemplate="%{x}: %{y:.4f}<br>z %{customdata[0]:.2f}, rank "
                             f"%{{customdata[1]}} of {b.n + 1}<extra></extra>"),
])
fig.add_vline(x=marked, line={"color": "#999", "dash": "dot"})
fig.update_xaxes(type="category", title="emb = token-embedding rows; then resid_post of block")
fig.update_layout(title=state.esc(f"{concept} · {target} against {b.n} controls ({how})"),
                  yaxis_title=how, height=420, margin={"l": 10, "r": 10, "t": 40, "b": 10})
st.plotly_chart(fig, key="similarity")

rank, z = int(b.rank[marked]), float(b.z[marked])
st.metric(f"Rank at layer {layer}", f"{rank} of {b.n + 1}", f"z = {z:+.2f}",
          delta_color="off")
st.text(f"{target} is {concept}'s nearest word number {rank} of {b.n + 1} (itself and "
        f"{b.n} controls) at layer {layer}; 1 is nearest.")

left, right = st.columns(2)
with left:
    st.markdown(f"**Nearest of the {b.n + 1} words at layer {layer}**")
    at = marked - 1  # row 0 is the embedding matrix
    reference = np.concatenate([probe.target_vectors.mean[at][None],
                                probe.control_vectors[:, at]])
    near = concepts.context_neighbours(
        probe.concept_vectors.mean[at], reference, [target, *probe.controls.words], k=10,
        center=probe.control_vectors[:, at].mean(axis=0),
        metric="euclidean" if how == "euclidean" else "cosine")
    st.dataframe({"word": [n.label for n in near], how: [round(n.score, 4) for n in near]},
                 hide_index=True, key="context_neighbours")
with right:
    st.markdown("**Nearest tokens in the embedding matrix**")
    emb = concepts.embedding_vectors(model, [concept], pool=pool)
    vocab = concepts.vocab_neighbours(model, emb.vectors[0], k=10, exclude=emb.words[0].ids)
    st.dataframe({"token": [state.visible(n.label) for n in vocab],
                  "id": [n.token_id for n in vocab],
                  "cosine (centred)": [round(n.score, 4) for n in vocab]},
                 hide_index=True, key="vocab_neighbours")

st.subheader("Linear probe")
st.caption("A logistic regression per layer on each text's mean residual, scored by 5-fold "
           "held-out accuracy; the shuffled-label line shows what the same probe reaches "
           "with no real signal. One sentence per line.")
left, right = st.columns(2)
raw_a = state.text_input("probe_a", "Set A", "\n".join(linear.SEA_TEXTS), where=left,
                         area=True, height=160)
raw_b = state.text_input("probe_b", "Set B", "\n".join(linear.DESERT_TEXTS), where=right,
                         area=True, height=160)
texts_a = tuple(t.strip() for t in raw_a.splitlines() if t.strip())
texts_b = tuple(t.strip() for t in raw_b.splitlines() if t.strip())
try:
    with st.spinner("Fitting a probe at every layer …"):
        curve = _linear((model.name, id(model)), texts_a, texts_b, "mean", model)
except ValueError as exc:
    st.warning(state.md(str(exc)))
    st.stop()
probe_fig = go.Figure([
    go.Scatter(x=list(curve.layers), y=curve.accuracy.tolist(), mode="lines+markers",
               name="held-out accuracy",
               error_y={"type": "data", "array": curve.accuracy_sd.tolist(), "visible": True}),
    go.Scatter(x=list(curve.layers), y=curve.shuffled.tolist(), mode="lines",
               line={"dash": "dash", "color": "#777"}, name="shuffled labels"),
])
probe_fig.add_hline(y=curve.chance, line={"color": "#bbb", "dash": "dot"})
probe_fig.update_layout(title=f"Set A ({curve.n_a}) vs set B ({curve.n_b})", height=380,
                        xaxis_title="layer (resid_post)", yaxis_title="accuracy",
                        yaxis_range=[0, 1.05], margin={"l": 10, "r": 10, "t": 40, "b": 10})
st.plotly_chart(probe_fig, key="probe_curve")
