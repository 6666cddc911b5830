"""Neuron search: the contexts that most activate one MLP neuron in a corpus export.

An export that keeps ``blocks.L.mlp.hook_post`` also writes a Parquet index of every
neuron's largest activations (layer, neuron, doc, position, value); see
:mod:`spyglass.hooks.store`. Queries go through DuckDB, which reads only the row groups
needed, and the context around each hit is read back from the shards' token ids with the
tokenizer saved in the export folder, so the original corpus file is not needed.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from spyglass.hooks.store import Export, ExportError, ExportIntegrityError
from spyglass.model.paths import file_sha256
from spyglass.model.tokens import label_for, piece_bytes

log = logging.getLogger(__name__)


def index_files(export: Export) -> list[Path]:
    """The Parquet files holding the neuron index: the merged one, or per-shard parts."""
    index = export.manifest.get("neuron_index")
    if index is None:
        raise ValueError(
            f"{export.folder} has no neuron index: it was exported without any "
            "blocks.L.mlp.hook_post hook. Export with --hooks 'blocks.*.mlp.hook_post'."
        )
    if index.get("file"):
        path = export.folder / index["file"]
        if file_sha256(path) != index["sha256"]:
            raise ExportIntegrityError(
                f"{path} differs from the checksum in the manifest; it was changed or damaged."
            )
        return [path]
    # An unfinished export: the parts of its complete shards answer for what is done.
    return [export.folder / s["neuron_file"] for s in export.manifest["shards"]]


@lru_cache(maxsize=8)
def _tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def _query(files: list[Path], layer: int, neuron: int, top: int) -> list[tuple]:
    import duckdb

    con = duckdb.connect()
    try:
        return con.sql(
            "SELECT doc, position, value FROM read_parquet(?) "
            "WHERE layer = ? AND neuron = ? ORDER BY value DESC, doc, position LIMIT ?",
            params=[[str(f) for f in files], layer, neuron, top],
        ).fetchall()
    finally:
        con.close()


def _check(export: Export, layer: int, neuron: int, top: int) -> None:
    index = export.manifest.get("neuron_index") or {}
    layers = index.get("layers", [])
    if layer not in layers:
        raise ValueError(
            f"Layer {layer} is not in the neuron index of {export.folder}; indexed layers: "
            f"{layers}."
        )
    d_mlp = int(export.manifest["provenance"]["d_mlp"])
    if not 0 <= neuron < d_mlp:
        raise ValueError(f"Neuron {neuron} does not exist: layers have {d_mlp} neurons, "
                         f"0 to {d_mlp - 1}.")
    if not 1 <= top <= index["top_k"]:
        raise ValueError(
            f"top must be 1 to {index['top_k']}: the index keeps the {index['top_k']} largest "
            "activations per neuron (export with a larger --neuron-top-k for more)."
        )


def top_contexts(folder: str | os.PathLike[str], layer: int, neuron: int, top: int = 20,
                 *, left: int = 12, right: int = 6) -> list[dict[str, Any]]:
    """The ``top`` largest activations of neuron ``neuron`` at MLP layer ``layer``.

    Each row is a dict: ``doc`` (document id), ``name`` (the document's name, if the corpus
    gave one), ``position`` (token index in the document, BOS included), ``value``, ``token``
    (the token's label) and ``left`` / ``right`` (up to ``left`` / ``right`` tokens of
    context, as text). Rows are ordered by value, largest first. Labels are plain text;
    escape them before they reach HTML.
    """
    # Shards are not hashed here: only token ids of a few documents are read, for display,
    # and hashing every shard a hit lands in would make each query read the whole export.
    export = Export(folder, verify=False)
    files = index_files(export)
    _check(export, layer, neuron, top)
    hits = _query(files, layer, neuron, top)
    tokenizer = _tokenizer(str(export.folder / "tokenizer"))

    rows = []
    for doc, position, value in hits:
        ids = export.tokens(doc)
        if not 0 <= position < len(ids):
            raise ExportError(f"The neuron index points at token {position} of document {doc}, "
                              f"which has {len(ids)} tokens; the export is inconsistent.")
        lo, hi = max(0, position - left), min(len(ids), position + right + 1)
        pieces, _ = piece_bytes(tokenizer, [int(i) for i in ids[lo:hi]])
        at = position - lo
        rows.append({
            "doc": int(doc),
            "name": export.doc_name(doc),
            "position": int(position),
            "value": float(value),
            "token": label_for(pieces[at]),
            "left": label_for(b"".join(pieces[:at])),
            "right": label_for(b"".join(pieces[at + 1:])),
        })
    return rows
