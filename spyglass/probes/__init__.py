"""Analyses over traces and over a model's weights.

- :mod:`~spyglass.probes.lens`: the logit lens (each layer's residual stream read through
  the final norm and the unembedding).
- :mod:`~spyglass.probes.heads`: per-head attention scores (entropy, first-position weight,
  previous-token and induction scores).
- :mod:`~spyglass.probes.concepts`: representations of a word (embedding rows, residuals in
  context), pooling, similarity and nearest neighbours.
- :mod:`~spyglass.probes.baselines`: frequency-matched control words, z-scores, ranks and
  permutation tests, so a similarity comes with a baseline.
- :mod:`~spyglass.probes.linear`: logistic-regression probes per layer with held-out accuracy
  and a shuffled-label baseline.

Nothing here imports Streamlit; the pages and the command line call these functions.
"""
