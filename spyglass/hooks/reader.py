"""Reading a corpus export: memory-mapped shards checked against the manifest's checksums."""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from spyglass.hooks.manifest import (
    EXPECTABLE,
    IDS,
    MANIFEST,
    ExportError,
    ExportIntegrityError,
    ExportMismatchError,
    Manifest,
)
from spyglass.model.paths import file_sha256

log = logging.getLogger(__name__)

# numpy has no bfloat16: its bits are read as uint16 and widened on access.
_NP_OF_CODE = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32}


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header and the byte offset where its data starts."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ExportIntegrityError(f"{path} is too short to be a safetensors file.")
        (length,) = struct.unpack("<Q", raw)
        if length > 100 * 2**20:
            raise ExportIntegrityError(f"{path} claims a {length:,}-byte header; damaged.")
        try:
            header = json.loads(fh.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ExportIntegrityError(f"{path} has an unreadable header ({exc}).") from exc
    return header, 8 + length


def bf16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) to float32: the high half of a float32 (a copy)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


class Export:
    """A corpus export opened for reading; shards are memory-mapped on first use.

    Every shard's SHA-256 is checked against the manifest the first time it is opened
    (``verify=False`` skips this). bfloat16 exports are returned as float32 copies, since
    numpy has no bfloat16. ``expect`` is checked like :meth:`check`.

    For a PyTorch ``DataLoader`` over single tokens, index shards through their maps
    (docs/EXPORT.md has a fuller version)::

        export = Export(folder)
        shards = export.manifest["shards"]
        starts = np.cumsum([0] + [s["tokens"] for s in shards])

        class TokenActivations(torch.utils.data.Dataset):
            def __len__(self):
                return int(starts[-1])

            def __getitem__(self, i):
                k = bisect.bisect_right(starts, i) - 1
                row = export.shard_arrays(shards[k]["index"])[hook][i - starts[k]]
                return torch.tensor(np.asarray(row, dtype=np.float32))

        loader = torch.utils.data.DataLoader(TokenActivations(), batch_size=256, shuffle=True)
    """

    def __init__(self, folder: str | os.PathLike[str], *, verify: bool = True,
                 expect: dict[str, Any] | None = None) -> None:
        self.folder = Path(folder).expanduser()
        manifest = Manifest.read(self.folder)
        if manifest is None:
            if not self.folder.exists():
                raise ExportError(f"No export folder at {self.folder}; check the path.")
            if not self.folder.is_dir():
                raise ExportError(f"{self.folder} is a file, not an export folder.")
            raise ExportError(
                f"{self.folder} has no {MANIFEST}, so it is not a Spyglass export (or its "
                "export never wrote a shard). Point at the folder given to --out."
            )
        self.manifest = manifest.data
        self.verify = verify
        self._maps: dict[int, dict[str, np.ndarray]] = {}
        self._where: dict[int, tuple[int, int, int]] = {}
        self._names: dict[int, str | None] = {}
        for shard in self.manifest["shards"]:
            offsets = shard["token_offsets"]
            names = shard.get("names") or [None] * len(shard["documents"])
            for i, doc in enumerate(shard["documents"]):
                self._where[doc] = (shard["index"], offsets[i], offsets[i + 1])
                self._names[doc] = names[i]
        if not self.complete:
            log.warning("%s is an unfinished export: %d of %d shards are complete", self.folder,
                        len(self.manifest["shards"]), self.manifest["planned"]["shards"])
        if expect:
            self.check(expect)

    # settings
    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def context_length(self) -> int:
        return int(self.manifest["context_length"])

    @property
    def prepend_bos(self) -> bool:
        return bool(self.manifest["prepend_bos"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def documents(self) -> list[int]:
        """Ids of every exported document, in corpus order."""
        return [d for s in self.manifest["shards"] for d in s["documents"]]

    @property
    def n_tokens(self) -> int:
        return sum(s["tokens"] for s in self.manifest["shards"])

    def check(self, expect: dict[str, Any]) -> None:
        """Raise :class:`ExportMismatchError` naming every field that differs from ``expect``."""
        unknown = [k for k in expect if k not in EXPECTABLE]
        if unknown:
            raise ValueError(f"Cannot check {unknown}; checkable fields are {list(EXPECTABLE)}.")
        have = {**self.manifest, "weight_processing":
                self.manifest["provenance"]["weight_processing"]}
        diffs = [f"{k}: export has {have.get(k)!r}, expected {v!r}"
                 for k, v in expect.items() if have.get(k) != v]
        if diffs:
            raise ExportMismatchError(
                f"{self.folder} was exported under other settings than expected — "
                + "; ".join(diffs) + ". Re-export with those settings or adapt the reader."
            )

    # shards
    def _shard(self, index: int) -> dict[str, np.ndarray]:
        if index in self._maps:
            return self._maps[index]
        record = next(s for s in self.manifest["shards"] if s["index"] == index)
        path = self.folder / record["file"]
        if not path.is_file():
            raise ExportIntegrityError(f"{path} is listed in the manifest but missing.")
        if self.verify:
            got = file_sha256(path)
            if got != record["sha256"]:
                raise ExportIntegrityError(
                    f"{path.name} has SHA-256 {got[:16]}…, but the manifest recorded "
                    f"{record['sha256'][:16]}… when it was written: the file was changed or "
                    "damaged. Export again into a new folder (or restore the file)."
                )
        header, start = read_header(path)
        arrays = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, _ = info["data_offsets"]
            shape = tuple(info["shape"])
            arrays[name] = np.memmap(path, dtype=_NP_OF_CODE[info["dtype"]], mode="r",
                                     offset=start + begin, shape=shape)
        if set(arrays) != {IDS, *self.hooks} or arrays[IDS].shape[0] != record["tokens"]:
            raise ExportIntegrityError(
                f"{path.name} holds {sorted(arrays)} with {arrays[IDS].shape[0]} tokens; the "
                f"manifest lists {self.hooks} with {record['tokens']} tokens."
            )
        self._maps[index] = arrays
        return arrays

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        return bf16_to_float32(raw) if self.dtype == "bfloat16" else raw

    def verify_all(self) -> int:
        """Check every listed shard's checksum now; return how many were checked."""
        for shard in self.manifest["shards"]:
            self._shard(shard["index"])
        return len(self.manifest["shards"])

    def shard_arrays(self, index: int) -> dict[str, np.ndarray]:
        """Memory-mapped arrays of one shard (bfloat16 left as raw uint16 bits)."""
        return self._shard(index)

    def _locate(self, doc: int) -> tuple[int, int, int]:
        try:
            return self._where[doc]
        except KeyError:
            skipped = self.manifest["documents"]["skipped_empty"]
            why = " (it was empty and skipped)" if doc in skipped else ""
            raise KeyError(f"Document {doc} is not in this export{why}.") from None

    def _hook(self, hook: str) -> str:
        if hook not in self.hooks:
            raise KeyError(f"{hook!r} was not exported; exported hooks: {self.hooks[:6]}")
        return hook

    def doc_name(self, doc: int) -> str | None:
        """The document's name from the corpus's id field, if it had one."""
        self._locate(doc)
        return self._names[doc]

    def truncated_from(self, doc: int) -> int | None:
        """The document's full token count when it was cut to the context length."""
        index, _, _ = self._locate(doc)
        record = next(s for s in self.manifest["shards"] if s["index"] == index)
        return (record.get("truncated") or {}).get(str(doc))

    def tokens(self, doc: int) -> np.ndarray:
        """Token ids of one document (pos,), as the model read them (BOS included)."""
        index, start, end = self._locate(doc)
        return np.asarray(self._shard(index)[IDS][start:end])

    def doc(self, doc: int, hook: str) -> np.ndarray:
        """Activations of one document at one hook: (pos, ...), memory-mapped when possible."""
        index, start, end = self._locate(doc)
        return self._decode(self._shard(index)[self._hook(hook)][start:end])

    def flat(self, hook: str) -> np.ndarray:
        """All tokens of the export at one hook, in corpus order: (tokens, ...).

        One shard gives a memory-mapped view; several are concatenated into memory.
        """
        self._hook(hook)
        parts = [self._shard(s["index"])[hook] for s in self.manifest["shards"]]
        if not parts:
            return np.zeros((0, *self.manifest["shapes"][hook]), dtype=np.float32)
        if len(parts) == 1:
            return self._decode(parts[0])
        # Limitation: more than one shard means one copy in memory; iterate shard_arrays()
        # for exports larger than memory.
        return self._decode(np.concatenate(parts))
