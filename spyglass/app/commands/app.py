"""``spyglass app``: serve the browser app on loopback."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HOME_PAGE = Path(__file__).resolve().parent.parent / "Home.py"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="serve the browser app (http://localhost:8501)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument(
        "--address", default="127.0.0.1",
        help="interface to bind; the default keeps the app on this machine only",
    )
    p.add_argument("--model", default=None, help="model to open first (default: embedded)")
    p.set_defaults(func=run)


def command(port: int, address: str) -> list[str]:
    """The streamlit command line: loopback by default, XSRF protection on, usage stats off."""
    return [
        sys.executable, "-m", "streamlit", "run", str(HOME_PAGE),
        "--server.address", address,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.enableXsrfProtection", "true",
        "--browser.gatherUsageStats", "false",
        # A research tool run locally has nothing to deploy; keep the toolbar to its menu.
        "--client.toolbarMode", "minimal",
    ]


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.model:
        env["SPYGLASS_MODEL"] = args.model
    print(f"Spyglass: http://{'localhost' if args.address == '127.0.0.1' else args.address}"
          f":{args.port}  (Ctrl-C stops it)", flush=True)
    return subprocess.call(command(args.port, args.address), env=env)
