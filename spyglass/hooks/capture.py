"""Run a model once with hooks and keep what the spec asks for.

Hooks are attached to the bridge's hook points for the length of one forward pass and
removed in a ``finally`` block, so a forward that raises leaves the model as it was; hooks
the caller added beforehand are never touched. The model's lock makes concurrent callers
take turns, since hook points are shared by everyone using the model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

import numpy as np

from spyglass.hooks.spec import CaptureSpec, layer_of, shape_of
from spyglass.hooks.trace import Trace
from spyglass.model.loader import Model, versions
from spyglass.model.tokens import Tokens

log = logging.getLogger(__name__)

_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 4}  # bfloat16 is widened for numpy


class MemoryLimitError(MemoryError):
    """The estimated size of a capture exceeds the limit the caller set."""


def estimate_bytes(model: Model, spec: CaptureSpec | None, n_tokens: int) -> int:
    """Bytes the captured arrays will take, computed from shapes before running anything."""
    spec = spec or CaptureSpec()
    size = _ITEMSIZE[model.dtype]
    return sum(
        int(np.prod(shape_of(model, name, n_tokens))) * size for name in spec.hook_names(model)
    )


def _to_numpy(tensor: Any) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()


@contextmanager
def attached(model: Model, names: list[str], keep: Callable[[str, Any], None]) -> Iterator[None]:
    """Attach one keeping hook per name; remove exactly those hooks afterwards."""
    points = model.bridge.hook_dict
    unknown = [n for n in names if n not in points]
    if unknown:
        raise ValueError(f"{model.name} has no hook points named {unknown}.")
    added = []
    try:
        for name in names:
            point = points[name]

            def hook(act: Any, hook: Any, _name: str = name) -> None:
                keep(_name, act)

            added.append((point, point.add_hook(hook)))
        yield
    finally:
        for point, handle in added:
            handle.hook.remove()
            point.fwd_hooks = [h for h in point.fwd_hooks if h is not handle]


def forward(model: Model, ids: Any, names: list[str], attention_mask: Any = None, *,
            stop_at: str | None = None, **bridge_kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """One eval-mode, gradient-free forward with keeping hooks; returns (logits, kept).

    Kept tensors still have their batch dimension. The model's training flag is restored.
    ``stop_at`` names a hook point (see :func:`stop_point`) where the forward ends; the
    first value is then that point's activation, not logits. ``bridge_kwargs`` (e.g.
    ``position_ids``) go to the bridge as given.
    """
    import torch

    kept: dict[str, Any] = {}

    def keep(name: str, act: Any) -> None:
        kept[name] = act.detach()

    bridge = model.bridge
    with model.lock:
        # Dropout must be off whatever mode the caller left the model in. Flipping only the
        # modules that are in training mode is much cheaper than bridge.eval(), which costs
        # about 30 ms on a 30-layer model, and lets us restore exactly what we changed.
        # The wrapped Hugging Face model is held outside the bridge's module tree.
        roots = [bridge, getattr(bridge, "original_model", bridge)]
        training = list({id(m): m for r in roots for m in r.modules() if m.training}.values())
        try:
            for mod in training:
                mod.training = False
            stopping = attached(model, [stop_at], _stop) if stop_at else nullcontext()
            with stopping, attached(model, names, keep), torch.inference_mode():
                if attention_mask is None:
                    logits = bridge(ids, **bridge_kwargs)
                else:
                    logits = bridge(ids, attention_mask=attention_mask, **bridge_kwargs)
        finally:
            for mod in training:
                mod.training = True
    return logits, kept


def stop_point(model: Model, names: Sequence[str]) -> str | None:
    """The hook point where nothing asked for is left to compute (``None``: run to the end).

    That is the input of the block after the last layer named, or of the final norm, so a
    forward over resid_post of every layer still skips the unembedding, which costs a
    d_model x d_vocab product per token.
    """
    if "logits" in names:
        return None
    last = max((x for x in (layer_of(n) for n in names) if x is not None), default=-1)
    point = f"blocks.{last + 1}.hook_in" if last + 1 < model.n_layers else "ln_final.hook_in"
    return point if point in model.bridge.hook_dict else None


def _stop(name: str, act: Any) -> None:
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    # The bridge catches this exception and returns its tensor instead of logits.
    raise StopAtLayerException(act)


def provenance(model: Model, tokens: Tokens, names: list[str],
               shapes: dict[str, list[int]]) -> dict[str, Any]:
    return {
        "model": model.name,
        "source": model.source,
        "dtype": model.dtype,
        "device": "cpu",
        "weight_processing": model.processing,
        "prepend_bos": tokens.bos,
        "special_tokens": tokens.special,
        "special_found": list(tokens.special_found),
        "truncation": (
            None if tokens.truncated_from is None
            else {"original_tokens": tokens.truncated_from, "kept_tokens": len(tokens)}
        ),
        "n_ctx": model.n_ctx,
        "n_tokens": len(tokens),
        "n_layers": model.n_layers,
        "n_heads": model.n_heads,
        "n_kv_heads": model.n_kv_heads,
        "kv_head_of_head": [model.kv_head_of(h) for h in range(model.n_heads)],
        "d_model": model.d_model,
        "d_head": model.d_head,
        "d_mlp": model.d_mlp,
        "d_vocab": model.d_vocab,
        "hooks": names,
        "shapes": shapes,
        "versions": versions(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def capture(
    model: Model,
    text: str | Tokens,
    spec: CaptureSpec | None = None,
    *,
    prepend_bos: bool | None = None,
    truncate: bool = False,
    special: str = "text",
    max_bytes: int | None = None,
) -> Trace:
    """Run ``model`` on ``text`` and return a :class:`Trace` of what ``spec`` keeps.

    Text is checked and cut before any forward pass. ``max_bytes`` refuses captures whose
    arrays are estimated to exceed it.
    """
    import torch

    spec = spec or CaptureSpec()
    tokens = text if isinstance(text, Tokens) else model.tokenize(
        text, prepend_bos=prepend_bos, truncate=truncate, special=special
    )
    names = spec.hook_names(model)
    if not names:
        raise ValueError(
            f"Nothing to keep: {model.name} has no hook point of kinds {list(spec.kinds)}"
            f"{f' or patterns {list(spec.patterns)}' if spec.patterns else ''} (rotary models "
            "such as Llama have no positional embedding, pos_embed). Ask for other kinds."
        )
    if max_bytes is not None:
        need = estimate_bytes(model, spec, len(tokens))
        if need > max_bytes:
            raise MemoryLimitError(
                f"Capturing {len(names)} arrays for {len(tokens):,} tokens needs about "
                f"{need / 2**20:,.1f} MiB, over the limit of {max_bytes / 2**20:,.1f} MiB. "
                "Keep fewer kinds or layers (CaptureSpec; --kinds, --layers or --hooks on the "
                "command line), shorten the text, or raise the limit (max_bytes; --max-mib)."
            )

    started = time.perf_counter()
    ids = torch.tensor([tokens.ids], dtype=torch.long)
    hooked = [n for n in names if n != "logits"]
    # Layers after the last one asked for (and the unembedding, without logits) are skipped.
    logits, kept = forward(model, ids, hooked, stop_at=stop_point(model, names))
    if "logits" in names:
        kept["logits"] = logits

    arrays = {n: _to_numpy(kept[n][0]) for n in names}
    shapes = {n: list(a.shape) for n, a in arrays.items()}
    expected = {n: list(shape_of(model, n, len(tokens))) for n in names}
    wrong = {n: (shapes[n], expected[n]) for n in names if shapes[n] != expected[n]}
    if wrong:
        # A bridge adapter that shapes a hook differently would silently break every page.
        raise RuntimeError(f"Captured shapes differ from the documented ones: {wrong}")
    log.debug("Captured %d arrays for %d tokens in %.3f s", len(arrays), len(tokens),
              time.perf_counter() - started)
    return Trace(tokens=tokens, provenance=provenance(model, tokens, names, shapes), arrays=arrays)
