"""``spyglass models``: what can be loaded here, and from where."""

from __future__ import annotations

import argparse
import json

from spyglass.model import embedded


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the embedded model and how to name others")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def describe() -> list[dict]:
    return [
        {
            "name": embedded.EMBEDDED_NAME,
            "kind": "embedded",
            "prepared": embedded.is_prepared(),
            "where": str(embedded.prepared_dir()),
            "license": embedded.LICENSE,
            "note": "SmolLM2-135M-Instruct from PyPI "
            f"{embedded.PACKAGE}=={embedded.PACKAGE_VERSION}",
        },
        {"name": "random:gpt2", "kind": "random", "note": "tiny random GPT-2 for tests"},
        {"name": "random:llama", "kind": "random", "note": "tiny random Llama (GQA) for tests"},
        {"name": "<hub id>", "kind": "hub",
         "note": "any causal LM TransformerBridge supports, e.g. gpt2; needs the hub or its cache"},
        {"name": "<folder>", "kind": "folder",
         "note": "a Hugging Face folder with config.json, *.safetensors and tokenizer files"},
    ]


def run(args: argparse.Namespace) -> int:
    rows = describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']:<16} {row['kind']:<9} {row['note']}")
    return 0
