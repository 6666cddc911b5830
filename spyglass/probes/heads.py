"""Scores for every attention head, each an array ``[layer, head]``.

Read from a trace's attention patterns (``blocks.L.attn.hook_pattern``, ``[head, q, k]``):

- :func:`entropy`: how spread a head's attention is (nats; 0 = one key only);
- :func:`first_position_weight`: attention to position 0, the "sink" many heads park on;
- :func:`previous_token_score`: attention to the key just before the query.

Run on the model: :func:`induction_score` feeds a random token sequence twice and measures
attention from each token of the second copy to the token after its first occurrence, the
signature of induction heads (Olsson et al., 2022).

Every score averages over query positions 1 onwards: position 0 can attend only to itself,
so it carries no information about a head and would pull every score towards its trivial
value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from spyglass.hooks.trace import Trace
from spyglass.model.loader import Model

log = logging.getLogger(__name__)


def patterns(trace: Trace) -> tuple[tuple[int, ...], np.ndarray]:
    """The layers a trace holds patterns for, and the patterns stacked ``[layer, head, q, k]``."""
    layers = sorted(
        int(name.split(".")[1]) for name in trace.arrays if name.endswith(".attn.hook_pattern")
    )
    if not layers:
        raise ValueError(
            "The trace holds no attention patterns; capture with "
            "CaptureSpec(kinds=('pattern', ...)) to score heads."
        )
    stacked = np.stack([trace[f"blocks.{x}.attn.hook_pattern"] for x in layers])
    return tuple(layers), stacked.astype(np.float32, copy=False)


def _queries_from_one(stacked: np.ndarray) -> np.ndarray:
    if stacked.shape[-2] < 2:
        raise ValueError(
            "Head scores need at least 2 positions: the first query can only attend to itself."
        )
    return stacked[..., 1:, :]  # (layer, head, q - 1, k)


def entropy(trace: Trace) -> np.ndarray:
    """Mean attention entropy per head in nats, ``[layer, head]``; low = focused."""
    _, stacked = patterns(trace)
    rows = _queries_from_one(stacked)
    ent = -(rows * np.log(np.clip(rows, 1e-30, None))).sum(axis=-1)  # (layer, head, q - 1)
    return ent.mean(axis=-1)


def first_position_weight(trace: Trace) -> np.ndarray:
    """Mean attention paid to position 0 (BOS or first token), ``[layer, head]``, in [0, 1]."""
    _, stacked = patterns(trace)
    return _queries_from_one(stacked)[..., 0].mean(axis=-1)


def previous_token_score(trace: Trace) -> np.ndarray:
    """Mean attention from each query to the key just before it, ``[layer, head]``, in [0, 1]."""
    _, stacked = patterns(trace)
    rows = _queries_from_one(stacked)  # query i of rows is position i + 1
    q = np.arange(rows.shape[-2])
    return rows[..., q, q].mean(axis=-1)


@dataclass
class InductionResult:
    """Induction scores ``[layer, head]`` (in [0, 1]) and the token ids that produced them.

    ``ids`` is ``[seq, pos]``: an optional BOS, then ``half`` random tokens, then the same
    ``half`` tokens again.
    """

    scores: np.ndarray
    ids: np.ndarray
    half: int
    bos: bool


def _random_ids(model: Model, n_seqs: int, half: int, seed: int) -> np.ndarray:
    # Draw from ordinary tokens only: special tokens would change what the heads do.
    special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    pool = np.array([i for i in range(model.d_vocab) if i not in special])
    rng = np.random.default_rng(seed)
    return rng.choice(pool, size=(n_seqs, half), replace=True)


def induction_score(model: Model, half: int | None = None, n_seqs: int = 4, seed: int = 0,
                    prepend_bos: bool | None = None) -> InductionResult:
    """Attention from each token of a repeated random sequence to its induction target.

    For a query at position ``q`` in the second copy, the induction target is the key right
    after the same token's first occurrence, ``q - half + 1``. The score averages that
    weight over the second copy's queries and over ``n_seqs`` sequences. A perfect induction
    head scores 1; a uniform head about ``1 / q``. ``half`` defaults to 50 tokens, or as
    many as fit the context.
    """
    import torch

    from spyglass.hooks.capture import forward, stop_point

    bos = model.default_bos if prepend_bos is None else bool(prepend_bos)
    if half is None:
        half = min(50, (model.n_ctx - int(bos)) // 2)
    if half < 2 or n_seqs < 1:
        raise ValueError(f"Need half >= 2 and n_seqs >= 1, got half={half}, n_seqs={n_seqs}.")
    if bos and model.tokenizer.bos_token_id is None:
        raise ValueError(f"{model.name} has no BOS token; pass prepend_bos=False.")
    n_pos = 2 * half + int(bos)
    if n_pos > model.n_ctx:
        raise ValueError(
            f"A repeated sequence of 2 x {half} tokens does not fit {model.name}'s context of "
            f"{model.n_ctx}; use half <= {(model.n_ctx - int(bos)) // 2}."
        )

    first = _random_ids(model, n_seqs, half, seed)
    ids = np.concatenate([first, first], axis=1)  # (seq, 2 * half)
    if bos:
        ids = np.concatenate([np.full((n_seqs, 1), model.tokenizer.bos_token_id), ids], axis=1)
    names = [f"blocks.{x}.attn.hook_pattern" for x in range(model.n_layers)]
    _, kept = forward(model, torch.as_tensor(ids, dtype=torch.long), names,
                      stop_at=stop_point(model, names))  # no unembedding needed

    offset = int(bos)
    q = np.arange(offset + half, n_pos)  # queries in the second copy
    scores = np.zeros((model.n_layers, model.n_heads), dtype=np.float32)
    for layer, name in enumerate(names):
        pattern = kept[name].float().numpy()  # (seq, head, q, k)
        scores[layer] = pattern[:, :, q, q - half + 1].mean(axis=(0, 2))
    return InductionResult(scores=scores, ids=ids, half=half, bos=bos)
