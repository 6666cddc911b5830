"""An export folder's manifest: its format, file names, errors, and the record of shards.

Shared by the writer (:mod:`spyglass.hooks.store`) and the reader
(:mod:`spyglass.hooks.reader`); the folder layout is described in :mod:`spyglass.hooks.store`.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spyglass.model.paths import durable_write

FORMAT = "spyglass-export/1"
MANIFEST = "manifest.json"
NEURON_INDEX = "neurons.parquet"
IDS = "input_ids"
DTYPES = ("float32", "float16", "bfloat16")
# Expectations a reader may check; see Export.check.
EXPECTABLE = ("model", "context_length", "prepend_bos", "dtype", "hooks", "layout",
              "weight_processing")


class ExportError(RuntimeError):
    """An export cannot start or continue; the message says why and what to do."""


class ExportMismatchError(ExportError):
    """The folder holds an export made with other arguments, or a reader expects others."""


class ExportIntegrityError(ExportError):
    """A shard file differs from what the manifest recorded when it was written."""


class DiskSpaceError(ExportError, OSError):
    """Not enough free disk for the rest of the export."""


def shard_file(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def neuron_file(index: int) -> str:
    return f"neurons/shard-{index:05d}.parquet"


# --- the manifest -----------------------------------------------------------------------


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Manifest:
    """The manifest of one export folder, rewritten atomically after every change."""

    def __init__(self, folder: Path, data: dict[str, Any]) -> None:
        self.folder = folder
        self.data = data
        self._lock = threading.Lock()

    @classmethod
    def read(cls, folder: Path) -> Manifest | None:
        path = folder / MANIFEST
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ExportError(f"{path} is not valid JSON ({exc}).") from exc
        if data.get("format") != FORMAT:
            raise ExportError(
                f"{path} is not a Spyglass export manifest (format {data.get('format')!r}, "
                f"expected {FORMAT!r})."
            )
        return cls(folder, data)

    @property
    def done(self) -> set[int]:
        return {s["index"] for s in self.data["shards"]}

    def save(self) -> None:
        self.data["updated"] = now_iso()
        text = json.dumps(self.data, indent=1, ensure_ascii=False).encode("utf-8")
        durable_write(self.folder / MANIFEST, lambda fh: fh.write(text))

    def add_shard(self, record: dict[str, Any]) -> None:
        with self._lock:
            shards = [s for s in self.data["shards"] if s["index"] != record["index"]]
            shards.append(record)
            self.data["shards"] = sorted(shards, key=lambda s: s["index"])
            self.save()


def identity_diffs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [_describe_diff(k, old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)]


def _short(items: list[Any], limit: int = 4) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _describe_diff(key: str, old: Any, new: Any) -> str:
    """One line per differing setting; long lists (hook names) as what was added or removed."""
    if isinstance(old, list) and isinstance(new, list) and len(old) + len(new) > 8:
        added = [x for x in new if x not in old]
        removed = [x for x in old if x not in new]
        parts = [f"folder has {len(old)}, now {len(new)}"]
        if added:
            parts.append(f"new: {_short(added)}")
        if removed:
            parts.append(f"dropped: {_short(removed)}")
        if not added and not removed:
            parts.append("same items in another order")
        return f"{key}: " + "; ".join(parts)
    if isinstance(old, dict) and isinstance(new, dict):
        inner = [_describe_diff(f"{key}.{k}", old.get(k), new.get(k))
                 for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        return "; ".join(inner)
    return f"{key}: folder has {old!r}, now {new!r}"
