"""Reading a corpus for export: plain text, JSON lines or Parquet, one document at a time.

A document's id is its place in the source, counted from 0: the line number (``.txt``, one
document per line), the block number (``.txt``, blank-line separated), or the record
number (``.jsonl``, Parquet). Documents that are empty or only whitespace are skipped and
their ids recorded, so nothing disappears without a trace and ids never shift.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spyglass.model.paths import file_sha256

log = logging.getLogger(__name__)

FORMATS = ("txt", "jsonl", "parquet")
SPLITS = ("lines", "blank")
_SUFFIXES = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl",
             ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class CorpusSpec:
    """Where a corpus is and how to cut it into documents.

    ``fmt`` is guessed from the file's suffix when not given. ``split`` applies to text
    files: ``lines`` makes each line a document, ``blank`` makes each block of lines between
    blank lines a document. ``text_field`` names the JSON field or Parquet column holding
    the text; ``id_field``, when given, names one holding a document name to record.
    """

    path: Path
    fmt: str | None = None
    split: str = "lines"
    text_field: str = "text"
    id_field: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).expanduser())
        if self.fmt is None:
            guessed = _SUFFIXES.get(self.path.suffix.lower())
            if guessed is None:
                raise ValueError(
                    f"Cannot tell the format of {self.path.name} from its suffix; name it "
                    f".txt, .jsonl or .parquet, or give the format (fmt=...; --format on the "
                    f"command line), one of {', '.join(FORMATS)}."
                )
            object.__setattr__(self, "fmt", guessed)
        if self.fmt not in FORMATS:
            raise ValueError(f"Corpus format must be one of {FORMATS}, got {self.fmt!r}.")
        if self.split not in SPLITS:
            raise ValueError(
                f"split must be 'lines' (one document per line) or 'blank' (documents "
                f"separated by blank lines), got {self.split!r}."
            )
        if not self.text_field:
            raise ValueError("text_field must name the field or column holding the text.")

    def options(self) -> dict[str, Any]:
        """The settings that decide which documents come out (part of an export's identity)."""
        out: dict[str, Any] = {"format": self.fmt}
        if self.fmt == "txt":
            out["split"] = self.split
        else:
            out["text_field"] = self.text_field
            out["id_field"] = self.id_field
        return out


@dataclass(frozen=True)
class Document:
    id: int
    text: str
    name: str | None = None


def identity(spec: CorpusSpec) -> dict[str, Any]:
    """What makes two corpora the same: content checksum and cutting options, not the path."""
    if not spec.path.is_file():
        raise FileNotFoundError(f"No corpus file at {spec.path}.")
    return {
        **spec.options(),
        "sha256": file_sha256(spec.path),
        "bytes": spec.path.stat().st_size,
    }


def read_documents(spec: CorpusSpec) -> Iterator[Document]:
    """Every document of the corpus in order, empty ones included (callers skip them)."""
    if not spec.path.is_file():
        raise FileNotFoundError(f"No corpus file at {spec.path}.")
    if spec.fmt == "parquet":
        yield from _read_parquet(spec)
        return
    try:
        yield from _read_txt(spec) if spec.fmt == "txt" else _read_jsonl(spec)
    except UnicodeDecodeError as exc:
        raise ValueError(_where_not_utf8(spec.path, exc)) from exc


def _where_not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """Name the first line that is not UTF-8: the decoder's own error only knows its buffer."""
    with open(path, "rb") as fh:
        offset = 0
        for lineno, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                return (
                    f"{path}:{lineno} is not UTF-8 (byte {offset + bad.start:,} of the file, "
                    f"{raw[bad.start:bad.start + 4]!r}). Convert the file to UTF-8, e.g. "
                    f"`iconv -f latin1 -t utf-8`, and export again."
                )
            offset += len(raw)
    return f"{path} is not UTF-8 ({exc.reason}). Convert it to UTF-8 and export again."


def _read_txt(spec: CorpusSpec) -> Iterator[Document]:
    with open(spec.path, encoding="utf-8", newline="") as fh:
        if spec.split == "lines":
            for i, line in enumerate(fh):
                yield Document(i, line.rstrip("\r\n"))
            return
        block: list[str] = []
        n = 0
        for line in fh:
            if line.strip():
                block.append(line)
            elif block:
                yield Document(n, "".join(block).rstrip("\r\n"))
                n += 1
                block = []
        if block:
            yield Document(n, "".join(block).rstrip("\r\n"))


def _read_jsonl(spec: CorpusSpec) -> Iterator[Document]:
    with open(spec.path, encoding="utf-8") as fh:
        n = 0
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue  # blank lines separate nothing in JSON lines; they are not records
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{spec.path}:{lineno} is not valid JSON ({exc}).") from exc
            yield Document(n, _field_text(spec, record, f"{spec.path}:{lineno}"),
                           _field_name(spec, record))
            n += 1


def _field_text(spec: CorpusSpec, record: Any, where: str) -> str:
    if not isinstance(record, dict) or spec.text_field not in record:
        keys = list(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(
            f"{where} has no field {spec.text_field!r} (it has {keys}); name the field that "
            "holds the text (text_field=...; --text-field on the command line)."
        )
    text = record[spec.text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"{where}: field {spec.text_field!r} is {type(text).__name__}, not text.")
    return text


def _field_name(spec: CorpusSpec, record: dict) -> str | None:
    if spec.id_field is None:
        return None
    value = record.get(spec.id_field)
    return None if value is None else str(value)


def _read_parquet(spec: CorpusSpec) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(spec.path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(
            f"{spec.path} could not be read as Parquet ({exc}). If it is text or JSON lines, "
            "give that format (fmt=...; --format on the command line) or name it .txt/.jsonl."
        ) from exc
    columns = [spec.text_field] + ([spec.id_field] if spec.id_field else [])
    missing = [c for c in columns if c not in table.schema_arrow.names]
    if missing:
        raise ValueError(
            f"{spec.path} has no column {missing}; its columns are {table.schema_arrow.names}. "
            "Name the text column (text_field=...; --text-field on the command line) and the "
            "id column, if any (id_field=...; --id-field)."
        )
    n = 0
    for batch in table.iter_batches(batch_size=1024, columns=columns):
        texts = batch.column(spec.text_field).to_pylist()
        names = (batch.column(spec.id_field).to_pylist() if spec.id_field
                 else [None] * len(texts))
        for text, name in zip(texts, names, strict=True):
            if text is not None and not isinstance(text, str):
                raise ValueError(
                    f"{spec.path}: column {spec.text_field!r} holds {type(text).__name__}, "
                    "not text."
                )
            yield Document(n, text or "", None if name is None else str(name))
            n += 1


@dataclass
class DocTokens:
    """One document as the export reads it: its token ids, cut to fit if asked."""

    id: int
    ids: np.ndarray  # (pos,) int32
    name: str | None = None
    truncated_from: int | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def tokenize_documents(
    tokenizer: Any,
    docs: Iterator[Document],
    *,
    bos_id: int | None,
    max_tokens: int | None,
    chunk: int = 256,
) -> tuple[list[DocTokens], list[int]]:
    """Token ids of every non-empty document, and the ids of the skipped empty ones.

    Ids equal what :meth:`spyglass.model.Model.tokenize` gives with ``special="text"``:
    strings such as ``<|endoftext|>`` stay text. ``max_tokens`` truncates (BOS included).
    """
    kept: list[DocTokens] = []
    skipped: list[int] = []
    pending: list[Document] = []

    def flush() -> None:
        encoded = tokenizer(
            [d.text for d in pending], add_special_tokens=False, split_special_tokens=True
        )["input_ids"]
        for doc, ids in zip(pending, encoded, strict=True):
            if bos_id is not None:
                ids = [bos_id, *ids]
            full = len(ids)
            if max_tokens is not None and full > max_tokens:
                ids = ids[:max_tokens]
            kept.append(DocTokens(
                doc.id, np.asarray(ids, dtype=np.int32), doc.name,
                full if len(ids) < full else None,
            ))
        pending.clear()

    for doc in docs:
        if not doc.text.strip():
            skipped.append(doc.id)
            continue
        pending.append(doc)
        if len(pending) >= chunk:
            flush()
    if pending:
        flush()
    if skipped:
        log.info("Skipped %d empty documents", len(skipped))
    return kept, skipped
