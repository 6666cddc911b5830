"""Where Spyglass keeps prepared models and tokenizer files, and how files are fingerprinted."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def spyglass_home() -> Path:
    """The cache folder: ``$SPYGLASS_HOME``, or ``~/.cache/spyglass``."""
    env = os.environ.get("SPYGLASS_HOME")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "spyglass"
    return root


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks so multi-GB weights do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
