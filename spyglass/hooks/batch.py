"""Batched capture: many documents per forward pass, each seeing only itself.

Documents are cut into *segments* of at most ``context_length`` tokens (a long document
splits at every multiple of the context length, so a token's context never depends on its
neighbours in the corpus). Segments are laid into *rows*:

- ``truncate``: one document per row, cut to the context length;
- ``pack``: segments placed one after another, in corpus order, into rows of the context
  length; a segment that does not fit in what is left of a row starts the next row.

A batch of rows is right-padded. When every row holds one segment, an ordinary 2-D mask is
enough (a causal model's real tokens never look right, at the padding). A packed row holds
several segments, so it gets a 4-D block-diagonal causal mask and position ids restarting
at 0 for every segment: each segment is computed exactly as if it were alone. The padding
positions attend to themselves only, so no softmax row is empty.

The captured tokens of a batch come back flat, in row order, which is corpus order.
:func:`compute_shard` runs every row of one shard of an export this way, gathering the
activations in the stored dtype and each MLP neuron's largest activations; writing the
files is :mod:`spyglass.hooks.store`'s job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spyglass.hooks.capture import forward, stop_point
from spyglass.hooks.corpus import DocTokens
from spyglass.model.loader import Model

LAYOUTS = ("pack", "truncate")
# Bytes per stored value; bfloat16 is kept as its raw 16 bits.
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Segment:
    """Tokens ``start:start+len(ids)`` of document ``doc``, computed as one text."""

    doc: int
    start: int
    ids: np.ndarray  # (pos,) int32

    def __len__(self) -> int:
        return int(self.ids.shape[0])


Row = list[Segment]


def segments_of(doc: int, ids: np.ndarray, context_length: int) -> list[Segment]:
    """Cut one document at every multiple of the context length."""
    return [
        Segment(doc, start, ids[start:start + context_length])
        for start in range(0, len(ids), context_length)
    ]


def pack_rows(docs: Sequence[tuple[int, np.ndarray]], context_length: int,
              layout: str) -> list[Row]:
    """Lay documents ``(doc_id, ids)`` into rows, in order; see the module docstring."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    if context_length < 1:
        raise ValueError(f"context_length must be at least 1, got {context_length}.")
    rows: list[Row] = []
    if layout == "truncate":
        for doc, ids in docs:
            if len(ids) > context_length:
                raise ValueError(
                    f"Document {doc} has {len(ids)} tokens, over the context length "
                    f"{context_length}; truncate it before laying rows."
                )
            rows.append([Segment(doc, 0, ids)])
        return rows

    row: Row = []
    used = 0
    for doc, ids in docs:
        for seg in segments_of(doc, ids, context_length):
            if row and used + len(seg) > context_length:
                rows.append(row)
                row, used = [], 0
            row.append(seg)
            used += len(seg)
    if row:
        rows.append(row)
    return rows


def row_tokens(rows: Sequence[Row]) -> int:
    return sum(len(s) for row in rows for s in row)


def batch_inputs(rows: Sequence[Row], pad_id: int = 0) -> dict[str, Any]:
    """Token ids, attention mask and (for packed rows) position ids of one batch."""
    import torch

    width = max(sum(len(s) for s in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    fill = [sum(len(s) for s in row) for row in rows]
    packed = any(len(row) > 1 for row in rows)

    if not packed:
        for b, row in enumerate(rows):
            ids[b, :fill[b]] = torch.from_numpy(row[0].ids.astype(np.int64))
        if all(f == width for f in fill):
            return {"ids": ids}
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, f in enumerate(fill):
            mask[b, :f] = 1
        return {"ids": ids, "attention_mask": mask}

    # Segment number of every position (-1 for padding), then the block-diagonal mask.
    seg_of = torch.full((len(rows), width), -1, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        col = 0
        for k, seg in enumerate(row):
            n = len(seg)
            ids[b, col:col + n] = torch.from_numpy(seg.ids.astype(np.int64))
            seg_of[b, col:col + n] = k
            positions[b, col:col + n] = torch.arange(n)
            col += n
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    same = seg_of[:, :, None] == seg_of[:, None, :]  # (batch, q_pos, k_pos)
    real = (seg_of >= 0)[:, :, None]
    mask = (same & real & causal) | torch.eye(width, dtype=torch.bool)
    return {"ids": ids, "attention_mask": mask[:, None], "position_ids": positions}


def run_batch(model: Model, rows: Sequence[Row], names: Sequence[str]) -> dict[str, Any]:
    """Run one batch; return ``{name: tensor (tokens, ...)}`` over its real tokens in order.

    The forward stops once every name has fired (see :func:`stop_point`).
    """
    import torch

    inputs = batch_inputs(rows)
    ids = inputs.pop("ids")
    hooked = [n for n in names if n != "logits"]
    logits, kept = forward(model, ids, hooked, stop_at=stop_point(model, names), **inputs)
    if "logits" in names:
        kept["logits"] = logits

    # Real tokens of row b are its first fill[b] positions.
    batch, width = ids.shape
    fill = [sum(len(s) for s in row) for row in rows]
    flat = {n: kept[n].reshape(batch * width, *kept[n].shape[2:]) for n in names}
    if all(f == width for f in fill):
        return flat
    where = torch.cat([torch.arange(f) + b * width for b, f in enumerate(fill)])
    return {n: t.index_select(0, where) for n, t in flat.items()}  # (tokens, ...)


def batches(rows: Sequence[Row], batch_size: int) -> Iterator[list[Row]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    for i in range(0, len(rows), batch_size):
        yield list(rows[i:i + batch_size])


def token_shape(model: Model, name: str) -> tuple[int, ...]:
    """Shape of one token's slice of hook ``name``; refuses hooks without a leading pos axis."""
    from spyglass.hooks.spec import KINDS, kind_of, shape_of

    dims = KINDS[kind_of(name)][1]
    if dims[0] != "pos":
        raise ValueError(
            f"{name} is indexed by ({', '.join(dims)}), not by token first, so it does not "
            "fit a per-token export. Capture attention patterns of single texts with "
            "spyglass.hooks.capture instead."
        )
    return shape_of(model, name, 1)[1:]


# --- a shard's worth of work ------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs, besides the model, to compute and write a shard."""

    names: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    context_length: int
    layout: str
    prepend_bos: bool
    dtype: str
    batch_size: int
    neuron_layers: tuple[int, ...]
    neuron_top_k: int
    model_name: str

    @property
    def bytes_per_token(self) -> int:
        size = ITEMSIZE[self.dtype]
        return 4 + sum(int(np.prod(s)) * size for s in self.shapes.values())


@dataclass(frozen=True)
class ShardPlan:
    """Which whole documents, in corpus order, make shard ``index``."""

    index: int
    docs: tuple[DocTokens, ...]

    @property
    def n_tokens(self) -> int:
        return sum(len(d) for d in self.docs)

    @property
    def offsets(self) -> list[int]:
        return [0, *np.cumsum([len(d) for d in self.docs]).tolist()]


class NeuronTopK:
    """The ``k`` largest activations of every MLP neuron seen so far, with where they were."""

    def __init__(self, layers: tuple[int, ...], k: int) -> None:
        self.k = k
        self.best: dict[int, tuple[Any, Any, Any]] = {}
        self.layers = layers

    def update(self, layer: int, acts: Any, doc: Any, pos: Any) -> None:
        """``acts`` (tokens, d_mlp); ``doc`` and ``pos`` (tokens,) say where each token is."""
        import torch

        acts = acts.float()
        k = min(self.k, acts.shape[0])
        values, idx = acts.topk(k, dim=0)  # (k, d_mlp)
        docs, positions = doc[idx], pos[idx]
        if layer in self.best:
            old_v, old_d, old_p = self.best[layer]
            values = torch.cat([old_v, values])
            docs, positions = torch.cat([old_d, docs]), torch.cat([old_p, positions])
            values, keep = values.topk(min(self.k, values.shape[0]), dim=0)
            docs, positions = docs.gather(0, keep), positions.gather(0, keep)
        self.best[layer] = (values, docs, positions)

    def table(self) -> Any:
        """A pyarrow table: layer, neuron, doc, position, value (best first per neuron)."""
        import pyarrow as pa

        cols: dict[str, list[np.ndarray]] = {c: [] for c in
                                             ("layer", "neuron", "doc", "position", "value")}
        for layer, (values, docs, positions) in sorted(self.best.items()):
            k, d_mlp = values.shape
            cols["layer"].append(np.full(k * d_mlp, layer, dtype=np.int16))
            cols["neuron"].append(np.tile(np.arange(d_mlp, dtype=np.int32), k))
            cols["doc"].append(docs.numpy().reshape(-1).astype(np.int64))
            cols["position"].append(positions.numpy().reshape(-1).astype(np.int32))
            cols["value"].append(values.numpy().reshape(-1).astype(np.float32))
        return pa.table({c: np.concatenate(v) for c, v in cols.items()})


@dataclass
class ShardData:
    """A computed shard, ready to write."""

    plan: ShardPlan
    rows: int
    ids: np.ndarray  # (tokens,) int32
    arrays: dict[str, Any]  # name -> torch tensor (tokens, ...) in the stored dtype
    neurons: Any = None  # pyarrow table or None


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _store(buffer: Any, at: int, acts: Any, name: str) -> None:
    """Copy a batch into the shard buffer, refusing float16 overflow rather than storing inf."""
    import torch

    part = buffer[at:at + acts.shape[0]]
    part.copy_(acts)
    if buffer.dtype == torch.float16:
        lost = torch.isinf(part) & torch.isfinite(acts)
        if bool(lost.any()):
            raise ValueError(
                f"{name} has values up to {acts.abs().max().item():,.1f}, beyond float16's "
                "65,504; storing them would turn them into inf. Export with dtype "
                "bfloat16 or float32."
            )


def compute_shard(model: Model, spec: JobSpec, shard: ShardPlan,
                  on_tokens: Callable[[int], None] | None = None) -> ShardData:
    """Run every row of one shard and gather its activations in corpus order."""
    import torch

    docs = shard.docs
    n = shard.n_tokens
    rows = pack_rows([(d.id, d.ids) for d in docs], spec.context_length, spec.layout)
    store = _torch_dtype(spec.dtype)
    arrays = {name: torch.empty((n, *spec.shapes[name]), dtype=store) for name in spec.names}
    # Document and in-document position of every token, for the neuron index.
    doc_of = torch.from_numpy(np.repeat([d.id for d in docs], [len(d) for d in docs]))
    pos_of = torch.from_numpy(np.concatenate([np.arange(len(d)) for d in docs]))
    tracker = NeuronTopK(spec.neuron_layers, spec.neuron_top_k) if spec.neuron_layers else None

    at = 0
    for batch in batches(rows, spec.batch_size):
        acts = run_batch(model, batch, spec.names)
        m = int(next(iter(acts.values())).shape[0])
        for name, tensor in acts.items():
            _store(arrays[name], at, tensor, name)
        if tracker is not None:
            for layer in spec.neuron_layers:
                tracker.update(layer, acts[f"blocks.{layer}.mlp.hook_post"],
                               doc_of[at:at + m], pos_of[at:at + m])
        at += m
        if on_tokens is not None:
            on_tokens(m)
    if at != n:
        raise RuntimeError(f"Shard {shard.index}: computed {at} tokens, planned {n}.")
    ids = np.concatenate([d.ids for d in docs]).astype(np.int32)
    return ShardData(shard, len(rows), ids, arrays,
                     tracker.table() if tracker is not None else None)
