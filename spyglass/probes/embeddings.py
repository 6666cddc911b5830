"""Small helpers for comparing a handful of word vectors: pairwise tables, PCA, text lookup.

They complement :mod:`spyglass.probes.concepts` (which finds and pools the vectors) with
what the Embeddings page draws: all pairwise similarities at once, a 2-D projection, and a
word's vectors read from a trace already captured, without running the model again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spyglass.hooks.trace import Trace
from spyglass.probes.concepts import POOLS, Occurrence, find_occurrences, similarity

log = logging.getLogger(__name__)


def pairwise(vectors: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """All pairwise similarities of ``[..., word, d_model]`` vectors: ``[..., word, word]``.

    ``metric`` is ``cosine`` (similarity) or ``euclidean`` (distance), as in
    :func:`spyglass.probes.concepts.similarity`.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    return similarity(vectors[..., :, None, :], vectors[..., None, :, :], metric=metric)


@dataclass
class Projection:
    """Vectors projected on their first two principal components.

    ``coords`` is ``[word, 2]``; ``explained`` the share of variance each axis keeps.
    """

    coords: np.ndarray
    explained: np.ndarray


def pca_2d(vectors: np.ndarray) -> Projection:
    """Project ``[word, d_model]`` on the two directions along which the words differ most."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"PCA needs at least 2 vectors as [word, d_model], got {vectors.shape}.")
    centred = vectors - vectors.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coords = np.zeros((len(vectors), 2))
    n = min(2, len(s))
    coords[:, :n] = u[:, :n] * s[:n]  # (word, 2)
    total = float((s**2).sum())
    explained = np.zeros(2)
    if total > 0:
        explained[:n] = s[:n] ** 2 / total
    return Projection(coords=coords, explained=explained)


@dataclass
class TextVectors:
    """A word's residual stream read from a captured trace.

    ``vectors`` is ``[layer, d_model]`` (the pooled ``resid_post`` after each block,
    averaged over ``occurrences``); ``layers[i]`` is the block of row i.
    """

    word: str
    pool: str
    layers: tuple[int, ...]
    vectors: np.ndarray
    occurrences: tuple[Occurrence, ...]


def text_vectors(trace: Trace, word: str, pool: str = "mean") -> TextVectors | None:
    """The word's pooled ``resid_post`` at every captured layer, or None if it is absent.

    Occurrences are whole-word and case-sensitive (see ``concepts.find_occurrences``); the
    vectors of several occurrences are averaged after pooling each one's tokens.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}.")
    found = find_occurrences(trace.tokens, word.strip())
    if not found:
        return None
    layers = tuple(trace.layers_of("resid_post"))
    if not layers:
        raise ValueError("The trace holds no resid_post arrays; capture them to compare words.")
    stacked = np.stack([trace[f"blocks.{x}.hook_resid_post"] for x in layers], axis=1)
    per_occurrence = [pool_rows(stacked[list(o.positions)], pool) for o in found]
    return TextVectors(word=word.strip(), pool=pool, layers=layers,
                       vectors=np.mean(per_occurrence, axis=0).astype(np.float32),
                       occurrences=tuple(found))


def pool_rows(rows: np.ndarray, pool: str) -> np.ndarray:
    """Pool ``[token, ...]`` into ``[...]``: mean, last or first token."""
    if pool == "mean":
        return rows.mean(axis=0)
    return rows[-1] if pool == "last" else rows[0]


def pair_names(words: Sequence[str]) -> list[tuple[int, int]]:
    """Index pairs (i, j), i < j, in reading order."""
    return [(i, j) for i in range(len(words)) for j in range(i + 1, len(words))]
