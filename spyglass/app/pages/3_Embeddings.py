"""Embeddings: how near the words you enter are, in the embedding matrix and at every layer."""

from __future__ import annotations

import numpy as np
import streamlit as st

from spyglass.app import figures, state
from spyglass.model import Model
from spyglass.probes import concepts, embeddings

DEFAULT_WORDS = "SpongeBob, underwater, pineapple, desert, taxes"
MAX_WORDS = 12
SOURCES = ("templates", "your text")

st.set_page_config(page_title="Spyglass · Embeddings", layout="wide")
ctx = state.sidebar()
model = ctx.model

st.title("Embeddings")
raw = state.text_input("words", "Words, separated by commas", DEFAULT_WORDS)
words = list(dict.fromkeys(w.strip() for w in raw.split(",") if w.strip()))[:MAX_WORDS]
left, mid, right = st.columns(3)
source = state.radio("source", "Residual stream read", SOURCES, "templates", where=left,
                     help="templates: each word in five neutral sentences "
                          f"(e.g. {concepts.DEFAULT_TEMPLATES[0]!r}); your text: where the "
                          "word occurs in the sidebar text.")
pool = state.radio("pool", "Pooling of multi-token words", concepts.POOLS, "mean",
                   where=mid, horizontal=True)
metric = state.radio("metric", "Measure", concepts.METRICS, "cosine", where=right,
                     horizontal=True)
if len(words) < 2:
    st.warning("Enter at least two words, separated by commas.")
    st.stop()


@st.cache_resource(show_spinner=False, max_entries=16)
def _template_vectors(model_key: tuple, words: tuple[str, ...], pool: str,
                      _model: Model) -> list[concepts.ContextVectors]:
    # Keyed by the model's name and identity, not the object, which cannot be hashed.
    return concepts.context_vectors_many(_model, list(words), pool=pool)


# Each word's vectors [step, d_model]: the token-embedding rows, then resid_post per block.
steps = ["embedding"] + [f"block {la}" for la in range(model.n_layers)]
vectors, notes = [], []
if source == "templates":
    static = concepts.embedding_vectors(model, words, pool=pool)
    with st.spinner("Running the words through five template sentences …"):
        in_context = _template_vectors((model.name, id(model)), tuple(words), pool, model)
    for i, cv in enumerate(in_context):
        vectors.append(np.concatenate([static.vectors[i][None], cv.mean]))
        notes.append(cv.describe())
else:
    missing = []
    embed = ctx.trace["hook_embed"]  # (pos, d_model)
    for word in list(words):
        found = embeddings.text_vectors(ctx.trace.trace, word, pool)
        if found is None:
            missing.append(word)
            words.remove(word)
            continue
        rows = [embeddings.pool_rows(embed[list(o.positions)], pool) for o in found.occurrences]
        vectors.append(np.concatenate([np.mean(rows, axis=0)[None], found.vectors]))
        cuts = sorted({o.labels for o in found.occurrences})
        notes.append(f"{word!r} ×{len(found.occurrences)} in your text: "
                     + "; ".join(concepts.pooling_note(c, pool) for c in cuts))
    if missing:
        st.warning("Not in your text (whole word, case-sensitive): "
                   + state.md(", ".join(missing)))
    if len(words) < 2:
        st.info("Fewer than two of the words occur in the text; switch to 'templates'.")
        st.stop()
stacked = np.stack(vectors)  # (word, step, d_model)
table = embeddings.pairwise(np.swapaxes(stacked, 0, 1), metric)  # (step, word, word)

with st.expander("How each word was cut and pooled"):
    st.text("\n".join(notes))

at = state.selectbox("at", "Read at", steps, steps[-1])
step = steps.index(at)
st.plotly_chart(figures.similarity_heatmap(table[step], words, f"{metric} · {at}", metric),
                key="similarity")

pairs = embeddings.pair_names(words)
if len(pairs) > 15:
    pairs = [(0, j) for j in range(1, len(words))]
    st.caption(f"Lines: pairs with {state.md(repr(words[0]))} only, to keep the chart "
               "readable.")
st.plotly_chart(figures.layer_lines(np.stack([table[:, i, j] for i, j in pairs]),
                                    [f"{words[i]} · {words[j]}" for i, j in pairs], steps,
                                    f"{metric} across layers", metric, marked=step),
                key="lines")

left, right = st.columns(2)
with left:
    projection = embeddings.pca_2d(stacked[:, step])
    st.plotly_chart(figures.pca_scatter(projection.coords, words, projection.explained,
                                        f"PCA of the words · {at}"), key="pca")
with right:
    st.markdown("**Nearest tokens in the embedding matrix**")
    word = state.selectbox("near", "Word", words, words[0])
    own = concepts.word_tokens(model, word).ids
    near = concepts.vocab_neighbours(model, stacked[words.index(word), 0], k=10,
                                     exclude=own)
    st.dataframe({"token": [state.visible(n.label) for n in near],
                  "id": [n.token_id for n in near],
                  "cosine (centred)": [round(n.score, 4) for n in near]},
                 hide_index=True, key="neighbours")
    st.caption("Cosine after subtracting the mean embedding row, which every row shares; "
               "the word's own tokens are left out. For baselines that say whether a "
               "similarity is high, see the Concepts page.")
