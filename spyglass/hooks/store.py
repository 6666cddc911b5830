"""Corpus exports: activations of many documents, sharded on disk, with a manifest.

An export is a folder::

    manifest.json               provenance, settings, and every complete shard
    shard-00000.safetensors     input_ids (tokens,) int32 and one (tokens, ...) array per hook
    shard-00001.safetensors     ...
    tokenizer/                  the model's tokenizer, so token ids can be read back as text
    neurons.parquet             top activations of every MLP neuron (when MLP posts are kept)

Tokens of a shard are laid flat in corpus order; the manifest gives, per shard, its
documents and their token offsets (document ``documents[i]`` is tokens
``token_offsets[i]:token_offsets[i+1]``), its rows and the SHA-256 of its file.
A document never straddles two shards.

Writing is crash-safe: a shard file is written under a temporary name, fsynced and renamed,
and only then added to the manifest, which is itself replaced atomically. Killed at any
moment and run again with the same arguments, an export continues with the shards the
manifest does not list; other arguments on the same folder are refused.

Reading without Spyglass needs only ``safetensors`` (or numpy and the 8-byte header rule)::

    import json, numpy as np
    from safetensors.numpy import load_file
    manifest = json.load(open(f"{folder}/manifest.json"))
    shard = manifest["shards"][0]
    arrays = load_file(f"{folder}/{shard['file']}")      # float32/float16 exports
    acts = arrays["blocks.3.hook_resid_post"]              # (tokens, d_model)
    start, end = shard["token_offsets"][0], shard["token_offsets"][1]
    first_doc = acts[start:end]                            # (pos, d_model)

:class:`Export` (in :mod:`spyglass.hooks.reader`, re-exported here) memory-maps shards,
checks their checksums and gives arrays per document or flat per hook; docs/EXPORT.md has a
PyTorch ``DataLoader`` recipe. The manifest's record and the errors live in
:mod:`spyglass.hooks.manifest`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import queue
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spyglass.hooks import corpus as corpus_mod
from spyglass.hooks.batch import (
    LAYOUTS,
    JobSpec,
    Segment,
    ShardData,
    ShardPlan,
    compute_shard,
    pack_rows,
    row_tokens,
    run_batch,
    token_shape,
)
from spyglass.hooks.manifest import (
    DTYPES,
    EXPECTABLE,
    FORMAT,
    IDS,
    MANIFEST,
    NEURON_INDEX,
    DiskSpaceError,
    ExportError,
    ExportIntegrityError,
    ExportMismatchError,
    Manifest,
    identity_diffs,
    neuron_file,
    now_iso,
    shard_file,
)
from spyglass.hooks.reader import Export, bf16_to_float32, read_header
from spyglass.hooks.spec import CaptureSpec, kind_of, layer_of
from spyglass.model.loader import Model, versions
from spyglass.model.paths import durable_write, file_sha256

# The writer's API, plus the reader and manifest names re-exported so that one import
# (``from spyglass.hooks.store import Export, export``) serves both sides.
__all__ = [
    "DTYPES",
    "EXPECTABLE",
    "MANIFEST",
    "DiskSpaceError",
    "Estimate",
    "Export",
    "ExportConfig",
    "ExportError",
    "ExportIntegrityError",
    "ExportJob",
    "ExportMismatchError",
    "Manifest",
    "bf16_to_float32",
    "check_not_busy",
    "export",
    "prepare_export",
    "read_header",
]

log = logging.getLogger(__name__)

_ST_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int32": "I32"}

# --- settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportConfig:
    """How to export: which hooks, how documents become rows, how shards are stored.

    ``hooks`` are hook names or shell patterns (``blocks.*.hook_resid_post``).
    ``context_length=None`` uses the model's context or 1,024 tokens, whichever is less.
    ``prepend_bos=None`` follows the model's tokenizer. ``dtype`` is the stored dtype; the
    model computes in its own. ``batch_size`` is rows per forward pass; ``shard_mb`` the
    target size of one shard file. ``neuron_top_k`` activations per MLP neuron are indexed
    when ``blocks.L.mlp.hook_post`` hooks are exported.
    """

    hooks: tuple[str, ...]
    context_length: int | None = None
    layout: str = "pack"
    prepend_bos: bool | None = None
    dtype: str = "float32"
    batch_size: int = 8
    shard_mb: float = 256.0
    neuron_top_k: int = 32

    def __post_init__(self) -> None:
        hooks = (self.hooks,) if isinstance(self.hooks, str) else tuple(self.hooks)
        object.__setattr__(self, "hooks", hooks)
        if not hooks:
            raise ValueError("Name at least one hook or pattern to export, e.g. "
                             "'blocks.*.hook_resid_post'.")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}.")
        if self.context_length is not None and self.context_length < 1:
            raise ValueError(f"context_length must be positive, got {self.context_length}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}.")
        if not self.shard_mb > 0:
            raise ValueError(f"shard_mb must be positive, got {self.shard_mb}.")
        if not 1 <= self.neuron_top_k <= 10_000:
            raise ValueError(f"neuron_top_k must be 1 to 10,000, got {self.neuron_top_k}.")


def resolve(model: Model, config: ExportConfig) -> JobSpec:
    """Turn patterns into hook names and defaults into values for this model."""
    names = tuple(CaptureSpec.from_patterns(config.hooks).hook_names(model))
    shapes = {name: token_shape(model, name) for name in names}
    ctx = config.context_length or min(model.n_ctx, 1024)
    if ctx > model.n_ctx:
        raise ValueError(
            f"Context length {ctx:,} is over what {model.name} reads ({model.n_ctx:,}); "
            f"pass at most {model.n_ctx:,}."
        )
    bos = model.default_bos if config.prepend_bos is None else bool(config.prepend_bos)
    if bos and model.tokenizer.bos_token_id is None:
        raise ValueError(f"{model.name}'s tokenizer has no BOS token; export without BOS.")
    mlp_layers = tuple(
        layer_of(n) for n in names if kind_of(n) == "mlp_post" and layer_of(n) is not None
    )
    return JobSpec(
        names=names, shapes=shapes, context_length=ctx, layout=config.layout,
        prepend_bos=bos, dtype=config.dtype, batch_size=config.batch_size,
        neuron_layers=mlp_layers, neuron_top_k=config.neuron_top_k, model_name=model.name,
    )


# --- planning ---------------------------------------------------------------------------


def plan_shards(docs: list[corpus_mod.DocTokens], spec: JobSpec,
                shard_mb: float) -> list[ShardPlan]:
    """Group whole documents, in order, into shards of about ``shard_mb`` each."""
    target = max(1, int(shard_mb * 2**20 / spec.bytes_per_token))
    shards: list[ShardPlan] = []
    group: list[corpus_mod.DocTokens] = []
    tokens = 0
    for doc in docs:
        group.append(doc)
        tokens += len(doc)
        if tokens >= target:
            shards.append(ShardPlan(len(shards), tuple(group)))
            group, tokens = [], 0
    if group:
        shards.append(ShardPlan(len(shards), tuple(group)))
    return shards


# --- writing files ----------------------------------------------------------------------


class _HashingWriter:
    """A file handle that hashes and counts what passes through it."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.fh.write(view)
        self.size += len(view)


def _raw_bytes(tensor: Any) -> tuple[str, np.ndarray]:
    """The safetensors dtype code and the raw little-endian bytes of a tensor or array."""
    import torch

    if isinstance(tensor, np.ndarray):
        return _ST_CODES[str(tensor.dtype)], np.ascontiguousarray(tensor).view(np.uint8)
    code = _ST_CODES[str(tensor.dtype).removeprefix("torch.")]
    flat = tensor.contiguous().reshape(-1)
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    return code, flat.numpy().view(np.uint8)


def write_safetensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str]
                      ) -> tuple[str, int]:
    """Write a safetensors file durably, streaming; return (sha256, size in bytes).

    Follows the safetensors layout: an 8-byte little-endian header length, a JSON header
    padded with spaces to a multiple of 8, then each tensor's bytes in header order.
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name, tensor in tensors.items():
        code, raw = _raw_bytes(tensor)
        header[name] = {"dtype": code, "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + raw.nbytes]}
        offset += raw.nbytes
        blobs.append(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    result: dict[str, Any] = {}

    def write(fh: Any) -> None:
        out = _HashingWriter(fh)
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for raw in blobs:
            out.write(raw)
        result.update(sha256=out.digest.hexdigest(), size=out.size)

    durable_write(path, write)
    return result["sha256"], result["size"]


def write_shard(folder: Path, spec: JobSpec, data: ShardData) -> dict[str, Any]:
    """Write one computed shard (and its neuron index part); return its manifest record."""
    import pyarrow.parquet as pq

    plan = data.plan
    record: dict[str, Any] = {
        "index": plan.index,
        "file": shard_file(plan.index),
        "rows": data.rows,
        "tokens": plan.n_tokens,
        "documents": [d.id for d in plan.docs],
        "token_offsets": plan.offsets,
    }
    truncated = {str(d.id): d.truncated_from for d in plan.docs if d.truncated_from}
    if truncated:
        record["truncated"] = truncated
    if any(d.name is not None for d in plan.docs):
        record["names"] = [d.name for d in plan.docs]
    if data.neurons is not None:
        part = folder / neuron_file(plan.index)
        durable_write(part, lambda fh: pq.write_table(data.neurons, fh))
        record["neuron_file"] = neuron_file(plan.index)

    tensors = {IDS: data.ids, **data.arrays}
    meta = {"spyglass.format": FORMAT, "spyglass.shard": str(plan.index),
            "spyglass.model": spec.model_name}
    sha, size = write_safetensors(folder / record["file"], tensors, meta)
    record.update(sha256=sha, bytes=size)
    return record


# --- the export job ---------------------------------------------------------------------


@dataclass
class Estimate:
    """What an export will take, computed before it starts."""

    documents: int
    skipped: int
    tokens: int
    shards: int
    done_shards: int
    remaining_tokens: int
    disk_bytes: int  # still to be written
    total_bytes: int
    memory_bytes: int
    tokens_per_second: float | None = None

    @property
    def seconds(self) -> float | None:
        if not self.tokens_per_second:
            return None
        return self.remaining_tokens / self.tokens_per_second

    def describe(self) -> str:
        eta = "unknown" if self.seconds is None else _duration(self.seconds)
        rate = ("" if self.tokens_per_second is None
                else f" at about {self.tokens_per_second:,.0f} tokens/s")
        done = f" ({self.done_shards} already done)" if self.done_shards else ""
        return (
            f"{self.documents:,} documents ({self.skipped:,} empty skipped), "
            f"{self.tokens:,} tokens in {self.shards:,} shards{done}.\n"
            f"Disk: {_size(self.disk_bytes)} to write ({_size(self.total_bytes)} in all). "
            f"Memory: about {_size(self.memory_bytes)}. "
            f"Time: {eta}{rate}."
        )

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["seconds"] = self.seconds
        return out


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:,.1f} TiB"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def model_identity(model: Model) -> dict[str, Any]:
    return {"name": model.name, "source": model.source, "dtype": model.dtype,
            "weight_processing": model.processing}


@dataclass
class ExportJob:
    """A planned export: settings resolved, corpus tokenized, shards laid out.

    Nothing is written until :meth:`run`. Create one with :func:`prepare_export`.
    """

    model: Model
    corpus: corpus_mod.CorpusSpec
    folder: Path
    config: ExportConfig
    spec: JobSpec
    identity: dict[str, Any]
    shards: list[ShardPlan]
    skipped: list[int]
    existing: Manifest | None
    _calibrated: float | None = field(default=None, repr=False)

    @property
    def pending(self) -> list[ShardPlan]:
        done = self.existing.done if self.existing else set()
        return [s for s in self.shards if s.index not in done]

    @property
    def complete(self) -> bool:
        return bool(self.existing and self.existing.data.get("complete"))

    def estimate(self, calibrate: bool = False) -> Estimate:
        """Disk, memory and (with ``calibrate``, from one short forward) time still needed."""
        per_token = self.spec.bytes_per_token
        tokens = sum(s.n_tokens for s in self.shards)
        remaining = sum(s.n_tokens for s in self.pending)
        # Per-shard neuron index parts (about 16 bytes a row in Parquet) stay on disk until
        # the end, so they count towards the peak.
        index = len(self.spec.neuron_layers) * self.model.d_mlp * self.spec.neuron_top_k * 16
        largest = max((s.n_tokens for s in self.shards), default=0)
        params = sum(p.numel() * p.element_size() for p in self.model.bridge.parameters())
        # Forward working memory, roughly: attention scores and MLP activations of a batch.
        width = self.spec.batch_size * self.spec.context_length
        work = width * 4 * (3 * self.model.n_heads * self.spec.context_length
                            + 4 * self.model.d_mlp + 8 * self.model.d_model)
        if calibrate and self._calibrated is None and remaining:
            self._calibrated = self._calibrate()
        return Estimate(
            documents=sum(len(s.docs) for s in self.shards),
            skipped=len(self.skipped),
            tokens=tokens,
            shards=len(self.shards),
            done_shards=len(self.shards) - len(self.pending),
            remaining_tokens=remaining,
            disk_bytes=remaining * per_token + len(self.pending) * (4096 + index),
            total_bytes=tokens * per_token + len(self.shards) * (4096 + index),
            memory_bytes=params + 2 * largest * per_token + work,
            tokens_per_second=self._calibrated,
        )

    def _calibrate(self) -> float:
        """Tokens per second of one real batch, capped near 1,024 tokens to stay quick."""
        shard = self.pending[0]
        rows = pack_rows([(d.id, d.ids) for d in shard.docs], self.spec.context_length,
                         self.spec.layout)
        cap = max(self.spec.context_length, 1024)
        batch, tokens = [], 0
        for row in rows[: self.spec.batch_size]:
            if batch and tokens + row_tokens([row]) > cap:
                break
            batch.append(row)
            tokens += row_tokens([row])
        # A first forward pays one-off costs (allocations, kernel choice); time the second.
        first = batch[0][0]
        run_batch(self.model, [[Segment(first.doc, 0, first.ids[:8])]], self.spec.names)
        started = time.perf_counter()
        run_batch(self.model, batch, self.spec.names)
        elapsed = time.perf_counter() - started
        # Limitation: one batch, so the estimate is rough; the progress bar's ETA, measured
        # on the real batches, soon replaces it.
        return tokens / max(elapsed, 1e-6)

    def check_disk(self) -> None:
        """Refuse to start when the disk lacks room for what is left to write."""
        need = self.estimate().disk_bytes
        probe = self.folder if self.folder.exists() else _existing_parent(self.folder)
        free = shutil.disk_usage(probe).free
        margin = need // 20 + 16 * 2**20
        if need + margin > free:
            raise DiskSpaceError(
                f"The export needs about {_size(need)} more on {probe} (plus a margin of "
                f"{_size(margin)}), but only {_size(free)} is free. Free some space, choose "
                "another --out folder, export fewer hooks, or store float16/bfloat16."
            )

    def run(self, *, progress: bool = False, engine: str = "local",
            address: str | None = None, workers: int | None = None) -> dict[str, Any]:
        """Write every pending shard, then the neuron index; return the final manifest."""
        if engine not in ("local", "ray"):
            raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}.")
        if not self.folder.exists():
            self.check_disk()  # refuse before creating anything, so no empty folder is left
        self.folder.mkdir(parents=True, exist_ok=True)
        with _folder_lock(self.folder):
            manifest = self._open_manifest()
            self.check_disk()  # again, now that strays of a killed run are cleaned away
            run = {"engine": engine, "started": now_iso(), "batch_size": self.spec.batch_size,
                   "pending_shards": len(self.pending)}
            manifest.data["runs"].append(run)
            manifest.save()
            _save_tokenizer(self.model, self.folder)
            started = time.perf_counter()
            if self.pending:
                if engine == "ray":
                    from spyglass.hooks import ray_engine

                    ray_engine.run(self, manifest, progress=progress, address=address,
                                   workers=workers)
                else:
                    run.update(_run_local(self, manifest, progress))
            run["seconds"] = round(time.perf_counter() - started, 2)
            _finish(self, manifest)
            self.existing = manifest
            return manifest.data

    def _open_manifest(self) -> Manifest:
        """The folder's manifest (stray files of killed runs removed), or a new one."""
        manifest = Manifest.read(self.folder)
        if manifest is None:
            manifest = Manifest(self.folder, self._new_manifest())
        _clean_strays(self.folder, manifest.done)
        self.existing = manifest
        return manifest

    def _new_manifest(self) -> dict[str, Any]:
        spec = self.spec
        model = self.model
        return {
            "format": FORMAT,
            "identity": self.identity,
            "model": model.name,
            "hooks": list(spec.names),
            "shapes": {n: list(s) for n, s in spec.shapes.items()},
            "dtype": spec.dtype,
            "context_length": spec.context_length,
            "layout": spec.layout,
            "prepend_bos": spec.prepend_bos,
            "provenance": {
                "model": model_identity(model),
                "weight_processing": model.processing,
                "special_tokens": "text",
                "n_layers": model.n_layers, "n_heads": model.n_heads,
                "n_kv_heads": model.n_kv_heads, "d_model": model.d_model,
                "d_head": model.d_head, "d_mlp": model.d_mlp, "d_vocab": model.d_vocab,
                "n_ctx": model.n_ctx,
                "corpus": {"path": str(self.corpus.path.resolve()),
                           **self.identity["corpus"]},
                "versions": versions(),
                "created": now_iso(),
            },
            "documents": {
                "count": sum(len(s.docs) for s in self.shards),
                "skipped_empty": self.skipped,
            },
            "planned": {"shards": len(self.shards),
                        "tokens": sum(s.n_tokens for s in self.shards)},
            "neuron_index": (
                {"layers": list(spec.neuron_layers), "top_k": spec.neuron_top_k, "file": None}
                if spec.neuron_layers else None
            ),
            "runs": [],
            "shards": [],
            "complete": False,
        }


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder; the OS drops it if the process dies."""
    with open(folder / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExportError(
                f"Another export is writing to {folder} right now. Wait for it to finish "
                "or stop it; two writers would overwrite each other's shards."
            ) from None
        yield


def check_not_busy(folder: str | os.PathLike[str]) -> None:
    """Refuse at once when another export holds ``folder``'s lock.

    Cheap enough to call before loading a model; the run takes the lock for real later, so
    a writer starting in between is still refused then.
    """
    folder = Path(folder).expanduser()
    if (folder / ".lock").is_file():
        with _folder_lock(folder):
            pass


def _clean_strays(folder: Path, done: set[int]) -> None:
    """Remove temp files and shards a killed run wrote but never listed (under the lock)."""
    for path in [*folder.glob(".*.tmp"), *folder.glob("neurons/.*.tmp")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for path in [*folder.glob("shard-*.safetensors"), *folder.glob("neurons/shard-*.parquet")]:
        try:
            index = int(path.name.split("-")[1].split(".")[0])
        except (IndexError, ValueError):
            continue
        if index not in done:
            log.info("Removing %s, written by an interrupted run but never listed", path.name)
            path.unlink()


def _save_tokenizer(model: Model, folder: Path) -> None:
    target = folder / "tokenizer"
    if target.is_dir():
        return
    tmp = folder / f".tokenizer.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.tokenizer.save_pretrained(str(tmp))
    os.replace(tmp, target)


class _Writer:
    """Writes computed shards on a thread while the next shard is computed."""

    def __init__(self, job: ExportJob, manifest: Manifest) -> None:
        self.job = job
        self.manifest = manifest
        self.queue: queue.Queue[ShardData | None] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.waited = 0.0  # seconds the computing thread spent waiting for this writer
        self.thread = threading.Thread(target=self._loop, name="spyglass-export-writer",
                                       daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (data := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain without writing once something failed
            try:
                record = write_shard(self.job.folder, self.job.spec, data)
                self.manifest.add_shard(record)
            except BaseException as exc:  # reported to the computing thread
                self.error = exc

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, data: ShardData) -> None:
        started = time.perf_counter()
        try:
            while True:
                self._raise()
                try:
                    self.queue.put(data, timeout=0.2)
                    return
                except queue.Full:
                    continue
        finally:
            self.waited += time.perf_counter() - started

    def close(self) -> None:
        """Wait for queued shards to be written; raise what the writer hit, if anything."""
        started = time.perf_counter()
        self.queue.put(None)
        self.thread.join()
        self.waited += time.perf_counter() - started
        self._raise()


def progress_bar(job: ExportJob, enabled: bool) -> Any:
    from tqdm import tqdm

    total = sum(s.n_tokens for s in job.shards)
    done = total - sum(s.n_tokens for s in job.pending)
    return tqdm(total=total, initial=done, unit="tok", unit_scale=True, disable=not enabled,
                desc="export", dynamic_ncols=True, smoothing=0.1)


def _run_local(job: ExportJob, manifest: Manifest, progress: bool) -> dict[str, float]:
    """Compute shards here while a thread writes them; return where the time went."""
    writer = _Writer(job, manifest)
    bar = progress_bar(job, progress)
    computing = 0.0
    try:
        for shard in job.pending:
            started = time.perf_counter()
            data = compute_shard(job.model, job.spec, shard, on_tokens=bar.update)
            computing += time.perf_counter() - started
            writer.put(data)
    except KeyboardInterrupt:
        # Keep the shard already handed to the writer: it is complete and costs little.
        log.warning("Interrupted; finishing the shard being written")
        writer.close()
        raise
    except BaseException:
        writer.close()
        raise
    finally:
        bar.close()
    writer.close()
    # Time waiting for the writer is the part of writing that compute did not hide.
    return {"compute_seconds": round(computing, 2),
            "writer_wait_seconds": round(writer.waited, 2)}


def _finish(job: ExportJob, manifest: Manifest) -> None:
    """Check every planned shard is listed; merge the neuron index; mark complete."""
    missing = sorted({s.index for s in job.shards} - manifest.done)
    if missing:
        raise ExportError(f"Shards {missing[:10]} were not written; run the export again.")
    index = manifest.data.get("neuron_index")
    if index is not None and index.get("file") is None:
        parts = [job.folder / s["neuron_file"] for s in manifest.data["shards"]]
        table = merge_neuron_index(parts, index["top_k"])
        import pyarrow.parquet as pq

        durable_write(job.folder / NEURON_INDEX, lambda fh: pq.write_table(table, fh))
        index["file"] = NEURON_INDEX
        index["sha256"] = file_sha256(job.folder / NEURON_INDEX)
        index["rows"] = table.num_rows
    manifest.data["complete"] = True
    manifest.data["finished"] = manifest.data.get("finished") or now_iso()
    manifest.save()
    shutil.rmtree(job.folder / "neurons", ignore_errors=True)


def merge_neuron_index(parts: list[Path], top_k: int) -> Any:
    """The ``top_k`` best rows per (layer, neuron) over per-shard index files (pyarrow)."""
    import duckdb

    con = duckdb.connect()
    try:
        return con.sql(
            "SELECT layer, neuron, doc, position, value FROM read_parquet(?) "
            "QUALIFY row_number() OVER (PARTITION BY layer, neuron "
            "ORDER BY value DESC, doc, position) <= ? "
            "ORDER BY layer, neuron, value DESC, doc, position",
            params=[[str(p) for p in parts], top_k],
        ).to_arrow_table()
    finally:
        con.close()


def prepare_export(model: Model, corpus: corpus_mod.CorpusSpec, out: str | os.PathLike[str],
                   config: ExportConfig) -> ExportJob:
    """Resolve settings, check the folder, tokenize and plan; write nothing yet.

    A folder holding an export with other arguments is refused, naming each difference.
    """
    folder = Path(out).expanduser()
    spec = resolve(model, config)
    identity = {
        "model": model_identity(model),
        "corpus": corpus_mod.identity(corpus),
        "hooks": list(spec.names),
        "context_length": spec.context_length,
        "layout": spec.layout,
        "prepend_bos": spec.prepend_bos,
        "dtype": spec.dtype,
        "special_tokens": "text",
        "shard_mb": config.shard_mb,
        "neuron_top_k": spec.neuron_top_k if spec.neuron_layers else None,
    }
    existing = _check_folder(folder, identity)

    bos_id = model.tokenizer.bos_token_id if spec.prepend_bos else None
    max_tokens = spec.context_length if spec.layout == "truncate" else None
    docs, skipped = corpus_mod.tokenize_documents(
        model.tokenizer, corpus_mod.read_documents(corpus), bos_id=bos_id, max_tokens=max_tokens
    )
    if not docs:
        raise ExportError(f"{corpus.path} holds no non-empty documents; nothing to export.")
    shards = plan_shards(docs, spec, config.shard_mb)
    if existing is not None:
        _check_listed(existing, shards)
    return ExportJob(model, corpus, folder, config, spec, identity, shards, skipped, existing)


def _check_folder(folder: Path, identity: dict[str, Any]) -> Manifest | None:
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder} exists and is not a folder; choose another --out.")
    existing = Manifest.read(folder) if folder.is_dir() else None
    if existing is None:
        # Dot-files are our lock and the temp files of a run killed before its first save.
        if folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir()):
            raise ExportError(
                f"{folder} is not empty and holds no export manifest; choose a new or empty "
                "--out folder so nothing of yours is overwritten."
            )
        return None
    diffs = identity_diffs(existing.data["identity"], identity)
    old_corpus = existing.data["identity"].get("corpus", {})
    if old_corpus.get("sha256") != identity["corpus"]["sha256"]:
        # Same arguments cannot help here: the file's content is not what was exported.
        raise ExportMismatchError(
            f"The corpus file changed since the export in {folder} began (its SHA-256 and "
            f"size were {old_corpus.get('sha256', '?')[:12]}…, {old_corpus.get('bytes', '?')} "
            f"bytes; now {identity['corpus']['sha256'][:12]}…, {identity['corpus']['bytes']} "
            "bytes), so its document ids may no longer match. Restore the original file to "
            "resume, or export the new one into a new --out folder."
        )
    if diffs:
        raise ExportMismatchError(
            f"{folder} holds an export made with other arguments — " + "; ".join(diffs)
            + ". Repeat the original arguments to resume it, or choose a new --out folder."
        )
    return existing


def _check_listed(existing: Manifest, shards: list[ShardPlan]) -> None:
    by_index = {s.index: s for s in shards}
    for record in existing.data["shards"]:
        plan = by_index.get(record["index"])
        if plan is None or record["documents"] != [d.id for d in plan.docs] \
                or record["token_offsets"] != plan.offsets:
            raise ExportMismatchError(
                f"Shard {record['index']} in {existing.folder} does not match today's plan of "
                "the same corpus; the folder cannot be resumed. Choose a new --out folder."
            )


def export(model: Model, corpus: corpus_mod.CorpusSpec | str | os.PathLike[str],
           out: str | os.PathLike[str], config: ExportConfig, *, progress: bool = False,
           engine: str = "local", address: str | None = None,
           workers: int | None = None) -> dict[str, Any]:
    """Export activations of a corpus; resume when ``out`` holds the same export unfinished.

    Returns the manifest. See the module docstring for the folder's layout.
    """
    if not isinstance(corpus, corpus_mod.CorpusSpec):
        corpus = corpus_mod.CorpusSpec(Path(corpus))
    job = prepare_export(model, corpus, out, config)
    log.info("Export plan: %s", job.estimate().describe())
    return job.run(progress=progress, engine=engine, address=address, workers=workers)
