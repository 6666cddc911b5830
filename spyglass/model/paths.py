"""Where Spyglass keeps prepared models and tokenizer files; how files are hashed and written.

Every file Spyglass writes goes to a temporary name beside its target and is renamed into
place only once complete, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not atomic; a fallback only)
    os.umask(mask)
    return mask


def usual_permissions(path: Path) -> None:
    """Give ``path`` (and, for a folder, all within) the modes a plain ``open`` or ``mkdir``
    would, under the umask: temp files from ``mkstemp``/``mkdtemp`` and safetensors' own
    writer are private (0600/0700), which would hide a shared cache or results folder."""
    mask = _umask()
    path = Path(path)
    if path.is_dir():
        for root, _dirs, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (the folder's entry list is data too)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success fsync and rename it over.

    After a crash, ``path`` is absent, its old version, or complete; never partial. If the
    block raises, the temporary file is removed and ``path`` is untouched. The file gets
    the usual permissions under the process's umask, whatever wrote it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and thread id keep concurrent writers of the same target from sharing a temp file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        usual_permissions(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def durable_write(path: Path, write: Callable[[Any], None]) -> None:
    """``write(fh)`` to a binary file handle, durably and atomically (see :func:`replacing`)."""
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
