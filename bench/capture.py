"""Capture cost on the embedded model, measured side by side in one run.

For 128 and 512 tokens it times, in interleaved rounds so machine noise hits all of them
alike: a plain Hugging Face forward (eager attention, no hooks), TransformerLens's
``run_with_cache`` with no filter, and Spyglass's full capture. It prints each one's median
time as a ratio to the plain forward, the peak memory each adds over the idle process, and
the capture's memory estimate against the bytes its arrays really take.

Memory is measured in a fresh process per method and size: inside one process, memory a
method freed stays mapped and would hide the next method's peak.

Run: ``.venv/bin/python bench/capture.py [--rounds 7]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psutil
import torch

from spyglass.hooks import capture, estimate_bytes
from spyglass.model import embedded, load_model

SEED_TEXT = (
    "The river ran past the old mill, where the miller's daughter counted sacks of grain "
    "and watched the boats drift toward the sea. "
)


class PeakRss:
    """Samples the process's resident memory every 2 ms while active."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def added(self) -> int:
        return self.peak - self.base


def text_of(model, n_tokens: int):
    text = SEED_TEXT
    while len(model.tokenize(text)) < n_tokens:
        text += SEED_TEXT
    tokens = model.tokenize(text)
    # Cut on a token boundary so every method sees exactly n_tokens positions.
    end = tokens.spans[n_tokens - 1][1]
    return model.tokenize(text[:end])


def build(n_tokens: int):
    from transformers import AutoModelForCausalLM

    torch.set_grad_enabled(False)
    model = load_model()
    plain = AutoModelForCausalLM.from_pretrained(
        str(embedded.prepared_dir()), attn_implementation="eager"
    ).eval()
    tokens = text_of(model, n_tokens)
    if len(tokens) != n_tokens:
        raise RuntimeError(f"wanted {n_tokens} tokens, got {len(tokens)}")
    methods = {
        "plain HF forward": lambda t: plain(torch.tensor([t.ids])).logits,
        "TL run_with_cache": lambda t: model.bridge.run_with_cache(torch.tensor([t.ids])),
        "spyglass capture": lambda t: capture(model, t),
    }
    return model, tokens, methods


def memory_probe(method: str, n_tokens: int) -> None:
    """In a fresh process: the memory one call of ``method`` adds, printed as JSON."""
    model, tokens, methods = build(n_tokens)
    # The weights are memory-mapped from safetensors: the first forward pages in ~0.5 GiB of
    # them. A short warm-up call pays that, so the peak below is the method's own memory.
    warm = model.tokenize(SEED_TEXT[:40])
    methods[method](warm)
    gc.collect()
    with PeakRss() as rss:
        result = methods[method](tokens)
    del result
    print(json.dumps({"added": rss.added}))


def peak_in_fresh_process(method: str, n_tokens: int) -> int:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-probe", method, "--sizes", str(n_tokens)],
        check=True, capture_output=True, text=True,
    ).stdout
    return int(json.loads(out.strip().splitlines()[-1])["added"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe, args.sizes[0])
        return

    print(f"torch threads: {torch.get_num_threads()}, rounds: {args.rounds}")
    for n in args.sizes:
        model, tokens, methods = build(n)
        times: dict[str, list[float]] = {k: [] for k in methods}
        for fn in methods.values():  # warm-up
            fn(tokens)
        for _ in range(args.rounds):
            for name, fn in methods.items():
                gc.collect()
                started = time.perf_counter()
                result = fn(tokens)
                times[name].append(time.perf_counter() - started)
                del result
        base = statistics.median(times["plain HF forward"])
        print(f"\n{n} tokens")
        print(f"  {'method':<20} {'median s':>9} {'min s':>7} {'ratio':>6} {'peak +MiB':>10}")
        for name in methods:
            med = statistics.median(times[name])
            peak = peak_in_fresh_process(name, n)
            print(f"  {name:<20} {med:9.3f} {min(times[name]):7.3f} {med / base:6.2f} "
                  f"{peak / 2**20:10.0f}")
        trace = capture(model, tokens)
        est = estimate_bytes(model, None, n)
        print(f"  estimate {est / 2**20:.1f} MiB vs arrays {trace.nbytes / 2**20:.1f} MiB "
              f"(ratio {est / trace.nbytes:.3f})")
        del trace, model, methods
        gc.collect()


if __name__ == "__main__":
    main()
