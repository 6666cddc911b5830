"""Baselines that give a similarity meaning: control words, z-scores, ranks, permutations.

A raw cosine between two residual vectors says little: in these models most vectors share
a common direction, so even unrelated words score high. Here the same measure is taken
between the concept and a list of control words matched to the target word in frequency
(Zipf scale, from the ``wordfreq`` package's own offline data) and in token count, giving
per layer a z-score and a rank: "underwater is SpongeBob's 3rd nearest of 201 words at
layer 12". For set-against-set questions ("are sea words nearer SpongeBob than desert
words?") :func:`permutation_test` gives a p-value per layer and one corrected for having
looked at every layer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from spyglass.model.loader import Model
from spyglass.probes import concepts
from spyglass.probes.concepts import ContextVectors, Progress

log = logging.getLogger(__name__)

MEASURES = ("centered", "cosine", "euclidean")
MEASURE_NOTES = {
    "centered": "cosine after subtracting, at each layer, the mean vector of the control words",
    "cosine": "raw cosine similarity",
    "euclidean": "Euclidean distance (lower is nearer)",
}
ALTERNATIVES = ("greater", "less", "two-sided")
# Candidate controls: the most frequent English words in wordfreq's list.
CANDIDATE_POOL = 50_000
MIN_CONTROLS = 20
_CHUNK = 2000


@dataclass(frozen=True)
class Controls:
    """Control words matched to ``target`` in Zipf frequency and token count."""

    target: str
    target_zipf: float
    n_tokens: int
    words: tuple[str, ...]
    zipf: tuple[float, ...]

    def describe(self) -> str:
        lo, hi = min(self.zipf), max(self.zipf)
        unit = "token" if self.n_tokens == 1 else "tokens"
        return (f"{len(self.words)} control words matched to {self.target!r} (Zipf "
                f"{self.target_zipf:.2f}): Zipf {lo:.2f} to {hi:.2f}, {self.n_tokens} "
                f"{unit} each")


def _match_case(word: str, like: str) -> str:
    # Controls take the target's capitalisation so "France" is not compared with lower-case
    # words only: case changes both tokens and meaning.
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def control_words(model: Model, target: str, n: int = 200, *, exclude: Sequence[str] = (),
                  leading_space: bool = True, lang: str = "en", seed: int = 0) -> Controls:
    """``n`` words as frequent as ``target`` and cut into as many tokens by ``model``.

    Candidates are the 50,000 most frequent alphabetic words in ``wordfreq`` (data shipped
    in the package, no network), written in the target's capitalisation; those with the
    target's token count (in the mid-sentence form unless ``leading_space=False``) are
    ranked by distance in Zipf frequency (ties in random order, fixed by ``seed``) and the
    nearest ``n`` kept. ``exclude`` (compared case-insensitively) keeps words such as the
    concept itself out.
    """
    import wordfreq

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    target = target.strip()
    target_zipf = wordfreq.zipf_frequency(target, lang)
    n_tokens = len(concepts.word_tokens(model, target, leading_space).ids)
    banned = {w.strip().lower() for w in (*exclude, target)}
    freq = wordfreq.get_frequency_dict(lang)
    candidates = [w for w in wordfreq.top_n_list(lang, CANDIDATE_POOL)
                  if w.isalpha() and len(w) > 1 and w not in banned]
    # Same rounding as wordfreq.zipf_frequency, which these words would go through.
    zipfs = {w: round(math.log10(freq[w] * 1e9), 2) for w in candidates}
    # Many words share a rounded Zipf value; shuffle first so ties are not broken
    # alphabetically (which would fill the list with words starting with "a").
    np.random.default_rng(seed).shuffle(candidates)
    candidates.sort(key=lambda w: abs(zipfs[w] - target_zipf))

    # Tokenize nearest-first in chunks: most targets find n matches in the first few.
    ranked: list[str] = []
    for start in range(0, len(candidates), _CHUNK):
        chunk = [_match_case(w, target) for w in candidates[start:start + _CHUNK]]
        forms = [concepts.word_form(w, leading_space) for w in chunk]
        cut = model.tokenizer(forms, add_special_tokens=False)["input_ids"]
        ranked += [w for w, ids in zip(chunk, cut, strict=True) if len(ids) == n_tokens]
        if len(ranked) >= n:
            break
    ranked = ranked[:n]
    if len(ranked) < min(n, MIN_CONTROLS):
        raise ValueError(
            f"Only {len(ranked)} candidate words have {n_tokens} tokens like {target!r}; "
            f"a baseline needs at least {min(n, MIN_CONTROLS)}. Probe a shorter form of "
            "the word."
        )
    if len(ranked) < n:
        log.warning("Only %d control words match %r; asked for %d.", len(ranked), target, n)
    if target_zipf == 0:
        log.warning("%r is not in wordfreq's list; controls are the rarest words with %d "
                    "token(s).", target, n_tokens)
    return Controls(target=target, target_zipf=target_zipf, n_tokens=n_tokens,
                    words=tuple(ranked), zipf=tuple(zipfs[w.lower()] for w in ranked))


@dataclass
class Baseline:
    """One value per layer against the same measure on each control, ``[layer]`` arrays.

    ``z`` is signed so that positive always means nearer than the average control
    (for distances it is ``(mean - value) / sd``). ``rank`` is 1 + the number of controls
    strictly nearer, out of ``n + 1`` words.
    """

    value: np.ndarray
    controls: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    z: np.ndarray
    rank: np.ndarray
    higher_is_nearer: bool

    @property
    def n(self) -> int:
        return int(self.controls.shape[0])


def compare_to_controls(value: np.ndarray, controls: np.ndarray,
                        higher_is_nearer: bool = True) -> Baseline:
    """Z-score and rank of ``value`` (``[layer]``) among ``controls`` (``[control, layer]``)."""
    value = np.asarray(value, dtype=np.float64)
    controls = np.asarray(controls, dtype=np.float64)
    if controls.ndim != 2 or controls.shape[1:] != value.shape:
        raise ValueError(f"controls must be [control, layer] matching value {value.shape}; "
                         f"got {controls.shape}.")
    if controls.shape[0] < 2:
        raise ValueError("A baseline needs at least 2 controls to estimate a spread.")
    mean = controls.mean(axis=0)
    sd = controls.std(axis=0, ddof=1)
    sign = 1.0 if higher_is_nearer else -1.0
    z = sign * (value - mean) / np.maximum(sd, 1e-12)
    nearer = (sign * controls > sign * value).sum(axis=0)
    return Baseline(value=value, controls=controls, mean=mean, sd=sd, z=z, rank=nearer + 1,
                    higher_is_nearer=higher_is_nearer)


@dataclass
class PermutationResult:
    """Set-against-set test per layer: statistic ``mean(a) - mean(b)``.

    ``p`` is per layer; ``p_any`` is corrected for testing every layer (max-statistic over
    layers, each standardised by its permutation spread). ``exact`` says whether every
    split was enumerated instead of sampling ``n_perm`` of them.
    """

    observed: np.ndarray
    p: np.ndarray
    p_any: np.ndarray
    n_perm: int
    exact: bool
    alternative: str


def _splits(n: int, k: int, n_perm: int, seed: int) -> tuple[np.ndarray, bool]:
    """Boolean masks ``[split, n]`` choosing ``k`` of ``n`` items for the first group."""
    if math.comb(n, k) <= n_perm:
        masks = np.zeros((math.comb(n, k), n), dtype=bool)
        for row, chosen in enumerate(combinations(range(n), k)):
            masks[row, list(chosen)] = True
        return masks, True
    rng = np.random.default_rng(seed)
    base = np.zeros(n, dtype=bool)
    base[:k] = True
    return rng.permuted(np.tile(base, (n_perm, 1)), axis=1), False


def permutation_test(a: np.ndarray, b: np.ndarray, n_perm: int = 10_000, seed: int = 0,
                     alternative: str = "greater") -> PermutationResult:
    """Is ``mean(a)`` above ``mean(b)`` at each layer more than relabelling explains?

    ``a`` is ``[item, layer]`` (or ``[item]``), ``b`` likewise. Labels are permuted
    ``n_perm`` times, or every split is enumerated when there are no more than ``n_perm``.
    Sampled p-values count the observed labelling, ``(1 + hits) / (1 + n_perm)``, so they
    are never 0 and are valid (Phipson & Smyth, 2010).
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}.")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    squeeze = a.ndim == 1
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    if len(a) < 1 or len(b) < 1 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Need two non-empty sets with the same layers; got {a.shape}, "
                         f"{b.shape}.")
    pooled = np.concatenate([a, b])  # (item, layer)
    masks, exact = _splits(len(pooled), len(a), n_perm, seed)
    stats = masks @ pooled / len(a) - (~masks) @ pooled / len(b)  # (split, layer)
    observed = a.mean(axis=0) - b.mean(axis=0)

    if alternative == "less":
        stats, obs = -stats, -observed
    elif alternative == "two-sided":
        centre = stats.mean(axis=0)
        stats, obs = np.abs(stats - centre), np.abs(observed - centre)
    else:
        obs = observed
    # Ties up to rounding count as hits, so equal statistics never give a falsely small p.
    tol = 1e-12 * np.maximum(np.abs(stats).max(axis=0), 1.0)
    hits = (stats >= obs - tol).sum(axis=0)
    spread = np.maximum(stats.std(axis=0), 1e-12)
    t_max = ((stats - stats.mean(axis=0)) / spread).max(axis=1)  # (split,)
    t_obs = (obs - stats.mean(axis=0)) / spread
    hits_any = (t_max[:, None] >= t_obs[None, :] - 1e-9).sum(axis=0)
    if exact:
        p, p_any = hits / len(stats), hits_any / len(stats)
    else:
        p, p_any = (1 + hits) / (1 + len(stats)), (1 + hits_any) / (1 + len(stats))
    if squeeze:
        observed, p, p_any = observed[0], p[0], p_any[0]
    return PermutationResult(observed=observed, p=np.asarray(p), p_any=np.asarray(p_any),
                             n_perm=len(stats), exact=exact, alternative=alternative)


def measure(a: np.ndarray, b: np.ndarray, how: str, center: np.ndarray | None) -> np.ndarray:
    """One of :data:`MEASURES` between vectors, ``center`` used only by ``centered``."""
    if how not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {how!r}.")
    if how == "euclidean":
        return concepts.similarity(a, b, metric="euclidean")
    return concepts.similarity(a, b, center=center if how == "centered" else None)


@dataclass
class PairProbe:
    """How near ``concept`` is to ``target`` at each layer, against frequency-matched controls.

    Row 0 of every ``[row]`` array is the token-embedding matrix (``row_names[0] == "emb"``);
    row ``i >= 1`` is the residual stream after block ``i - 1`` in context.
    """

    concept: str
    target: str
    measure: str
    pool: str
    templates: tuple[str, ...]
    row_names: tuple[str, ...]
    baseline: Baseline
    controls: Controls
    concept_note: str
    target_note: str
    concept_vectors: ContextVectors
    target_vectors: ContextVectors
    control_vectors: np.ndarray = field(repr=False)  # (control, layer, d_model)

    @property
    def measure_note(self) -> str:
        return MEASURE_NOTES[self.measure]

    def rows(self) -> list[dict]:
        """One plain dict per row: layer, value, control mean and sd, z, rank, out of."""
        b = self.baseline
        return [
            {"layer": name, "value": float(b.value[i]), "control_mean": float(b.mean[i]),
             "control_sd": float(b.sd[i]), "z": float(b.z[i]), "rank": int(b.rank[i]),
             "out_of": b.n + 1}
            for i, name in enumerate(self.row_names)
        ]

    def to_dict(self) -> dict:
        """Everything a machine needs, JSON-ready (no vectors)."""
        return {
            "concept": self.concept, "target": self.target, "measure": self.measure,
            "measure_note": self.measure_note, "pool": self.pool,
            "templates": list(self.templates), "concept_tokens": self.concept_note,
            "target_tokens": self.target_note, "controls": self.controls.describe(),
            "control_words": list(self.controls.words), "rows": self.rows(),
        }


def _embedding_row(model: Model, words: list[str], pool: str, how: str) -> tuple[float, ...]:
    """The measure between concept (words[0]) and the rest, on token-embedding rows."""
    emb = concepts.embedding_vectors(model, words, pool=pool).vectors  # (word, d_model)
    center = emb[2:].mean(axis=0)
    return tuple(measure(emb[0][None], emb[1:], how, center))


def probe_pair(model: Model, concept: str, target: str, *, n_controls: int = 200,
               templates: Sequence[str] | None = None,
               concept_contexts: Sequence[str] | None = None, pool: str = "mean",
               how: str = "centered", batch_tokens: int = concepts.BATCH_TOKENS,
               progress: Progress | None = None,
               prepend_bos: bool | None = None) -> PairProbe:
    """Measure concept-to-target nearness per layer and rank it among control words.

    Target and controls are read in the same ``templates`` (default
    :data:`~spyglass.probes.concepts.DEFAULT_TEMPLATES`), so they differ only in the word;
    the concept is read in ``concept_contexts`` when given (sentences containing it), else
    in the same templates. ``centered`` subtracts the controls' mean vector at each layer.
    ``prepend_bos`` applies to every context read, the concept's and the controls' alike.

    Controls are read in the same templates as the target on purpose: averaging over fewer
    contexts would give them a wider spread and shrink every z-score. The cost is
    ``(n_controls + 2) x len(templates)`` short texts, run in padded batches of about
    :data:`~spyglass.probes.concepts.BATCH_TOKENS` tokens and cut after the word (nothing
    later can change it): 200 controls x 5 templates is 1,010 texts, about 6,000 tokens,
    20 s for the embedded model on two cores.
    """
    if how not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {how!r}.")
    controls = control_words(model, target, n_controls, exclude=[concept])
    words = [concept, target, *controls.words]
    if concept_contexts is None:
        reps = concepts.context_vectors_many(model, words, templates, pool,
                                             batch_tokens=batch_tokens, progress=progress,
                                             prepend_bos=prepend_bos)
    else:
        reps = [concepts.context_vectors(model, concept, concept_contexts, pool,
                                         batch_tokens=batch_tokens, prepend_bos=prepend_bos)]
        reps += concepts.context_vectors_many(model, words[1:], templates, pool,
                                              batch_tokens=batch_tokens, progress=progress,
                                              prepend_bos=prepend_bos)
    means = np.stack([r.mean for r in reps])  # (word, layer, d_model)
    center = means[2:].mean(axis=0)  # (layer, d_model)
    in_context = measure(means[0][None], means[1:], how, center)  # (word - 1, layer)

    emb = np.asarray(_embedding_row(model, words, pool, how))  # (word - 1,)
    table = np.concatenate([emb[:, None], in_context], axis=1)  # (word - 1, row)
    baseline = compare_to_controls(table[0], table[1:], higher_is_nearer=how != "euclidean")
    used = tuple(concepts.DEFAULT_TEMPLATES if templates is None else templates)
    return PairProbe(
        concept=concept.strip(), target=target.strip(), measure=how, pool=pool,
        templates=used, row_names=("emb", *(str(x) for x in reps[0].layers)),
        baseline=baseline, controls=controls, concept_note=reps[0].describe(),
        target_note=reps[1].describe(), concept_vectors=reps[0], target_vectors=reps[1],
        control_vectors=means[2:],
    )


@dataclass
class SetTest:
    """Are the words of ``set_a`` nearer ``concept`` than those of ``set_b``, per layer?

    ``values_a`` / ``values_b`` are ``[word, layer]`` in the stated measure; the test is on
    nearness (similarity, or minus distance), so ``greater`` means set A is nearer.
    """

    concept: str
    set_a: tuple[str, ...]
    set_b: tuple[str, ...]
    measure: str
    layers: tuple[int, ...]
    values_a: np.ndarray
    values_b: np.ndarray
    result: PermutationResult


def set_test(model: Model, concept: str, set_a: Sequence[str], set_b: Sequence[str], *,
             templates: Sequence[str] | None = None, pool: str = "mean",
             how: str = "centered", n_perm: int = 10_000, seed: int = 0,
             alternative: str = "greater", progress: Progress | None = None,
             prepend_bos: bool | None = None) -> SetTest:
    """Permutation test of set A against set B in nearness to ``concept`` at each layer.

    ``centered`` subtracts the mean of all words of both sets: the same for every
    relabelling, so it does not bias the test.
    """
    words = [concept, *set_a, *set_b]
    reps = concepts.context_vectors_many(model, words, templates, pool, progress=progress,
                                         prepend_bos=prepend_bos)
    means = np.stack([r.mean for r in reps])  # (word, layer, d_model)
    values = measure(means[0][None], means[1:], how, means[1:].mean(axis=0))
    nearness = -values if how == "euclidean" else values
    na = len(set_a)
    result = permutation_test(nearness[:na], nearness[na:], n_perm=n_perm, seed=seed,
                              alternative=alternative)
    return SetTest(concept=concept, set_a=tuple(set_a), set_b=tuple(set_b), measure=how,
                   layers=reps[0].layers, values_a=values[:na], values_b=values[na:],
                   result=result)
