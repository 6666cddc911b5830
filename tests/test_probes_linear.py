"""Linear probes: the curve finds a planted signal; the shuffled baseline does not."""

from __future__ import annotations

import numpy as np
import pytest

from spyglass.hooks import CaptureSpec, capture
from spyglass.probes import linear


def test_probe_curve_finds_the_layer_with_signal():
    # 40 texts, 3 layers, 16 dims; only layer 1 carries the label (shift of 8 sd on dim 0).
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 20)
    features = rng.normal(size=(40, 3, 16))
    features[labels == 1, 1, 0] += 8.0
    curve = linear.probe_curve(features, labels, folds=5, n_shuffles=3, layers=[4, 5, 6])
    assert curve.layers == (4, 5, 6) and curve.best_layer == 5
    assert curve.accuracy[1] >= 0.9
    # Noise layers and shuffled labels: near chance (0.5) within 0.2 for 40 samples.
    assert abs(curve.accuracy[0] - 0.5) <= 0.2 and abs(curve.accuracy[2] - 0.5) <= 0.2
    assert np.all(np.abs(curve.shuffled - 0.5) <= 0.2)
    assert curve.chance == 0.5 and (curve.n_a, curve.n_b) == (20, 20)
    assert set(curve.to_dict()) >= {"accuracy", "shuffled", "layers", "chance"}


def test_probe_curve_validates_inputs():
    features = np.zeros((6, 2, 4))
    with pytest.raises(ValueError, match="per set"):
        linear.probe_curve(features, np.array([0, 0, 0, 0, 1, 1]), folds=3)
    with pytest.raises(ValueError, match="both 0 and 1"):
        linear.probe_curve(features, np.zeros(6), folds=2)


def test_pooled_residuals_match_a_capture(tiny_llama):
    texts = ["The sea is wide.", "Sand and heat everywhere in the dry desert."]
    mean = linear.pooled_residuals(tiny_llama, texts)
    last = linear.pooled_residuals(tiny_llama, texts, pool="last")
    assert mean.shape == (2, tiny_llama.n_layers, tiny_llama.d_model)
    trace = capture(tiny_llama, texts[1], CaptureSpec(kinds=("resid_post",)))
    resid = trace["blocks.1.hook_resid_post"]  # (pos, d_model)
    np.testing.assert_allclose(mean[1, 1], resid.mean(0), atol=1e-5)
    np.testing.assert_allclose(last[1, 1], resid[-1], atol=1e-5)


def test_linear_probe_runs_on_a_tiny_model(tiny_gpt2):
    curve = linear.linear_probe(tiny_gpt2, linear.SEA_TEXTS[:6], linear.DESERT_TEXTS[:6],
                                folds=3, n_shuffles=1)
    assert curve.layers == tuple(range(tiny_gpt2.n_layers))
    assert curve.accuracy.shape == curve.shuffled.shape == (tiny_gpt2.n_layers,)
    assert np.all((curve.accuracy >= 0) & (curve.accuracy <= 1))


def test_empty_or_short_set_is_refused_before_any_forward(tiny_gpt2, monkeypatch):
    def no_forward(*args, **kwargs):
        raise AssertionError("ran the model for a probe that cannot be fitted")

    monkeypatch.setattr(linear, "pooled_residuals", no_forward)
    with pytest.raises(ValueError, match="Set A has 0 texts; give at least 5, one per line"):
        linear.linear_probe(tiny_gpt2, [], linear.DESERT_TEXTS[:6])
    with pytest.raises(ValueError, match="Set B has 1 text; give at least 3"):
        linear.linear_probe(tiny_gpt2, linear.SEA_TEXTS[:6], ["Sand."], folds=3)
