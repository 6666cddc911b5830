"""Export: download the current trace, or part of it, with its provenance."""

from __future__ import annotations

import json

import streamlit as st

from spyglass.app import state
from spyglass.hooks.spec import kind_of, layer_of

# Files up to this size are built when the page draws, so their exact size is shown;
# larger ones are built when the button is pressed and their size is estimated.
EAGER_BYTES = 256 * state.MiB

st.set_page_config(page_title="Spyglass · Export", layout="wide")
ctx = state.sidebar()
trace = ctx.trace.trace

st.title("Export the trace")
st.caption("A safetensors file (or .npz) whose metadata holds the provenance and the token "
           "record; load it with spyglass.hooks.Trace.load, which never unpickles.")
kinds = list(dict.fromkeys(kind_of(n) for n in trace.names))
layers = [str(la) for la in range(ctx.model.n_layers)]
chosen_kinds = state.multiselect("kinds", "Activations", kinds, ["resid_post", "pattern"])
chosen_layers = state.multiselect("layers", "Layers", layers, layers)
fmt = state.radio("fmt", "Format", ("safetensors", "npz"), "safetensors", horizontal=True)

names = [
    n for n in trace.names
    if kind_of(n) in chosen_kinds and (layer_of(n) is None or str(layer_of(n)) in chosen_layers)
]
if not names:
    st.warning("Nothing selected: choose at least one activation (and a layer for per-layer "
               "ones).")
    st.stop()

subset = trace.subset(names)
approx = subset.nbytes + len(json.dumps(subset.provenance)) + len(trace.tokens.to_json())
if approx <= EAGER_BYTES:
    data = ctx.trace.latest("export", (fmt, tuple(names)), lambda: subset.to_bytes(fmt))
    size = f"{len(data):,} bytes ({len(data) / state.MiB:,.2f} MiB)"
else:
    data = lambda: subset.to_bytes(fmt)  # noqa: E731 - built only when pressed
    size = f"about {approx / state.MiB:,.0f} MiB (built when you press the button)"

st.metric("File size", size)
st.caption(f"{len(names)} arrays, {len(trace.tokens)} tokens.")
st.download_button("Download trace", data=data, file_name=f"spyglass-trace.{fmt}",
                   mime="application/octet-stream", key="download")
with st.expander("Arrays"):
    st.dataframe({"name": names, "shape": [str(list(trace[n].shape)) for n in names],
                  "dtype": [str(trace[n].dtype) for n in names]}, hide_index=True)
with st.expander("Provenance"):
    st.json(subset.provenance)
