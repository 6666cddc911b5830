"""The record of one forward pass, and how it is saved and loaded.

A saved trace is a safetensors file (or ``.npz``) whose metadata holds the provenance and
the token record as JSON. Loading never unpickles: safetensors cannot hold code, and
``.npz`` files are opened with ``allow_pickle=False``. A file whose metadata is missing or
disagrees with its arrays is refused with a message saying what is wrong.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spyglass.hooks.spec import kind_of, layer_of
from spyglass.model.paths import replacing
from spyglass.model.tokens import Tokens

log = logging.getLogger(__name__)

FORMAT = "spyglass-trace/1"
META_PROVENANCE = "spyglass.provenance"
META_TOKENS = "spyglass.tokens"
META_FORMAT = "spyglass.format"
NPZ_META = "__spyglass_meta__"
# File suffixes per format. Nothing else is written: a ".pt" or ".pkl" name would suggest a
# pickle, which Spyglass never writes nor reads.
SUFFIXES = {"safetensors": (".safetensors", ".st"), "npz": (".npz",)}


def format_for_path(path: Path) -> str:
    suffix = path.suffix.lower()
    for fmt, suffixes in SUFFIXES.items():
        if suffix in suffixes:
            return fmt
    raise ValueError(
        f"Cannot tell which format to write {path.name} in: name it .safetensors or .npz "
        "(traces are never pickled, so .pt or .pkl are not offered)."
    )
# Provenance fields a reader may insist on; anything else in ``expect`` is refused.
EXPECTABLE = (
    "model", "n_ctx", "prepend_bos", "dtype", "weight_processing", "hooks", "special_tokens",
)


class TraceFormatError(ValueError):
    """A file is not a valid Spyglass trace."""


class TraceMismatchError(ValueError):
    """A valid trace was made under settings other than the ones the reader expects."""


@dataclass
class Trace:
    """Tokens, provenance and named activation arrays of one forward pass.

    Arrays are numpy, on the CPU, without a batch dimension, named by TransformerLens's
    canonical hook names (``blocks.3.attn.hook_pattern``) plus ``logits``.
    """

    tokens: Tokens
    provenance: dict[str, Any]
    arrays: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise KeyError(
                f"{name!r} was not captured. Captured: {', '.join(self.names[:6])}"
                f"{' ...' if len(self.names) > 6 else ''}. Widen the CaptureSpec to keep it."
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    @property
    def names(self) -> list[str]:
        return list(self.arrays)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.tokens.labels

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))

    @property
    def n_layers(self) -> int:
        return int(self.provenance["n_layers"])

    def layers_of(self, kind: str) -> list[int]:
        """Layers at which activations of ``kind`` (e.g. ``pattern``) were captured."""
        return sorted(
            layer_of(n) for n in self.arrays if layer_of(n) is not None and kind_of(n) == kind
        )

    def subset(self, names: list[str]) -> Trace:
        """A trace holding only ``names``, sharing the arrays (no copy)."""
        missing = [n for n in names if n not in self.arrays]
        if missing:
            raise KeyError(f"Not in this trace: {missing}")
        prov = dict(self.provenance)
        prov["hooks"] = list(names)
        prov["shapes"] = {n: list(self.arrays[n].shape) for n in names}
        return Trace(self.tokens, prov, {n: self.arrays[n] for n in names})

    # --- saving and loading ---------------------------------------------------------------

    def _metadata(self) -> dict[str, str]:
        return {
            META_FORMAT: FORMAT,
            META_PROVENANCE: json.dumps(self.provenance, ensure_ascii=False),
            META_TOKENS: self.tokens.to_json(),
        }

    def save(self, path: str | os.PathLike[str], fmt: str | None = None) -> Path:
        """Write to ``.safetensors`` (default) or ``.npz``, atomically; return the path."""
        path = Path(path)
        fmt = fmt or format_for_path(path)
        if fmt not in SUFFIXES:
            raise ValueError(f"fmt must be 'safetensors' or 'npz', got {fmt!r}.")
        if path.suffix.lower() not in SUFFIXES[fmt]:
            # Trace.load picks the reader by suffix; a mismatch would write an unreadable file.
            raise ValueError(
                f"{path.name} does not end in {' or '.join(SUFFIXES[fmt])}, the suffix of the "
                f"{fmt} format it would be written in. Name it trace.safetensors or trace.npz."
            )
        arrays = {n: np.ascontiguousarray(a) for n, a in self.arrays.items()}
        meta = self._metadata()
        if fmt == "safetensors":
            from safetensors import SafetensorError
            from safetensors.numpy import save_file

            with replacing(path) as tmp:
                try:
                    save_file(arrays, str(tmp), metadata=meta)
                except SafetensorError as exc:
                    # safetensors reports I/O failures (a full disk) as its own error type.
                    raise OSError(f"safetensors could not write {path}: {exc}") from exc
        else:
            if NPZ_META in arrays:
                raise ValueError(f"An array may not be named {NPZ_META!r}.")
            payload = dict(arrays)
            payload[NPZ_META] = np.array(json.dumps(meta, ensure_ascii=False))
            with replacing(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **payload)
        log.info("Saved trace (%d arrays, %.1f MB) to %s", len(arrays), self.nbytes / 1e6, path)
        return path

    def to_bytes(self, fmt: str = "safetensors") -> bytes:
        """The file a :meth:`save` would write, as bytes (for downloads)."""
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / f"trace.{fmt}"
            self.save(target, fmt)
            return target.read_bytes()

    @classmethod
    def load(cls, path: str | os.PathLike[str], expect: dict[str, Any] | None = None) -> Trace:
        """Read a saved trace, refusing files that are not consistent Spyglass traces.

        ``expect`` maps provenance fields (``n_ctx``, ``prepend_bos``, ``model``, ``dtype``,
        ``weight_processing``, ``hooks``) to the values the caller's code assumes; any
        difference raises :class:`TraceMismatchError` naming each field.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No trace file at {path}.")
        if path.suffix.lower() == ".npz":
            arrays, meta = _read_npz(path)
        else:
            arrays, meta = _read_safetensors(path)
        trace = _from_parts(path, arrays, meta)
        if expect:
            trace.check(expect, source=str(path))
        return trace

    def check(self, expect: dict[str, Any], source: str = "trace") -> None:
        unknown = [k for k in expect if k not in EXPECTABLE]
        if unknown:
            raise ValueError(f"Cannot check {unknown}; checkable fields are {list(EXPECTABLE)}.")
        diffs = [
            f"{key}: file has {self.provenance.get(key)!r}, expected {want!r}"
            for key, want in expect.items()
            if self.provenance.get(key) != want
        ]
        if diffs:
            raise TraceMismatchError(
                f"{source} was captured under other settings than expected — "
                + "; ".join(diffs)
                + ". Re-capture with the expected settings or adapt the reading code."
            )


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            meta = fh.metadata() or {}
            arrays = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise TraceFormatError(
            f"{path} is not a readable safetensors file ({exc}). Spyglass traces are saved by "
            "Trace.save as .safetensors or .npz."
        ) from exc
    return arrays, meta


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except ValueError as exc:
        # numpy says "Object arrays cannot be loaded when allow_pickle=False".
        raise TraceFormatError(
            f"{path} holds pickled objects, which Spyglass never loads: {exc}."
        ) from exc
    except (OSError, EOFError) as exc:
        raise TraceFormatError(f"{path} is not a readable .npz file ({exc}).") from exc
    raw = arrays.pop(NPZ_META, None)
    if raw is None:
        return arrays, {}
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"{path}: its Spyglass metadata is not valid JSON ({exc}).") from exc
    return arrays, meta


def _from_parts(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> Trace:
    missing = [k for k in (META_FORMAT, META_PROVENANCE, META_TOKENS) if k not in meta]
    if missing:
        raise TraceFormatError(
            f"{path} lacks Spyglass metadata ({', '.join(missing)}), so its tokens and "
            "provenance are unknown. Only files written by Trace.save can be loaded."
        )
    if meta[META_FORMAT] != FORMAT:
        raise TraceFormatError(
            f"{path} is in format {meta[META_FORMAT]!r}; this Spyglass reads {FORMAT!r}."
        )
    try:
        provenance = json.loads(meta[META_PROVENANCE])
        tokens = Tokens.from_json(meta[META_TOKENS])
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise TraceFormatError(f"{path}: Spyglass metadata is malformed ({exc}).") from exc
    except ValueError as exc:
        raise TraceFormatError(f"{path}: {exc}") from exc

    listed = list(provenance.get("hooks", []))
    if set(listed) != set(arrays):
        absent = sorted(set(listed) - set(arrays))
        extra = sorted(set(arrays) - set(listed))
        raise TraceFormatError(
            f"{path}: provenance lists hooks the file does not hold ({absent}) or the file "
            f"holds arrays the provenance does not list ({extra})."
        )
    shapes = provenance.get("shapes", {})
    for name, arr in arrays.items():
        if name in shapes and list(arr.shape) != list(shapes[name]):
            raise TraceFormatError(
                f"{path}: array {name} has shape {list(arr.shape)} but provenance records "
                f"{shapes[name]}."
            )
    if provenance.get("n_tokens") != len(tokens):
        raise TraceFormatError(
            f"{path}: provenance says {provenance.get('n_tokens')} tokens but the token record "
            f"has {len(tokens)} labels."
        )
    return Trace(tokens=tokens, provenance=provenance, arrays={n: arrays[n] for n in listed})
