"""``spyglass export``: activations of a whole corpus, sharded on disk, resumable."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spyglass.hooks.corpus import FORMATS, SPLITS, CorpusSpec
from spyglass.hooks.store import (
    DTYPES,
    ExportConfig,
    ExportError,
    Manifest,
    check_not_busy,
    prepare_export,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export activations of a corpus (sharded safetensors + manifest)",
        description="Export activations of every document of a corpus into a folder of "
        "safetensors shards with a manifest. Run the same command again to resume an "
        "interrupted export. See docs/EXPORT.md.",
    )
    p.add_argument("corpus", help=".txt, .jsonl or .parquet file")
    p.add_argument("--model", default=None, help="model to run (default: embedded)")
    p.add_argument("--hooks", nargs="+", required=True, metavar="PATTERN",
                   help="hook names or patterns, e.g. 'blocks.*.hook_resid_post' "
                   "'blocks.6.mlp.hook_post' (commas also separate)")
    p.add_argument("--out", required=True, help="output folder (new, empty, or to resume)")
    g = p.add_argument_group("corpus")
    g.add_argument("--format", choices=FORMATS, default=None, help="default: from the suffix")
    g.add_argument("--split", choices=SPLITS, default="lines",
                   help="text files: one document per line, or blank-line separated")
    g.add_argument("--text-field", default="text", help="JSON field / Parquet column of text")
    g.add_argument("--id-field", default=None, help="field / column naming each document")
    g = p.add_argument_group("rows and storage")
    g.add_argument("--context", type=int, default=None,
                   help="context length of a row (default: model's, at most 1024)")
    g.add_argument("--layout", choices=("pack", "truncate"), default="pack",
                   help="pack: split long documents and pack rows; truncate: one document "
                   "per row, cut at the context length")
    g.add_argument("--bos", action=argparse.BooleanOptionalAction, default=None,
                   help="prepend the BOS token to each document (default: as the tokenizer)")
    g.add_argument("--dtype", choices=DTYPES, default="float32", help="stored dtype")
    g.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    g.add_argument("--shard-mb", type=float, default=256.0, help="target shard size in MiB")
    g.add_argument("--neuron-top-k", type=int, default=32,
                   help="top activations kept per MLP neuron for `spyglass neurons`")
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=("local", "ray"), default="local")
    g.add_argument("--address", default=None,
                   help="Ray cluster address (default: start a local instance on loopback)")
    g.add_argument("--workers", type=int, default=None, help="Ray workers (default: 2 "
                   "locally, one per CPU on a cluster)")
    p.add_argument("--dry-run", action="store_true", help="print the estimate and stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    p.set_defaults(func=run)


def _patterns(raw: list[str]) -> tuple[str, ...]:
    return tuple(p.strip() for item in raw for p in item.split(",") if p.strip())


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C but reported with its own exit code (143)."""


@contextmanager
def _term_as_interrupt() -> Any:
    """Let ``kill`` (SIGTERM) stop an export the way Ctrl-C does: cleanly, resumable."""
    def handler(signum: int, frame: Any) -> None:
        raise _Terminated

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _err(message: str) -> None:
    print(f"spyglass export: {message}", file=sys.stderr, flush=True)


def summary(manifest: dict[str, Any], folder: Path) -> dict[str, Any]:
    shards = manifest["shards"]
    return {
        "folder": str(folder),
        "complete": manifest["complete"],
        "model": manifest["model"],
        "hooks": manifest["hooks"],
        "dtype": manifest["dtype"],
        "context_length": manifest["context_length"],
        "documents": sum(len(s["documents"]) for s in shards),
        "skipped_empty": len(manifest["documents"]["skipped_empty"]),
        "tokens": sum(s["tokens"] for s in shards),
        "rows": sum(s["rows"] for s in shards),
        "shards": len(shards),
        "bytes": sum(s["bytes"] for s in shards),
        "neuron_index": (manifest.get("neuron_index") or {}).get("file"),
    }


def run(args: argparse.Namespace) -> int:
    from spyglass.model import ModelLoadError, ModelSource, load_model

    folder = Path(args.out).expanduser()
    try:
        corpus = CorpusSpec(Path(args.corpus), fmt=args.format, split=args.split,
                            text_field=args.text_field, id_field=args.id_field)
        config = ExportConfig(
            hooks=_patterns(args.hooks), context_length=args.context, layout=args.layout,
            prepend_bos=args.bos, dtype=args.dtype, batch_size=args.batch_size,
            shard_mb=args.shard_mb, neuron_top_k=args.neuron_top_k,
        )
        check_not_busy(folder)  # before the model loads: refusing should not take seconds
        model = load_model(ModelSource(name=args.model) if args.model else None)
        job = prepare_export(model, corpus, folder, config)
        if job.complete:
            _err(f"{folder} already holds this export, complete; nothing to do.")
        else:
            if not args.dry_run:
                job.check_disk()  # before the timed batch: a refusal should be immediate
            estimate = job.estimate(calibrate=True)
            _err(estimate.describe())
            if args.dry_run:
                if args.json:
                    print(json.dumps(estimate.as_dict(), indent=2))
                return 0
            with _term_as_interrupt():
                job.run(progress=not args.no_progress, engine=args.engine,
                        address=args.address, workers=args.workers)
    except KeyboardInterrupt as exc:
        done = Manifest.read(folder) if folder.is_dir() else None
        n = len(done.data["shards"]) if done else 0
        how = "terminated" if isinstance(exc, _Terminated) else "interrupted"
        _err(f"{how}; {n} complete shard{'s' if n != 1 else ''} kept in {folder}. Run the "
             "same command again to resume.")
        # 128 + the signal's number, as a shell reports it, so a scheduler can tell them apart.
        return 143 if isinstance(exc, _Terminated) else 130
    except (ExportError, ModelLoadError, ValueError, FileNotFoundError) as exc:
        _err(str(exc))
        return 2
    except OSError as exc:  # a full disk or a vanished folder while writing
        _err(f"{exc}. Complete shards are kept in {folder}; fix the cause and run the same "
             "command again to resume.")
        return 2
    manifest = Manifest.read(folder)
    info = summary(manifest.data, folder)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"Exported {info['documents']:,} documents ({info['tokens']:,} tokens, "
              f"{info['rows']:,} rows) into {info['shards']} shard"
              f"{'s' if info['shards'] != 1 else ''}, "
              f"{info['bytes'] / 2**20:,.1f} MiB, in {folder}")
        if info["neuron_index"]:
            print(f"Neuron index: {folder / info['neuron_index']} "
                  "(query it with `spyglass neurons`)")
    return 0
