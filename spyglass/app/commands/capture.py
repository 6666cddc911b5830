"""``spyglass capture``: trace one text and save it with its provenance."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from spyglass.hooks import ALL_KINDS, CaptureSpec, MemoryLimitError, capture, estimate_bytes
from spyglass.hooks.trace import format_for_path
from spyglass.model import ModelLoadError, ModelSource, check_text, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("capture", help="trace one text; save its activations and provenance")
    p.add_argument("text", help="the text to trace ('-' reads standard input)")
    p.add_argument("--model", default="smollm2-135m", help="embedded, hub id or folder")
    p.add_argument("--out", help="write the trace here (.safetensors or .npz)")
    p.add_argument("--kinds", nargs="+", choices=ALL_KINDS, default=list(ALL_KINDS),
                   metavar="KIND", help=f"what to keep (default all): {', '.join(ALL_KINDS)}")
    p.add_argument("--layers", nargs="+", type=int, help="layers to keep (default all)")
    p.add_argument("--hooks", nargs="+", metavar="PATTERN",
                   help="hook names or patterns instead of --kinds, "
                   "e.g. 'blocks.*.hook_resid_post'")
    bos = p.add_mutually_exclusive_group()
    bos.add_argument("--bos", dest="bos", action="store_true", default=None,
                     help="prepend the beginning-of-sequence token")
    bos.add_argument("--no-bos", dest="bos", action="store_false",
                     help="do not prepend it (default: as the model's tokenizer does)")
    p.add_argument("--truncate", action="store_true", help="keep the first n_ctx tokens")
    p.add_argument("--special", choices=("text", "special"), default="text",
                   help="whether special-token strings in the text become special tokens")
    p.add_argument("--max-mib", type=float,
                   help="refuse captures estimated above this size (default: half the memory "
                   "available when the command starts)")
    p.add_argument("--top", type=int, default=10, help="next-token candidates to show")
    p.add_argument("--show", type=int, default=SHOW_TOKENS, metavar="N",
                   help=f"token labels to print before eliding the rest (default {SHOW_TOKENS}; "
                   "--json prints all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


SHOW_TOKENS = 64


def token_line(labels: list[str], show: int) -> str:
    """Labels joined for a terminal; a long text shows its head and tail, not 8,000 labels."""
    if show <= 0 or len(labels) <= show:
        return " | ".join(map(repr, labels))
    head, tail = labels[: show - show // 4], labels[len(labels) - show // 4:]
    hidden = len(labels) - len(head) - len(tail)
    return (" | ".join(map(repr, head)) + f" | ... {hidden:,} more ... | "
            + " | ".join(map(repr, tail)))


def default_limit() -> int:
    """Half the memory available now: a capture of a long text can need hundreds of GiB
    (every layer's attention scores grow with the square of its length), and being refused
    beats being killed by the kernel."""
    import psutil

    return psutil.virtual_memory().available // 2


def top_next(model, logits: np.ndarray, k: int) -> list[dict]:
    shifted = logits - logits.max()
    probs = np.exp(shifted) / np.exp(shifted).sum()
    order = np.argsort(-probs)[:k]
    return [
        {"id": int(i), "token": model.tokenizer.decode([int(i)]), "prob": float(probs[i])}
        for i in order
    ]


def run(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    try:
        check_text(text)  # before the model loads: a typo should not cost ten seconds
        if args.out:
            format_for_path(Path(args.out))
    except ValueError as exc:
        print(f"spyglass capture: {exc}", file=sys.stderr)
        return 1
    if args.hooks and (args.layers or args.kinds != list(ALL_KINDS)):
        print("spyglass capture: give either --hooks or --kinds/--layers, not both: --hooks "
              "names exactly what to keep.", file=sys.stderr)
        return 2
    spec = (CaptureSpec.from_patterns(args.hooks) if args.hooks
            else CaptureSpec(kinds=tuple(args.kinds), layers=args.layers))
    try:
        model = load_model(ModelSource(name=args.model))
        tokens = model.tokenize(text, prepend_bos=args.bos, truncate=args.truncate,
                                special=args.special)
        need = estimate_bytes(model, spec, len(tokens))
        limit = default_limit() if args.max_mib is None else int(args.max_mib * 2**20)
        trace = capture(model, tokens, spec, max_bytes=limit)
    except (ModelLoadError, MemoryLimitError, ValueError) as exc:
        print(f"spyglass capture: {exc}", file=sys.stderr)
        return 1
    try:
        path = trace.save(args.out) if args.out else None
    except OSError as exc:
        print(f"spyglass capture: could not write {args.out}: {exc.strerror or exc}. Nothing "
              "was written there; free some space or choose another path.", file=sys.stderr)
        return 1
    summary = {
        "model": model.name,
        "tokens": list(trace.labels),
        "ids": list(trace.tokens.ids),
        "n_arrays": len(trace.names),
        "estimated_bytes": need,
        "bytes": trace.nbytes,
        "saved": str(path) if path else None,
        "provenance": trace.provenance,
    }
    if "logits" in trace:
        summary["next"] = top_next(model, trace["logits"][-1], args.top)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
        return 0
    print(f"{model.name}: {len(trace.labels)} tokens: {token_line(trace.labels, args.show)}")
    print(f"{len(trace.names)} arrays, {trace.nbytes / 2**20:.1f} MiB"
          + (f", saved to {path}" if path else ""))
    for row in summary.get("next", []):
        print(f"  {row['prob']:7.2%}  {row['token']!r}")
    return 0
