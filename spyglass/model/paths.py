"""Where Spyglass keeps prepared models and tokenizer files."""

from __future__ import annotations

import os
from pathlib import Path


def spyglass_home() -> Path:
    """The cache folder: ``$SPYGLASS_HOME``, or ``~/.cache/spyglass``."""
    env = os.environ.get("SPYGLASS_HOME")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "spyglass"
    return root
