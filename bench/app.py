"""Server-side cost of the browser app on the embedded model, measured in one run.

The pages run exactly as the server runs them, through Streamlit's AppTest (no browser, no
network), in this one process. It prints:

- the time to switch the Attention page to another head (target <= 150 ms) and how many
  forward passes that ran (target 0);
- the time to trace a new 64-token text: the capture alone and the whole Home page rerun
  (target <= 1.5 s);
- resident memory with three sessions open on three different texts (measured first, on a
  fresh process), against the process with the model loaded and no session, and the peak.

With ``--long`` it also traces a text of about 1,100 tokens and times a head switch on it.

Run: ``.venv/bin/python bench/app.py [--rounds 5] [--long]``
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("SPYGLASS_MODEL", None)  # the embedded model

import psutil
from streamlit.testing.v1 import AppTest

import spyglass.app
from spyglass.app import state

APP = Path(spyglass.app.__file__).resolve().parent
WORDS = (
    "the", "river", "ran", "past", "an", "old", "mill", "where", "a", "miller", "counted",
    "sacks", "of", "grain", "and", "watched", "boats", "drift", "toward", "the", "sea",
    "while", "gulls", "cried", "over", "quiet", "water",
)
MiB = 2**20


def text_of(n_tokens: int, seed: int) -> str:
    """A text of exactly ``n_tokens`` tokens on the embedded model (no BOS)."""
    rng = random.Random(seed)
    model = state._load_cached(state.EMBEDDED_NAME)
    words = [rng.choice(WORDS) for _ in range(n_tokens * 2)]
    ids = model.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][:n_tokens]
    text = model.tokenizer.decode(ids)
    assert len(model.tokenize(text)) == n_tokens, "the cut text must re-tokenize the same"
    return text


def open_page(name: str, text: str) -> AppTest:
    path = APP / name if name == "Home.py" else APP / "pages" / name
    at = AppTest.from_file(str(path), default_timeout=600)
    at.query_params.update({"text": text})
    at.run()
    if at.exception or at.error:
        raise RuntimeError(f"{name} failed: {at.exception or [e.value for e in at.error]}")
    return at


def count_forwards() -> dict[str, int]:
    module = sys.modules["spyglass.hooks.capture"]
    real = module.forward
    count = {"n": 0}

    def counting(*args, **kwargs):
        count["n"] += 1
        return real(*args, **kwargs)

    module.forward = counting
    return count


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:7.1f} ms (min {min(samples) * 1000:.1f})"


def bench_head_switch(text: str, rounds: int, forwards: dict[str, int]) -> list[float]:
    at = open_page("1_Attention.py", text)
    slider = "sg:w:head"
    before = forwards["n"]
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        at.sidebar.slider(key=slider).set_value((i + 1) % 9).run()
        times.append(time.perf_counter() - started)
    assert not at.exception
    return times, forwards["n"] - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--long", action="store_true", help="also time a 1,100-token text")
    args = parser.parse_args()
    proc = psutil.Process()

    started = time.perf_counter()
    model = state._load_cached(state.EMBEDDED_NAME)
    print(f"model {model.name} loaded (with warm-up) in {time.perf_counter() - started:.1f} s")
    forwards = count_forwards()

    # 1. Three sessions on three texts, each on a different page.
    gc.collect()
    before = proc.memory_info().rss
    sessions = [open_page(name, text_of(64, 400 + i)) for i, name in
                enumerate(("Home.py", "1_Attention.py", "5_Logit_lens.py"))]
    gc.collect()
    rss = proc.memory_info().rss
    held = sum(t.nbytes for t in state.TRACES._items.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"three sessions open:         RSS {rss / MiB:,.0f} MiB, +{(rss - before) / MiB:,.0f} "
          f"MiB over the process with the model and no session; their traces hold "
          f"{held / MiB:,.0f} MiB; peak RSS {peak / MiB:,.0f} MiB; {len(sessions)} sessions, "
          f"model loads {state.LOADS}")

    # 2. Switching head on the Attention page.
    times, ran = bench_head_switch(text_of(64, 0), args.rounds, forwards)
    print(f"head switch, 64 tokens:      {median_ms(times)}   target <= 150 ms   "
          f"ratio {statistics.median(times) / 0.150:.2f}   forward passes {ran}")

    # 3. A new 64-token text: the capture alone, then the whole Home page rerun.
    capture_times, page_times = [], []
    for i in range(args.rounds):
        text = text_of(64, 100 + i)
        started = time.perf_counter()
        state.get_trace(model, text, False)
        capture_times.append(time.perf_counter() - started)
    home = open_page("Home.py", text_of(64, 200))
    for i in range(args.rounds):
        home.sidebar.text_area[0].set_value(text_of(64, 300 + i))
        started = time.perf_counter()
        home.run()
        page_times.append(time.perf_counter() - started)
    print(f"new 64-token text, capture:  {median_ms(capture_times)}   target <= 1500 ms   "
          f"ratio {statistics.median(capture_times) / 1.5:.2f}")
    print(f"new 64-token text, Home run: {median_ms(page_times)}   target <= 1500 ms   "
          f"ratio {statistics.median(page_times) / 1.5:.2f}")

    if args.long:
        text = text_of(1100, 500)
        started = time.perf_counter()
        trace = state.get_trace(model, text, False)
        print(f"1,100-token trace:           {time.perf_counter() - started:7.1f} s, "
              f"{trace.nbytes / MiB:,.0f} MiB kept, dropped {trace.dropped or 'nothing'}")
        times, ran = bench_head_switch(text, args.rounds, forwards)
        print(f"head switch, 1,100 tokens:   {median_ms(times)}   forward passes {ran}")


if __name__ == "__main__":
    main()
