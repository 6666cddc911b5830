"""``spyglass app``: serve the browser app on loopback."""

from __future__ import annotations

import argparse
import os
import socket
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


def port_free(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.model:
        env["SPYGLASS_MODEL"] = args.model
    if not port_free(args.address, args.port):
        print(f"spyglass app: {args.address}:{args.port} is already in use (another app "
              "running?). Stop it, or pick another port with --port.", file=sys.stderr)
        return 1
    print(f"Spyglass: http://{'localhost' if args.address == '127.0.0.1' else args.address}"
          f":{args.port}  (Ctrl-C stops it)", flush=True)
    # Become the server rather than wait on it: a `kill` of this process then stops Streamlit
    # itself, instead of leaving it running and holding the port.
    argv = command(args.port, args.address)
    os.execve(argv[0], argv, env)
    return 0  # not reached
