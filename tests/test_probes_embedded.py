"""Checks any sound pretrained model passes, run on the embedded SmolLM2-135M."""

from __future__ import annotations

import numpy as np
import pytest

from spyglass.hooks import CaptureSpec, capture
from spyglass.probes import baselines, concepts, heads, lens, linear

pytestmark = pytest.mark.embedded

COOKING = (
    "Stir the onions in butter until they turn golden.",
    "Bake the bread for forty minutes at a high heat.",
    "Season the soup with salt, pepper and fresh herbs.",
    "Whisk the eggs with sugar before adding the flour.",
    "Slice the tomatoes and drizzle them with olive oil.",
    "Simmer the sauce slowly so it does not burn.",
    "Knead the dough until it is smooth and elastic.",
    "Roast the chicken with garlic and lemon.",
    "Chop the carrots finely for the stew.",
    "Grate some cheese over the warm pasta.",
)
SPACE = (
    "The telescope captured light from a distant galaxy.",
    "Astronauts floated inside the orbiting station.",
    "A comet streaked across the night sky.",
    "The rocket launched toward the planet Mars.",
    "Saturn's rings are made of ice and rock.",
    "The probe sent back images of the moon's craters.",
    "Stars are born inside vast clouds of gas.",
    "The satellite circled the Earth every ninety minutes.",
    "A black hole bends the light around it.",
    "Astronomers measured the distance to the nebula.",
)


def test_t2_embedded_cuts_and_probe_form(embedded_model):
    model = embedded_model
    assert model.tokenize("SpongeBob").labels == ("Sp", "onge", "Bob")
    text = "I watched SpongeBob underwater"
    assert model.tokenize(text).labels == ("I", " watched", " Sp", "onge", "Bob",
                                           " underwater")
    got = concepts.context_vectors(model, "SpongeBob", [text], layers=[0])
    assert got.occurrences[0].labels == (" Sp", "onge", "Bob")
    assert got.describe().endswith("3 tokens ' Sp'|'onge'|'Bob', pooled by mean of their "
                                   "vectors")


def test_lens_reproduces_embedded_logits(embedded_model):
    trace = capture(embedded_model, "The capital of France is",
                    CaptureSpec(kinds=("resid_post", "logits"), layers=(29,)))
    # Tolerance 1e-4, as the issue asks; the same modules run in the same order.
    np.testing.assert_allclose(lens.lens_logits(embedded_model, trace["blocks.29.hook_resid_post"]),
                               trace["logits"], atol=1e-4)
    result = lens.logit_lens(embedded_model, trace, k=3)
    assert result.top_labels[-1, -1, 0] == " Paris"


def test_paris_nearer_france_than_the_median_control(embedded_model):
    probe = baselines.probe_pair(embedded_model, "Paris", "France", n_controls=40,
                                 templates=concepts.DEFAULT_TEMPLATES[:2])
    middle = [str(x) for x in range(10, 20)]  # the middle third of 30 layers
    for name in middle:
        row = probe.row_names.index(name)
        assert probe.baseline.value[row] > np.median(probe.baseline.controls[:, row]), name


def test_topic_probe_beats_its_shuffled_baseline(embedded_model):
    curve = linear.linear_probe(embedded_model, COOKING, SPACE, folds=5, n_shuffles=1)
    assert curve.accuracy.max() >= 0.8
    # Shuffled labels: near chance. Averaged over 30 layers the mean of 20 texts' held-out
    # accuracy sits within 0.15 of 0.5; no single layer should reach the real probe's 0.8.
    assert abs(curve.shuffled.mean() - 0.5) <= 0.15
    assert curve.shuffled.max() < 0.8


def test_embedded_model_has_an_induction_head(embedded_model):
    result = heads.induction_score(embedded_model, half=30, n_seqs=2)
    # Induction heads are found in every trained transformer of two layers or more; a
    # uniform head would score about 1/45 on this sequence.
    assert result.scores.max() > 0.3
