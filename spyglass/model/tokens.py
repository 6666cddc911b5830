"""Cutting text into tokens, with labels that are faithful to the bytes of the text.

Byte-level BPE tokenizers (GPT-2, SmolLM2, ...) can split one character across two tokens:
the three UTF-8 bytes of a curly quote may land as two bytes in one token and one in the
next. Decoding each token on its own then yields U+FFFD, which hides what the model saw.
Here every position keeps the exact bytes it covers, and its label shows any bytes that do
not form whole characters as hex, e.g. ``⟨e2 80⟩``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

SPECIAL_MODES = ("text", "special")


class ContextLengthError(ValueError):
    """The text has more tokens than the model reads."""


def _byte_decoder() -> dict[str, int]:
    # GPT-2's byte-level alphabet: every byte maps to one printable character. We rebuild the
    # inverse here rather than import a private helper whose module moves between versions.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=False)}


_BYTE_DECODER = _byte_decoder()


def label_for(piece: bytes) -> str:
    """A readable label for the bytes of one token.

    Whole UTF-8 characters are shown as themselves; bytes that belong to a character split
    across tokens are shown as hex between angle brackets, never as U+FFFD.
    """
    text = piece.decode("utf-8", errors="surrogateescape")
    out: list[str] = []
    stray: list[str] = []
    for ch in text:
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            stray.append(f"{ord(ch) - 0xDC00:02x}")
            continue
        if stray:
            out.append("⟨" + " ".join(stray) + "⟩")
            stray = []
        out.append(ch)
    if stray:
        out.append("⟨" + " ".join(stray) + "⟩")
    return "".join(out)


@dataclass(frozen=True)
class Tokens:
    """How one text was cut: ids, the bytes and label of each position, and character spans.

    ``pieces[i]`` are the bytes of the text that position i stands for (empty for a
    prepended beginning-of-sequence token); joined they give back the text's UTF-8 bytes.
    ``spans[i]`` is the half-open character range of the text that position i touches.
    """

    text: str
    ids: tuple[int, ...]
    pieces: tuple[bytes, ...]
    labels: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]
    bos: bool
    tokenizer: str
    special: str = "text"
    special_found: tuple[str, ...] = ()
    truncated_from: int | None = None
    faithful: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def text_bytes(self) -> bytes:
        """The bytes covered by the positions, in order (BOS contributes none)."""
        return b"".join(self.pieces)

    def to_json(self) -> str:
        data = asdict(self)
        data["pieces"] = [p.hex() for p in self.pieces]
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> Tokens:
        data = json.loads(raw)
        data["pieces"] = tuple(bytes.fromhex(p) for p in data["pieces"])
        data["ids"] = tuple(data["ids"])
        data["labels"] = tuple(data["labels"])
        data["spans"] = tuple(tuple(s) for s in data["spans"])
        data["special_found"] = tuple(data.get("special_found", ()))
        tokens = cls(**data)
        if not (len(tokens.ids) == len(tokens.labels) == len(tokens.pieces) == len(tokens.spans)):
            raise ValueError(
                "Token record is inconsistent: ids, labels, pieces and spans have lengths "
                f"{len(tokens.ids)}, {len(tokens.labels)}, {len(tokens.pieces)}, "
                f"{len(tokens.spans)}; they must be equal."
            )
        return tokens


def check_text(text: object) -> str:
    """Refuse text that cannot be traced, before any forward pass."""
    if not isinstance(text, str):
        raise TypeError(f"Text must be a str, got {type(text).__name__}.")
    if text == "":
        raise ValueError("Text is empty: there is nothing to tokenize. Type some text first.")
    if text.strip() == "":
        raise ValueError(
            f"Text is only whitespace ({len(text)} characters): the model would see no words. "
            "Type some text first."
        )
    return text


def char_spans(text: str, pieces: list[bytes]) -> list[tuple[int, int]]:
    # Map each byte of the UTF-8 text to the index of the character that owns it, so a
    # token that starts or ends inside a character still gets that character in its span.
    owner: list[int] = []
    for i, ch in enumerate(text):
        owner.extend([i] * len(ch.encode("utf-8")))
    spans = []
    pos = 0
    for piece in pieces:
        if not piece:
            spans.append((owner[pos] if pos < len(owner) else len(text),) * 2)
            continue
        start = owner[pos]
        end = owner[pos + len(piece) - 1] + 1
        spans.append((start, end))
        pos += len(piece)
    return spans


def _special_strings(tokenizer: Any) -> list[str]:
    found = set(getattr(tokenizer, "all_special_tokens", []) or [])
    added = getattr(tokenizer, "get_added_vocab", None)
    if added is not None:
        found.update(added().keys())
    return sorted((s for s in found if s), key=len, reverse=True)


def piece_bytes(tokenizer: Any, ids: list[int]) -> tuple[list[bytes], bool]:
    """The text bytes each id stands for, and whether that mapping is exact."""
    strings = tokenizer.convert_ids_to_tokens(ids)
    special = set(_special_strings(tokenizer))
    pieces = []
    exact = True
    for s in strings:
        if s in special:
            pieces.append(s.encode("utf-8"))
        elif s and all(ch in _BYTE_DECODER for ch in s):
            pieces.append(bytes(_BYTE_DECODER[ch] for ch in s))
        elif len(s) == 6 and s.startswith("<0x") and s.endswith(">"):
            # SentencePiece byte fallback, e.g. <0xE2>.
            pieces.append(bytes([int(s[3:5], 16)]))
        else:
            # Limitation: SentencePiece-style pieces are mapped by replacing the word-start
            # marker with a space; tokenizers that normalize text (lower-casing, NFKC) cannot
            # be inverted this way, and the result is flagged as not faithful.
            exact = False
            pieces.append(s.replace("▁", " ").encode("utf-8"))
    return pieces, exact


def tokenize(
    tokenizer: Any,
    text: str,
    *,
    prepend_bos: bool,
    n_ctx: int,
    truncate: bool = False,
    special: str = "text",
    model_name: str = "model",
) -> Tokens:
    """Cut ``text`` with a Hugging Face tokenizer into a :class:`Tokens` record.

    ``special="text"`` (the default) keeps strings such as ``<|endoftext|>`` as ordinary
    text; ``"special"`` turns them into the special token. The choice and any special
    strings found in the text are recorded either way.
    """
    check_text(text)
    if special not in SPECIAL_MODES:
        raise ValueError(f"special must be one of {SPECIAL_MODES}, got {special!r}.")

    found = [s for s in _special_strings(tokenizer) if s in text]
    encoded = tokenizer(
        text,
        add_special_tokens=False,
        split_special_tokens=(special == "text"),
    )
    ids = list(encoded["input_ids"])
    pieces, exact = piece_bytes(tokenizer, ids)
    if exact and b"".join(pieces) != text.encode("utf-8"):
        exact = False
    if exact:
        spans = char_spans(text, pieces)
    else:
        log.warning("Tokenizer %s is not byte-level; labels come from token strings.", model_name)
        offsets = tokenizer(
            text, add_special_tokens=False, split_special_tokens=(special == "text"),
            return_offsets_mapping=True,
        )["offset_mapping"]
        spans = [tuple(o) for o in offsets]

    if prepend_bos:
        bos_id = tokenizer.bos_token_id
        if bos_id is None:
            raise ValueError(
                f"{model_name}'s tokenizer has no beginning-of-sequence token; "
                "call again with prepend_bos=False."
            )
        ids = [bos_id, *ids]
        pieces = [b"", *pieces]
        spans = [(0, 0), *list(spans)]

    truncated_from = None
    if len(ids) > n_ctx:
        if not truncate:
            raise ContextLengthError(
                f"Text has {len(ids):,} tokens but {model_name} reads at most {n_ctx:,}. "
                f"Shorten the text, or keep only its first {n_ctx:,} tokens (truncate=True; "
                "--truncate on the command line)."
            )
        truncated_from = len(ids)
        ids, pieces, spans = ids[:n_ctx], pieces[:n_ctx], spans[:n_ctx]
        log.info("Truncated %d tokens to %d for %s", truncated_from, n_ctx, model_name)

    labels = [label_for(p) for p in pieces]
    if prepend_bos:
        labels[0] = tokenizer.bos_token
    return Tokens(
        text=text,
        ids=tuple(ids),
        pieces=tuple(pieces),
        labels=tuple(labels),
        spans=tuple(tuple(s) for s in spans),
        bos=prepend_bos,
        tokenizer=model_name,
        special=special,
        special_found=tuple(found),
        truncated_from=truncated_from,
        faithful=exact,
    )
