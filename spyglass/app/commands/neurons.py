"""``spyglass neurons``: the contexts that most activate one MLP neuron of a corpus export."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EPILOG = """examples:
  spyglass neurons exports/sotu --layer 6 --neuron 113
  spyglass neurons exports/sotu --layer 6 --neuron 113 --top 5 --json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "neurons", help="max-activating contexts of one MLP neuron in a corpus export",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("folder", help="an export folder written by `spyglass export` with "
                   "blocks.L.mlp.hook_post hooks")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--neuron", type=int, required=True)
    p.add_argument("--top", type=int, default=20, help="how many contexts (default 20)")
    p.add_argument("--context", type=int, default=12, metavar="N",
                   help="tokens of context on the left (half as many on the right)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def printable(text: str) -> str:
    """Text safe for one terminal line: control characters (escape sequences, newlines,
    tabs) shown as escapes, so corpus text cannot move the cursor or recolour the screen."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\n":
            out.append("↵")
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return "".join(out)


def highlight(row: dict[str, Any], color: bool) -> str:
    token = printable(row["token"])
    marked = f"\x1b[1;7m{token}\x1b[0m" if color else f"[[{token}]]"
    return f"{printable(row['left'])}{marked}{printable(row['right'])}"


def run(args: argparse.Namespace) -> int:
    from spyglass.hooks.store import ExportError
    from spyglass.probes.neurons import top_contexts

    try:
        rows = top_contexts(args.folder, args.layer, args.neuron, args.top,
                            left=args.context, right=max(1, args.context // 2))
    except (ExportError, ValueError, KeyError) as exc:
        print(f"spyglass neurons: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"folder": args.folder, "layer": args.layer, "neuron": args.neuron,
                          "rows": rows}, indent=2, ensure_ascii=False))
        return 0
    color = sys.stdout.isatty()
    print(f"Layer {args.layer}, neuron {args.neuron}: top {len(rows)} activations "
          f"in {args.folder}")
    print(f"{'rank':>4} {'value':>9} {'doc':>7} {'pos':>6}  context")
    for rank, row in enumerate(rows, start=1):
        print(f"{rank:>4} {row['value']:>9.4f} {row['doc']:>7} {row['position']:>6}  "
              f"{highlight(row, color)}")
    return 0
