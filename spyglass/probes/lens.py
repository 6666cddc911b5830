"""The logit lens: read every layer's residual stream as if it were the last.

At each layer the residual stream is passed through the model's own final norm and
unembedding (``bridge.ln_final`` then ``bridge.unembed``), giving a distribution over the
vocabulary. Where that distribution already agrees with the final one shows how early the
model "knows" its answer (nostalgebraist, 2020). Applied to the last layer's ``resid_post``
this reproduces the model's logits exactly, which the tests check.

Only the top-k of each distribution is kept: a full ``[layer, pos, d_vocab]`` array for a
30-layer model and a few hundred positions would take gigabytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from spyglass.hooks.trace import Trace
from spyglass.model.loader import Model
from spyglass.model.tokens import label_for, piece_bytes

log = logging.getLogger(__name__)

STREAMS = ("resid_pre", "resid_mid", "resid_post")
# Positions unembedded at once: bounds the temporary [pos, d_vocab] array (~50 MB here).
_CHUNK = 256


def token_labels(model: Model, ids: np.ndarray | list[int]) -> np.ndarray:
    """Byte-faithful labels for token ids, same shape as ``ids`` (split UTF-8 shown as hex)."""
    ids = np.asarray(ids, dtype=np.int64)
    unique = np.unique(ids)
    pieces, _ = piece_bytes(model.tokenizer, [int(i) for i in unique])
    lookup = dict(zip(unique.tolist(), (label_for(p) for p in pieces), strict=True))
    out = np.array([lookup[int(i)] for i in ids.ravel()], dtype=object)
    return out.reshape(ids.shape)


def lens_logits(model: Model, resid: np.ndarray) -> np.ndarray:
    """Logits the model would output if ``resid`` ([..., d_model]) were its last residual.

    Runs ``bridge.ln_final`` then ``bridge.unembed`` under the model's lock; returns float32
    ``[..., d_vocab]``.
    """
    import torch

    resid = np.asarray(resid)
    if resid.shape[-1] != model.d_model:
        raise ValueError(
            f"Residual vectors have width {resid.shape[-1]} but {model.name} has d_model "
            f"{model.d_model}; pass arrays captured from this model."
        )
    bridge = model.bridge
    dtype = next(bridge.parameters()).dtype
    flat = torch.as_tensor(resid.reshape(1, -1, model.d_model), dtype=dtype)  # (1, n, d_model)
    with model.lock, torch.inference_mode():
        logits = bridge.unembed(bridge.ln_final(flat))
    return logits.float().numpy().reshape(*resid.shape[:-1], -1)


@dataclass
class LensResult:
    """Top-k readings of each layer's residual stream.

    ``layers[i]`` is the block whose ``stream`` row i reads. Arrays are indexed
    ``[layer, pos, k]`` (``top_ids``, ``top_probs``, ``top_labels``) or ``[layer, pos]``
    (``entropy`` in nats; ``final_token_prob``: the probability each layer gives to the token
    the last layer ranks first at that position).
    """

    layers: tuple[int, ...]
    stream: str
    positions: tuple[str, ...]
    top_ids: np.ndarray
    top_probs: np.ndarray
    top_labels: np.ndarray
    entropy: np.ndarray
    final_token_prob: np.ndarray


def _stream_layers(trace: Trace, stream: str, layers: list[int] | None) -> list[int]:
    present = sorted(
        int(name.split(".")[1]) for name in trace.arrays
        if name.startswith("blocks.") and name.endswith(f".hook_{stream}")
    )
    if not present:
        raise ValueError(
            f"The trace holds no {stream} arrays; capture with "
            f"CaptureSpec(kinds=('{stream}', ...)) to use the logit lens."
        )
    if layers is None:
        return present
    missing = [x for x in layers if x not in present]
    if missing:
        raise ValueError(f"Layers {missing} have no {stream} in this trace; it has {present}.")
    return list(layers)


def _softmax_stats(logits: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Top-k ids and probabilities, entropy and the full probabilities, for [pos, d_vocab]."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=-1, keepdims=True)
    top = np.argpartition(-probs, k - 1, axis=-1)[:, :k]
    order = np.argsort(-np.take_along_axis(probs, top, axis=-1), axis=-1, kind="stable")
    top = np.take_along_axis(top, order, axis=-1)  # (pos, k), most probable first
    entropy = -(probs * np.log(np.clip(probs, 1e-30, None))).sum(axis=-1)
    return top, np.take_along_axis(probs, top, axis=-1), entropy, probs


def logit_lens(model: Model, trace: Trace, k: int = 5, layers: list[int] | None = None,
               stream: str = "resid_post") -> LensResult:
    """Apply the logit lens to every captured layer of ``trace``.

    ``stream`` picks ``resid_post`` (default), ``resid_mid`` or ``resid_pre``; ``layers``
    defaults to every layer the trace holds. The last layer's ``resid_post`` is what the model
    unembeds, so its reading equals the trace's logits. ``final_token_prob`` compares with the
    last layer *in this lens*, so ask for the last layer to make it the model's own answer.
    """
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}.")
    if not 1 <= k <= model.d_vocab:
        raise ValueError(f"k must be between 1 and d_vocab ({model.d_vocab}), got {k}.")
    chosen = _stream_layers(trace, stream, layers)
    n_pos = len(trace.tokens)

    top_ids = np.zeros((len(chosen), n_pos, k), dtype=np.int64)
    top_probs = np.zeros((len(chosen), n_pos, k), dtype=np.float32)
    entropy = np.zeros((len(chosen), n_pos), dtype=np.float32)
    final_prob = np.zeros((len(chosen), n_pos), dtype=np.float32)
    # Read the last layer first: its top-1 token is what every layer is compared with.
    for i in reversed(range(len(chosen))):
        resid = trace[f"blocks.{chosen[i]}.hook_{stream}"]
        for start in range(0, n_pos, _CHUNK):
            rows = slice(start, start + _CHUNK)
            ids, probs, ent, full = _softmax_stats(lens_logits(model, resid[rows]), k)
            top_ids[i, rows], top_probs[i, rows], entropy[i, rows] = ids, probs, ent
            final = top_ids[-1, rows, 0]
            final_prob[i, rows] = full[np.arange(len(final)), final]

    return LensResult(
        layers=tuple(chosen), stream=stream, positions=tuple(trace.tokens.labels),
        top_ids=top_ids, top_probs=top_probs, top_labels=token_labels(model, top_ids),
        entropy=entropy, final_token_prob=final_prob,
    )
