"""Linear probes: at which layer can a straight line tell two sets of texts apart?

Each text's residual stream after every block is pooled over its positions into one vector
per layer; a logistic regression (scikit-learn, features standardised) is trained per
layer and scored by k-fold held-out accuracy. The same is done with the labels shuffled,
which shows what accuracy a probe reaches on this much data with no real signal: a layer
only "knows" the distinction if its accuracy clears that baseline, not merely 50 %.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spyglass.model.loader import Model
from spyglass.probes import concepts
from spyglass.probes.concepts import Progress

log = logging.getLogger(__name__)

POOLS = ("mean", "last")

# A ready-made pair of topics for demos: sentences about the sea and about the desert.
SEA_TEXTS = (
    "The waves crashed against the rocks all night.",
    "A school of fish swam past the coral reef.",
    "The fishermen pulled their nets from the cold water.",
    "Salt spray covered the deck of the small boat.",
    "Dolphins followed the ship far out into the ocean.",
    "The tide came in and covered the sandy beach.",
    "Divers explored the wreck on the sea floor.",
    "A lighthouse guided sailors through the storm.",
    "The whale rose to the surface and blew a spout of water.",
    "Seaweed drifted slowly with the current.",
    "The harbour was full of sailing boats and gulls.",
    "Deep under the waves, an octopus hid in a cave.",
    "The captain steered the ship toward the open sea.",
    "Crabs scuttled along the wet shore at low tide.",
    "The surfers waited for the next big wave.",
    "Jellyfish glowed in the dark water below the pier.",
    "A storm at sea tossed the little ferry around.",
    "The marine biologist counted turtles on the reef.",
    "Foam rolled up the beach with every breaking wave.",
    "The submarine dived beneath the icy ocean.",
)
DESERT_TEXTS = (
    "The sand dunes stretched to the horizon under a burning sun.",
    "A camel caravan crossed the dry plain at dawn.",
    "Cactus plants survive for months without rain.",
    "The travellers searched for an oasis in the heat.",
    "Hot wind blew sand across the empty road.",
    "A lizard rested on a rock in the scorching afternoon.",
    "The desert nights are cold even after blazing days.",
    "Dust storms can hide the sun for hours.",
    "Nomads pitched their tents near the dry riverbed.",
    "The cracked earth had not seen rain in years.",
    "A mirage shimmered above the baking sand.",
    "Scorpions hunt at night among the dunes.",
    "The explorer ran out of water in the Sahara.",
    "Tumbleweeds rolled across the arid valley.",
    "Heat rose in waves from the stony ground.",
    "Only thorny shrubs grow in the parched soil.",
    "The canyon walls glowed red in the dry air.",
    "A vulture circled high over the barren plain.",
    "Sand drifted against the walls of the abandoned fort.",
    "The well in the village had gone dry again.",
)


@dataclass
class ProbeCurve:
    """Held-out accuracy of a linear probe at each layer, and its shuffled-label baseline.

    Arrays are ``[layer]``; ``layers[i]`` is the block whose ``resid_post`` row i reads.
    ``chance`` is the majority-class rate, what always guessing the larger set scores.
    """

    layers: tuple[int, ...]
    accuracy: np.ndarray
    accuracy_sd: np.ndarray
    shuffled: np.ndarray
    shuffled_sd: np.ndarray
    chance: float
    folds: int
    n_a: int
    n_b: int
    pool: str

    @property
    def best_layer(self) -> int:
        return self.layers[int(np.argmax(self.accuracy))]

    def to_dict(self) -> dict:
        return {
            "layers": list(self.layers), "accuracy": self.accuracy.tolist(),
            "accuracy_sd": self.accuracy_sd.tolist(), "shuffled": self.shuffled.tolist(),
            "shuffled_sd": self.shuffled_sd.tolist(), "chance": self.chance,
            "folds": self.folds, "n_a": self.n_a, "n_b": self.n_b, "pool": self.pool,
        }


def pooled_residuals(model: Model, texts: Sequence[str], pool: str = "mean",
                     layers: Sequence[int] | None = None, *,
                     progress: Progress | None = None) -> np.ndarray:
    """Each text's ``resid_post`` pooled over its positions: ``[text, layer, d_model]``.

    ``mean`` averages every text position (a prepended BOS is left out: it is the same in
    every text); ``last`` takes the final position, which has read the whole text.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}.")
    chosen = tuple(range(model.n_layers)) if layers is None else tuple(layers)
    cut = [model.tokenize(t) for t in texts]
    wanted = [[tuple(range(int(t.bos), len(t)))] for t in cut]
    if any(not w[0] for w in wanted):
        raise ValueError("A text has no tokens besides BOS; every text needs some words.")
    pooled = concepts.residuals_at(model, cut, wanted, chosen, pool, progress=progress)
    return np.concatenate(pooled).astype(np.float32)  # (text, layer, d_model)


def _cv_accuracy(x: np.ndarray, y: np.ndarray, folds: int, seed: int, c: float) -> np.ndarray:
    """Held-out accuracy of each fold for one layer's features ``[text, d_model]``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Standardising matters: a few residual dimensions are orders of magnitude larger than
    # the rest and would otherwise dominate the regularised fit.
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_score(clf, x, y, cv=split)


def probe_curve(features: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0,
                n_shuffles: int = 3, c: float = 1.0, pool: str = "mean",
                layers: Sequence[int] | None = None) -> ProbeCurve:
    """Fit a probe per layer on ``features`` ``[text, layer, d_model]`` with 0/1 ``labels``.

    The shuffled baseline repeats the same cross-validation ``n_shuffles`` times with the
    labels randomly permuted (seeded) and averages.
    """
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2)
    if set(np.unique(labels)) != {0, 1}:
        raise ValueError("labels must contain both 0 and 1 (two sets of texts).")
    if counts.min() < folds or folds < 2:
        raise ValueError(
            f"{folds}-fold cross-validation needs at least {folds} texts per set and folds "
            f">= 2; the smaller set has {counts.min()}. Add texts or lower folds."
        )
    n_layers = features.shape[1]
    rng = np.random.default_rng(seed)
    shuffles = [rng.permutation(labels) for _ in range(n_shuffles)]
    acc, acc_sd, shuf, shuf_sd = (np.zeros(n_layers) for _ in range(4))
    for layer in range(n_layers):
        x = features[:, layer]
        real = _cv_accuracy(x, labels, folds, seed, c)
        fake = np.array([_cv_accuracy(x, s, folds, seed, c).mean() for s in shuffles])
        acc[layer], acc_sd[layer] = real.mean(), real.std()
        shuf[layer], shuf_sd[layer] = fake.mean(), fake.std() if len(fake) > 1 else 0.0
    return ProbeCurve(
        layers=tuple(range(n_layers)) if layers is None else tuple(layers),
        accuracy=acc, accuracy_sd=acc_sd, shuffled=shuf, shuffled_sd=shuf_sd,
        chance=float(counts.max() / counts.sum()), folds=folds, n_a=int(counts[0]),
        n_b=int(counts[1]), pool=pool,
    )


def linear_probe(model: Model, texts_a: Sequence[str], texts_b: Sequence[str], *,
                 pool: str = "mean", folds: int = 5, seed: int = 0, n_shuffles: int = 3,
                 c: float = 1.0, progress: Progress | None = None) -> ProbeCurve:
    """Per-layer logistic-regression probe separating ``texts_a`` (label 0) from ``texts_b``.

    Returns the k-fold held-out accuracy curve and its shuffled-label baseline.
    """
    for name, texts in (("Set A", texts_a), ("Set B", texts_b)):
        # Checked before any forward pass, in the words of the person who typed the sets.
        if len(texts) < max(folds, 2):
            raise ValueError(
                f"{name} has {len(texts)} text{'s' if len(texts) != 1 else ''}; give at least "
                f"{max(folds, 2)}, one per line, for {folds}-fold cross-validation."
            )
    texts = [*texts_a, *texts_b]
    features = pooled_residuals(model, texts, pool, progress=progress)
    labels = np.array([0] * len(texts_a) + [1] * len(texts_b))
    return probe_curve(features, labels, folds=folds, seed=seed, n_shuffles=n_shuffles, c=c,
                       pool=pool, layers=range(model.n_layers))
