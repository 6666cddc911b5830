"""Logit lens and per-head scores: exact values on tiny models and hand-made patterns."""

from __future__ import annotations

import numpy as np
import pytest

from spyglass.hooks import CaptureSpec, Trace, capture
from spyglass.probes import heads, lens

TEXT = "The cat sat on the mat and the dog sat on the log"


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def tiny(request):
    return request.getfixturevalue(request.param)


def test_lens_on_last_layer_reproduces_logits(tiny):
    trace = capture(tiny, TEXT, CaptureSpec(kinds=("resid_post", "logits")))
    last = trace[f"blocks.{tiny.n_layers - 1}.hook_resid_post"]
    # Tolerance 1e-4: the same float32 ops in the same order; observed difference is 0.
    np.testing.assert_allclose(lens.lens_logits(tiny, last), trace["logits"], atol=1e-4)


def test_lens_top_k_is_sorted_and_matches_argmax(tiny):
    trace = capture(tiny, TEXT, CaptureSpec(kinds=("resid_post",)))
    k = 4
    result = lens.logit_lens(tiny, trace, k=k)
    n_pos = len(trace.tokens)
    assert result.layers == tuple(range(tiny.n_layers))
    assert result.top_ids.shape == (tiny.n_layers, n_pos, k)
    assert result.top_probs.shape == (tiny.n_layers, n_pos, k)
    assert result.top_labels.shape == (tiny.n_layers, n_pos, k)
    assert result.entropy.shape == (tiny.n_layers, n_pos)
    assert np.all(np.diff(result.top_probs, axis=-1) <= 0)
    assert np.all(result.top_probs.sum(axis=-1) <= 1 + 1e-6)

    # Layer 0's top-1 is the argmax of its own lens logits; probabilities are its softmax.
    logits = lens.lens_logits(tiny, trace["blocks.0.hook_resid_post"]).astype(np.float64)
    np.testing.assert_array_equal(result.top_ids[0, :, 0], logits.argmax(axis=-1))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(result.top_probs[0, :, 0], probs.max(-1), rtol=1e-5)
    # The last layer's own top-1 is the "final token", so there the two agree exactly.
    np.testing.assert_allclose(result.final_token_prob[-1], result.top_probs[-1, :, 0])


def test_token_labels_are_byte_faithful(tiny_gpt2):
    cut = tiny_gpt2.tokenize(" cat “x”")
    labels = lens.token_labels(tiny_gpt2, np.array([cut.ids, cut.ids]))
    assert labels.shape == (2, len(cut))
    assert tuple(labels[1]) == cut.labels
    assert labels[0, 0] == " cat"


def test_lens_refuses_trace_without_residuals(tiny_gpt2):
    trace = capture(tiny_gpt2, TEXT, CaptureSpec(kinds=("pattern",)))
    with pytest.raises(ValueError, match="resid_post"):
        lens.logit_lens(tiny_gpt2, trace)


def _pattern_trace(tokens, pattern: np.ndarray) -> Trace:
    """A trace holding one layer's hand-made pattern [head, q, k]."""
    name = "blocks.0.attn.hook_pattern"
    return Trace(tokens, {"n_layers": 1, "hooks": [name]}, {name: pattern.astype(np.float32)})


def test_head_scores_on_hand_made_patterns(tiny_gpt2):
    tokens = tiny_gpt2.tokenize("a b c d e")
    n = len(tokens)
    assert n == 5
    previous = np.zeros((n, n))
    previous[0, 0] = 1
    previous[np.arange(1, n), np.arange(n - 1)] = 1  # every query on the key just before it
    uniform = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    first = np.zeros((n, n))
    first[:, 0] = 1
    trace = _pattern_trace(tokens, np.stack([previous, uniform, first]))  # 3 heads

    np.testing.assert_allclose(heads.previous_token_score(trace)[0], [1, 1 / 4 * (
        1 / 2 + 1 / 3 + 1 / 4 + 1 / 5), 1 / 4], rtol=1e-6)
    # Queries 1..4: the previous-token head puts weight 1 on key 0 only for query 1.
    np.testing.assert_allclose(heads.first_position_weight(trace)[0], [1 / 4, 0.25 * (
        1 / 2 + 1 / 3 + 1 / 4 + 1 / 5), 1], rtol=1e-6)
    uniform_entropy = np.mean(np.log([2, 3, 4, 5]))
    np.testing.assert_allclose(heads.entropy(trace)[0], [0, uniform_entropy, 0], atol=1e-6)


def test_head_scores_shapes_on_a_capture(tiny_llama):
    trace = capture(tiny_llama, TEXT, CaptureSpec(kinds=("pattern",)))
    for fn in (heads.entropy, heads.first_position_weight, heads.previous_token_score):
        scores = fn(trace)
        assert scores.shape == (tiny_llama.n_layers, tiny_llama.n_heads)
    assert np.all(heads.first_position_weight(trace) <= 1 + 1e-6)


def test_head_scores_need_patterns_and_two_positions(tiny_gpt2):
    with pytest.raises(ValueError, match="pattern"):
        heads.entropy(capture(tiny_gpt2, TEXT, CaptureSpec(kinds=("resid_post",))))
    one = _pattern_trace(tiny_gpt2.tokenize("a"), np.ones((2, 1, 1)))
    with pytest.raises(ValueError, match="2 positions"):
        heads.previous_token_score(one)


def test_induction_score_repeats_the_sequence(tiny_llama):
    result = heads.induction_score(tiny_llama, half=10, n_seqs=3, seed=1)
    assert result.scores.shape == (tiny_llama.n_layers, tiny_llama.n_heads)
    assert result.ids.shape == (3, 20)
    np.testing.assert_array_equal(result.ids[:, :10], result.ids[:, 10:])
    assert np.all((result.scores >= 0) & (result.scores <= 1))
    # Default length fits the tiny model's 64-token context: 2 x 32.
    assert heads.induction_score(tiny_llama, n_seqs=1).half == 32
    with pytest.raises(ValueError, match="context"):
        heads.induction_score(tiny_llama, half=40)
