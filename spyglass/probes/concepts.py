"""Representations of a word, how they are pooled, and how near two of them are.

A word has two kinds of representation here:

- its row(s) in the token-embedding matrix (:func:`embedding_vectors`), static;
- in context, the residual stream after every block at the word's tokens inside sentences
  (:func:`context_vectors`, :func:`context_vectors_many`), either the caller's own
  sentences or neutral templates such as ``"I keep thinking about {x}."``.

Byte-level tokenizers cut a word differently at the start of a text (``SpongeBob`` →
``Sp|onge|Bob``) and after a space (`` SpongeBob`` → `` Sp|onge|Bob``). In context the
tokens used are found from the character spans of the tokenized sentence, so the form that
actually occurs is the one probed; every result records which tokens were pooled and how.

Similarities are cosine (raw, or after subtracting a reference mean: most residual vectors
share a large common direction, which makes raw cosines of unrelated words high) or
Euclidean distance. Nothing here decides whether a number is large: see
:mod:`spyglass.probes.baselines` for controls.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from spyglass.model.loader import Model
from spyglass.model.tokens import Tokens
from spyglass.probes.lens import token_labels

log = logging.getLogger(__name__)

POOLS = ("mean", "last", "first")
METRICS = ("cosine", "euclidean")
PLACEHOLDER = "{x}"
# Neutral frames: the word follows a space mid-sentence, as most words occur in running text.
DEFAULT_TEMPLATES = (
    "I keep thinking about {x}.",
    "Here is a short note about {x}.",
    "We talked about {x} for a while.",
    "She mentioned {x} again today.",
    "This page is about {x}.",
)
# Tokens per forward pass when batching contexts: ~1 s on the embedded model on 2 cores.
BATCH_TOKENS = 1024

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Occurrence:
    """Where a word sits in one context and which token positions stand for it.

    ``exact`` is False when a token that covers the word also covers characters around it
    (other than one leading space), e.g. a tokenizer that glues punctuation to the word.
    """

    context: str
    start: int
    end: int
    positions: tuple[int, ...]
    labels: tuple[str, ...]
    exact: bool


@dataclass(frozen=True)
class WordTokens:
    """The string a word was looked up as (``form``) and the tokens it became."""

    word: str
    form: str
    ids: tuple[int, ...]
    labels: tuple[str, ...]


def pooling_note(labels: Sequence[str], pool: str) -> str:
    """One line saying how a word's tokens were combined, e.g. for a table header."""
    shown = "|".join(repr(x) for x in labels)
    if len(labels) == 1:
        return f"1 token {shown}"
    how = {"mean": "mean of their vectors", "last": "last token's vector",
           "first": "first token's vector"}[pool]
    return f"{len(labels)} tokens {shown}, pooled by {how}"


def _check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}.")


def _pool_rows(rows: np.ndarray, pool: str) -> np.ndarray:
    """Pool ``[token, ...]`` rows into one ``[...]`` vector."""
    if pool == "mean":
        return rows.mean(axis=0)
    return rows[-1] if pool == "last" else rows[0]


def word_form(word: str, leading_space: bool = True) -> str:
    """The string looked up for a word on its own: mid-sentence form by default."""
    word = word.strip()
    if not word:
        raise ValueError("The word is empty or only whitespace; give a word to probe.")
    return f" {word}" if leading_space else word


def word_tokens(model: Model, word: str, leading_space: bool = True) -> WordTokens:
    """How ``model`` cuts a word on its own, with or without the leading space."""
    form = word_form(word, leading_space)
    ids = model.tokenizer(form, add_special_tokens=False)["input_ids"]
    return WordTokens(word=word.strip(), form=form, ids=tuple(ids),
                      labels=tuple(token_labels(model, ids)))


@dataclass
class EmbeddingVectors:
    """Token-embedding rows of words, pooled: ``vectors`` is ``[word, d_model]``."""

    words: tuple[WordTokens, ...]
    pool: str
    vectors: np.ndarray


def embedding_matrix(model: Model) -> np.ndarray:
    """The token-embedding matrix ``[d_vocab, d_model]`` as a float32 numpy view."""
    import torch

    weight = model.bridge.W_E.detach()
    if weight.dtype != torch.float32:
        weight = weight.float()
    return weight.numpy()


def embedding_vectors(model: Model, words: Sequence[str], pool: str = "mean",
                      leading_space: bool = True) -> EmbeddingVectors:
    """Each word's pooled row(s) of the token-embedding matrix.

    Words are looked up mid-sentence (`` word``) unless ``leading_space=False``; a word of
    several tokens is pooled by ``pool`` (``mean``, ``last`` or ``first``).
    """
    _check_pool(pool)
    matrix = embedding_matrix(model)
    cut = [word_tokens(model, w, leading_space) for w in words]
    vectors = np.stack([_pool_rows(matrix[list(c.ids)], pool) for c in cut])
    return EmbeddingVectors(words=tuple(cut), pool=pool, vectors=vectors.astype(np.float32))


def find_occurrences(tokens: Tokens, word: str) -> list[Occurrence]:
    """Every whole-word occurrence of ``word`` in ``tokens.text`` and the positions covering it.

    Matching is case-sensitive and needs non-word characters (or the text's ends) on both
    sides, so ``sea`` is not found inside ``season``.
    """
    if not word.strip():
        raise ValueError("The word is empty or only whitespace; give a word to probe.")
    text = tokens.text
    found = []
    for match in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", text):
        start, end = match.span()
        positions = tuple(
            i for i, (s, e) in enumerate(tokens.spans) if s < e and s < end and e > start
        )
        first, last = tokens.spans[positions[0]], tokens.spans[positions[-1]]
        leading = text[first[0]:start]
        exact = leading in ("", " ") and last[1] == end
        found.append(Occurrence(
            context=text, start=start, end=end, positions=positions,
            labels=tuple(tokens.labels[i] for i in positions), exact=exact,
        ))
    return found


def fill_contexts(word: str, contexts: Sequence[str] | None) -> list[str]:
    """Contexts with ``{x}`` replaced by the word; contexts without it must contain the word."""
    contexts = list(DEFAULT_TEMPLATES if contexts is None else contexts)
    if not contexts:
        raise ValueError("No contexts given: pass sentences containing the word, or templates "
                         f"with {PLACEHOLDER}, or None for the default templates.")
    return [c.replace(PLACEHOLDER, word) for c in contexts]


@dataclass
class ContextVectors:
    """A word's pooled residual stream after each block, in each of its occurrences.

    ``vectors`` is ``[occurrence, layer, d_model]``; ``layers[i]`` is the block whose
    ``resid_post`` row i holds. ``occurrences`` says which tokens were pooled in each;
    ``at_sink`` counts those read at position 0 with no BOS token (the attention sink).
    """

    word: str
    pool: str
    layers: tuple[int, ...]
    vectors: np.ndarray
    occurrences: tuple[Occurrence, ...]
    at_sink: int = 0

    @property
    def mean(self) -> np.ndarray:
        """The average over occurrences, ``[layer, d_model]``."""
        return self.vectors.mean(axis=0)

    def describe(self) -> str:
        """Which tokens stood for the word, e.g. ``3 tokens ' Sp'|'onge'|'Bob', mean ...``."""
        cuts = sorted({o.labels for o in self.occurrences})
        notes = "; ".join(pooling_note(c, self.pool) for c in cuts)
        inexact = sum(not o.exact for o in self.occurrences)
        extra = f"; {inexact} occurrence(s) share a token with neighbouring text" if inexact else ""
        return (f"{self.word!r} in {len(self.occurrences)} context(s): {notes}{extra}")


def _layers(model: Model, layers: Sequence[int] | None) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(model.n_layers))
    bad = [x for x in layers if not 0 <= x < model.n_layers]
    if bad:
        raise ValueError(f"Layers {bad} do not exist: {model.name} has layers 0 to "
                         f"{model.n_layers - 1}.")
    return tuple(layers)


def _batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Group text indices, shortest first, so each padded batch stays near ``budget`` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = [[]]
    for i in order:
        if groups[-1] and (len(groups[-1]) + 1) * lengths[i] > budget:
            groups.append([])
        groups[-1].append(i)
    return groups


def residuals_at(model: Model, texts: Sequence[Tokens], wanted: Sequence[Sequence[tuple]],
                 layers: Sequence[int], pool: str, *, batch_tokens: int = BATCH_TOKENS,
                 progress: Progress | None = None) -> list[np.ndarray]:
    """Run texts in padded batches; pool ``resid_post`` at each group of positions.

    ``wanted[i]`` lists position tuples in text i. Returns, per text, an array
    ``[len(wanted[i]), layer, d_model]``. Batches are right-padded with no attention mask:
    attention is causal, so no real position ever sees the padding and each text's
    activations equal those of running it alone.
    """
    import torch

    from spyglass.hooks.capture import forward, stop_point

    names = [f"blocks.{x}.hook_resid_post" for x in layers]
    # Nothing past the last layer read is needed: skip later blocks and the unembedding.
    stop = stop_point(model, names)
    pad = model.tokenizer.pad_token_id or model.tokenizer.eos_token_id or 0
    # Attention is causal, so tokens after the last wanted position cannot change it: cut them.
    lengths = [max(max(p) for p in w) + 1 for w in wanted]
    out: list[np.ndarray] = [np.empty(0)] * len(texts)
    done = 0
    for group in _batches(lengths, batch_tokens):
        width = max(lengths[i] for i in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        for row, i in enumerate(group):
            ids[row, : lengths[i]] = torch.tensor(texts[i].ids[: lengths[i]])
        _, kept = forward(model, ids, names, stop_at=stop)
        stacked = torch.stack([kept[n] for n in names], dim=2).float().numpy()
        # stacked: (batch, pos, layer, d_model)
        for row, i in enumerate(group):
            out[i] = np.stack([_pool_rows(stacked[row, list(p)], pool) for p in wanted[i]])
        done += len(group)
        if progress is not None:
            progress(done, len(texts))
    return out


def context_vectors_many(model: Model, words: Sequence[str],
                         contexts: Sequence[str] | None = None, pool: str = "mean",
                         layers: Sequence[int] | None = None, *,
                         batch_tokens: int = BATCH_TOKENS,
                         progress: Progress | None = None,
                         prepend_bos: bool | None = None) -> list[ContextVectors]:
    """:func:`context_vectors` for many words at once, batching all their forward passes.

    ``prepend_bos`` is passed to the tokenizer for every context (None: the model's default).
    """
    _check_pool(pool)
    chosen = _layers(model, layers)
    texts, wanted, owners, occs = [], [], [], []
    sink: list[int] = []  # per context: occurrences at position 0 with no BOS
    for w, word in enumerate(words):
        word = word.strip()
        for context in fill_contexts(word, contexts):
            tokens = model.tokenize(context, prepend_bos=prepend_bos)
            found = find_occurrences(tokens, word)
            if not found:
                raise ValueError(
                    f"{word!r} does not occur as a whole word in the context {context!r}. "
                    f"Contexts must contain the word as written (case-sensitive) or "
                    f"{PLACEHOLDER} where it goes."
                )
            sink.append(sum(o.positions[0] == 0 and not tokens.bos for o in found))
            if sink[-1]:
                log.warning("%r is the first token of %r with no BOS: its residual there is "
                            "the model's attention sink, not a typical representation.",
                            word, context)
            texts.append(tokens)
            wanted.append([o.positions for o in found])
            owners.append(w)
            occs.append(found)

    pooled = residuals_at(model, texts, wanted, chosen, pool, batch_tokens=batch_tokens,
                          progress=progress)
    results = []
    for w, word in enumerate(words):
        mine = [i for i, o in enumerate(owners) if o == w]
        results.append(ContextVectors(
            word=word.strip(), pool=pool, layers=chosen,
            vectors=np.concatenate([pooled[i] for i in mine]).astype(np.float32),
            occurrences=tuple(o for i in mine for o in occs[i]),
            at_sink=sum(sink[i] for i in mine),
        ))
    return results


def context_vectors(model: Model, word: str, contexts: Sequence[str] | None = None,
                    pool: str = "mean", layers: Sequence[int] | None = None, *,
                    batch_tokens: int = BATCH_TOKENS,
                    progress: Progress | None = None,
                    prepend_bos: bool | None = None) -> ContextVectors:
    """A word's residual stream after every block at its tokens, in each context.

    ``contexts`` are the caller's sentences containing the word (every whole-word,
    case-sensitive occurrence counts), templates with ``{x}`` where the word goes, or None
    for :data:`DEFAULT_TEMPLATES`. A word cut into several tokens is pooled by ``pool``;
    the result's ``occurrences`` and :meth:`ContextVectors.describe` say which tokens.
    """
    return context_vectors_many(model, [word], contexts, pool, layers,
                                batch_tokens=batch_tokens, progress=progress,
                                prepend_bos=prepend_bos)[0]


def similarity(a: np.ndarray, b: np.ndarray, center: np.ndarray | None = None,
               metric: str = "cosine") -> np.ndarray:
    """Cosine similarity (or Euclidean distance) along the last axis, broadcasting the rest.

    ``center`` (broadcastable to ``a`` and ``b``, e.g. a ``[layer, d_model]`` reference
    mean) is subtracted from both first; it changes cosines but not distances.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if center is not None:
        a = a - center
        b = b - center
    if metric == "euclidean":
        return np.linalg.norm(a - b, axis=-1)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return (a * b).sum(axis=-1) / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class Neighbour:
    """One nearest neighbour: what it is (a token id or a word) and its similarity."""

    label: str
    score: float
    token_id: int | None = None


def vocab_neighbours(model: Model, vector: np.ndarray, k: int = 10, center: bool = True,
                     exclude: Sequence[int] = ()) -> list[Neighbour]:
    """The ``k`` rows of the token-embedding matrix with the highest cosine to ``vector``.

    With ``center`` both sides are centred on the mean embedding row first, which removes
    the direction every row shares. ``exclude`` drops token ids (e.g. the word's own).
    """
    matrix = embedding_matrix(model)
    mean = matrix.mean(axis=0) if center else None
    vector = np.asarray(vector, dtype=np.float32)
    rows = matrix - mean if center else matrix
    query = vector - mean if center else vector
    scores = rows @ query / np.maximum(np.linalg.norm(rows, axis=1) * np.linalg.norm(query),
                                       1e-12)
    scores[list(exclude)] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    labels = token_labels(model, top)
    return [Neighbour(label=str(lab), score=float(scores[i]), token_id=int(i))
            for lab, i in zip(labels, top, strict=True)]


def context_neighbours(query: np.ndarray, reference: np.ndarray, names: Sequence[str],
                       k: int = 10, center: np.ndarray | None = None,
                       metric: str = "cosine") -> list[Neighbour]:
    """The ``k`` reference items nearest to ``query`` (``[d_model]`` vs ``[item, d_model]``).

    Pick a layer by slicing before calling, e.g. ``ref[:, layer]``; ``center`` as in
    :func:`similarity` (typically the reference mean at that layer).
    """
    if len(names) != len(reference):
        raise ValueError(f"{len(names)} names for {len(reference)} reference vectors.")
    scores = similarity(reference, query[None, :], center=center, metric=metric)
    order = np.argsort(scores if metric == "euclidean" else -scores, kind="stable")[:k]
    return [Neighbour(label=names[i], score=float(scores[i])) for i in order]
