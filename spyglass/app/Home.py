"""Home: how the text was cut into tokens, and what the model predicts at each step."""

from __future__ import annotations

import numpy as np
import streamlit as st

from spyglass.app import figures, state
from spyglass.model import gpt2_bpe
from spyglass.probes.lens import token_labels

st.set_page_config(page_title="Spyglass", layout="wide")
ctx = state.sidebar()
tokens = ctx.trace.trace.tokens

st.title("Spyglass · tokens and predictions")
st.caption("Hover a token for its position and id. ␣ marks a space, ↵ a newline; bytes of a "
           "character split across tokens show as ⟨hex⟩.")

# How the text was cut, by this model and by GPT-2's BPE.
st.subheader("Tokens")
st.html(figures.token_chips(tokens.labels, tokens.ids,
                            f"{ctx.model.name}: {len(tokens)} tokens"))
try:
    gpt2 = gpt2_bpe.tokenize(ctx.text)
except (RuntimeError, OSError) as exc:
    st.warning(f"GPT-2's BPE is unavailable here: {exc}")
else:
    st.html(figures.token_chips(gpt2.labels, gpt2.ids,
                                f"GPT-2 BPE (50,257 tokens): {len(gpt2)} tokens"))
if tokens.special_found:
    st.caption("Special-token strings in the text were kept as plain text: "
               + state.md(", ".join(tokens.special_found)))

# What comes next, and how surprising each actual token was.
nxt = state.next_tokens(ctx.trace, k=10)
top_labels = token_labels(ctx.model, nxt.top_ids[-1])
left, right = st.columns([2, 3])
with left:
    st.plotly_chart(
        figures.top_tokens_bar(list(top_labels), nxt.top_probs[-1], "Next token: top 10"),
        key="top10",
    )
with right:
    st.subheader("Surprisal")
    st.caption("Colour: −log₂ p(token | text before it), in bits. Hover for the value and "
               "what the model expected instead.")
    expected = token_labels(ctx.model, nxt.top_ids[:, 0])
    tips = ["first token: nothing predicts it"] + [
        f"{nxt.surprisal[i]:.2f} bits · model expected {state.visible(expected[i - 1])!r}"
        for i in range(1, ctx.n_pos)
    ]
    finite = nxt.surprisal[np.isfinite(nxt.surprisal)]
    scale = float(max(finite.max(), 1.0)) if finite.size else 1.0
    st.html(figures.coloured_text(tokens.labels, nxt.surprisal, tips, scale))
    if finite.size:
        st.caption(f"Mean {finite.mean():.2f} bits per token; darkest = {scale:.1f} bits.")

st.dataframe(
    {
        "position": list(range(ctx.n_pos)),
        "token": [state.visible(label) for label in tokens.labels],
        "id": list(tokens.ids),
        "surprisal (bits)": [None if np.isnan(s) else round(float(s), 3) for s in nxt.surprisal],
        "top next token": [state.visible(label) for label in expected],
        "p(top)": [round(float(p), 4) for p in nxt.top_probs[:, 0]],
    },
    hide_index=True, key="token_table",
)
