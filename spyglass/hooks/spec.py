"""What a capture keeps: one dataclass, validated in one place."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

# Each kind of activation, the hook name it is captured under (TransformerLens's canonical
# names; ``{L}`` is the layer) and its shape with the batch dimension removed.
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "embed": ("hook_embed", ("pos", "d_model")),
    "pos_embed": ("hook_pos_embed", ("pos", "d_model")),
    "resid_pre": ("blocks.{L}.hook_resid_pre", ("pos", "d_model")),
    "q": ("blocks.{L}.attn.hook_q", ("pos", "n_heads", "d_head")),
    "k": ("blocks.{L}.attn.hook_k", ("pos", "n_kv_heads", "d_head")),
    "v": ("blocks.{L}.attn.hook_v", ("pos", "n_kv_heads", "d_head")),
    "attn_scores": ("blocks.{L}.attn.hook_attn_scores", ("n_heads", "pos", "pos")),
    "pattern": ("blocks.{L}.attn.hook_pattern", ("n_heads", "pos", "pos")),
    "resid_mid": ("blocks.{L}.hook_resid_mid", ("pos", "d_model")),
    "mlp_pre": ("blocks.{L}.mlp.hook_pre", ("pos", "d_mlp")),
    "mlp_post": ("blocks.{L}.mlp.hook_post", ("pos", "d_mlp")),
    "resid_post": ("blocks.{L}.hook_resid_post", ("pos", "d_model")),
    "logits": ("logits", ("pos", "d_vocab")),
}
ALL_KINDS: tuple[str, ...] = tuple(KINDS)


@dataclass(frozen=True)
class CaptureSpec:
    """Which activations to keep, and at which layers.

    ``kinds`` names entries of :data:`KINDS`; ``layers=None`` means every layer. ``patterns``
    (shell-style, e.g. ``blocks.*.hook_resid_post``) select hook names instead of kinds when
    given. The default keeps everything the model computes that :data:`KINDS` lists.
    """

    kinds: tuple[str, ...] = ALL_KINDS
    layers: tuple[int, ...] | None = None
    patterns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "patterns", tuple(self.patterns))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"Unknown activation kinds {unknown}; choose from {list(KINDS)}.")
        if not self.kinds and not self.patterns:
            raise ValueError("CaptureSpec keeps nothing: give at least one kind or pattern.")

    @classmethod
    def from_patterns(cls, patterns: list[str] | tuple[str, ...]) -> CaptureSpec:
        return cls(kinds=(), patterns=tuple(patterns))

    def check_layers(self, n_layers: int) -> tuple[int, ...]:
        if self.layers is None:
            return tuple(range(n_layers))
        bad = [x for x in self.layers if not 0 <= x < n_layers]
        if bad:
            raise ValueError(
                f"Layers {bad} do not exist: the model has {n_layers} layers, 0 to {n_layers - 1}."
            )
        return tuple(sorted(set(self.layers)))

    def hook_names(self, model: Any) -> list[str]:
        """The canonical hook names this spec keeps on ``model``, in forward order."""
        layers = self.check_layers(model.n_layers)
        candidates = all_hook_names(model, layers)
        if self.patterns:
            every = all_hook_names(model, tuple(range(model.n_layers)))
            chosen = [n for n in every if any(fnmatch.fnmatchcase(n, p) for p in self.patterns)]
            unmatched = [
                p for p in self.patterns if not any(fnmatch.fnmatchcase(n, p) for n in every)
            ]
            if unmatched:
                raise ValueError(
                    f"Hook patterns {unmatched} match no hook of {model.name}; names look like "
                    "'blocks.3.hook_resid_post' or 'blocks.*.mlp.hook_post'."
                )
            if self.layers is not None:
                chosen = [n for n in chosen if layer_of(n) is None or layer_of(n) in layers]
            return chosen
        wanted = {
            KINDS[k][0].replace("{L}", str(layer)) for k in self.kinds for layer in layers
        }
        return [n for n in candidates if n in wanted]


def layer_of(name: str) -> int | None:
    if name.startswith("blocks."):
        return int(name.split(".")[1])
    return None


def kind_of(name: str) -> str:
    for kind, (template, _) in KINDS.items():
        head, _, tail = template.partition("{L}")
        if name == template or (tail and name.startswith(head) and name.endswith(tail)):
            return kind
    raise KeyError(name)


def all_hook_names(model: Any, layers: tuple[int, ...]) -> list[str]:
    """Every capturable name on this model for these layers, in forward order."""
    names = ["hook_embed"]
    if model.has_pos_embed:
        names.append("hook_pos_embed")
    per_layer = [t for k, (t, _) in KINDS.items() if "{L}" in t]
    for layer in layers:
        names.extend(t.replace("{L}", str(layer)) for t in per_layer)
    names.append("logits")
    return names


def shape_of(model: Any, name: str, n_pos: int) -> tuple[int, ...]:
    dims = {
        "pos": n_pos,
        "d_model": model.d_model,
        "n_heads": model.n_heads,
        "n_kv_heads": model.n_kv_heads,
        "d_head": model.d_head,
        "d_mlp": model.d_mlp,
        "d_vocab": model.d_vocab,
    }
    return tuple(dims[d] for d in KINDS[kind_of(name)][1])
