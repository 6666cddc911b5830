"""Baselines: control selection, z-scores and ranks, permutation p-values, pair probes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import wordfreq
from scipy import stats

from spyglass.probes import baselines, concepts


def test_controls_match_frequency_and_token_count(tiny_gpt2):
    controls = baselines.control_words(tiny_gpt2, "underwater", 40, exclude=["Ocean"])
    assert len(controls.words) == 40
    assert controls.n_tokens == 1  # ' underwater' is one GPT-2 token
    assert controls.target_zipf == wordfreq.zipf_frequency("underwater", "en") == 3.92
    cut = tiny_gpt2.tokenizer([f" {w}" for w in controls.words], add_special_tokens=False)
    assert {len(ids) for ids in cut["input_ids"]} == {1}
    # 40 words lie within 0.05 Zipf of the target; the list is this dense around 3.9.
    assert max(abs(z - 3.92) for z in controls.zipf) <= 0.05
    assert [wordfreq.zipf_frequency(w, "en") for w in controls.words] == list(controls.zipf)
    assert "underwater" not in controls.words and "ocean" not in controls.words
    assert len(set(controls.words)) == 40
    # Same seed, same list; ties are broken at random, so not alphabetically.
    assert baselines.control_words(tiny_gpt2, "underwater", 40,
                                   exclude=["Ocean"]).words == controls.words
    assert list(controls.words) != sorted(controls.words)


def test_controls_take_the_targets_case_and_token_count(tiny_gpt2):
    controls = baselines.control_words(tiny_gpt2, "SpongeBob", 30)
    assert controls.n_tokens == 2  # ' Sponge' 'Bob'
    assert all(w[0].isupper() for w in controls.words)
    cut = tiny_gpt2.tokenizer([f" {w}" for w in controls.words], add_special_tokens=False)
    assert {len(ids) for ids in cut["input_ids"]} == {2}


def test_compare_to_controls_hand_values():
    controls = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [5.0, 50.0]])
    value = np.array([4.5, 10.0])
    near = baselines.compare_to_controls(value, controls)
    sd = np.std([1, 2, 3, 4, 5], ddof=1)
    np.testing.assert_allclose(near.mean, [3.0, 30.0])
    np.testing.assert_allclose(near.z, [1.5 / sd, -20 / (10 * sd)])
    np.testing.assert_array_equal(near.rank, [2, 5])  # one control above 4.5; four above 10
    far = baselines.compare_to_controls(value, controls, higher_is_nearer=False)
    np.testing.assert_allclose(far.z, [-1.5 / sd, 20 / (10 * sd)])
    np.testing.assert_array_equal(far.rank, [5, 1])  # distances: smaller is nearer
    with pytest.raises(ValueError, match="control"):
        baselines.compare_to_controls(value, controls[:, :1])


def test_permutation_exact_small_case():
    # 4 items, 2 per group: 6 splits; the observed one has the largest difference.
    result = baselines.permutation_test(np.array([3.0, 4.0]), np.array([0.0, 1.0]))
    assert result.exact and result.n_perm == 6
    assert result.observed == pytest.approx(3.0)
    assert result.p == pytest.approx(1 / 6)
    less = baselines.permutation_test(np.array([3.0, 4.0]), np.array([0.0, 1.0]),
                                      alternative="less")
    assert less.p == pytest.approx(1.0)
    # Two-sided: the mirror split (b's labels on a) is as extreme, so 2 of 6.
    both = baselines.permutation_test(np.array([3.0, 4.0]), np.array([0.0, 1.0]),
                                      alternative="two-sided")
    assert both.p == pytest.approx(2 / 6)


def test_permutation_p_values_are_uniform_under_the_null():
    # 200 tests on pure noise: p should be Uniform(0, 1). KS test at 0.01, and binned counts
    # within 4 binomial standard deviations of 20 per decile.
    rng = np.random.default_rng(7)
    ps = np.array([
        baselines.permutation_test(rng.normal(size=(10, 3)), rng.normal(size=(12, 3)),
                                   n_perm=499, seed=i).p[0]
        for i in range(200)
    ])
    assert stats.kstest(ps, "uniform").pvalue > 0.01
    counts = np.histogram(ps, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(counts - 20) <= 4 * math.sqrt(200 * 0.1 * 0.9))
    assert np.mean(ps <= 0.05) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 200)


def test_permutation_corrected_p_is_never_smaller_and_detects_signal():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(15, 6))
    b = rng.normal(size=(15, 6))
    a[:, 2] += 2.0  # a real difference at layer 2 only
    result = baselines.permutation_test(a, b, n_perm=2000)
    assert result.p.shape == result.p_any.shape == (6,)
    assert np.all(result.p_any >= result.p - 1e-12)
    assert result.p[2] < 0.001 and result.p_any[2] < 0.01
    assert not result.exact


def test_probe_pair_baseline_uses_the_right_sets(tiny_gpt2):
    probe = baselines.probe_pair(tiny_gpt2, "SpongeBob", "underwater", n_controls=25,
                                 templates=["I like {x}.", "Then {x} came."])
    n = tiny_gpt2.n_layers
    assert probe.row_names == ("emb", *[str(x) for x in range(n)])
    assert probe.baseline.controls.shape == (25, n + 1)
    assert probe.control_vectors.shape == (25, n, tiny_gpt2.d_model)

    # Recompute one control's and the target's value at layer 1 from scratch.
    words = ["SpongeBob", "underwater", probe.controls.words[4]]
    reps = concepts.context_vectors_many(tiny_gpt2, words, probe.templates)
    all_controls = concepts.context_vectors_many(tiny_gpt2, list(probe.controls.words),
                                                 probe.templates)
    center = np.mean([c.mean[1] for c in all_controls], axis=0)
    target = concepts.similarity(reps[0].mean[1], reps[1].mean[1], center=center)
    control = concepts.similarity(reps[0].mean[1], reps[2].mean[1], center=center)
    assert probe.baseline.value[2] == pytest.approx(target, abs=1e-5)
    assert probe.baseline.controls[4, 2] == pytest.approx(control, abs=1e-5)

    # The embedding row uses token-embedding rows, centred on the controls' rows.
    emb = concepts.embedding_vectors(tiny_gpt2, words).vectors
    emb_center = concepts.embedding_vectors(tiny_gpt2, list(probe.controls.words)).vectors
    want = concepts.similarity(emb[0], emb[1], center=emb_center.mean(0))
    assert probe.baseline.value[0] == pytest.approx(want, abs=1e-5)

    rows = probe.rows()
    assert len(rows) == n + 1 and rows[0]["out_of"] == 26
    assert probe.to_dict()["concept_tokens"].startswith("'SpongeBob' in 2 context(s): 2 tokens")


def test_set_test_values_and_shapes(tiny_gpt2):
    test = baselines.set_test(tiny_gpt2, "SpongeBob", ["sea", "ocean", "fish"],
                              ["desert", "sand", "dune"], templates=["I like {x}."])
    n = tiny_gpt2.n_layers
    assert test.values_a.shape == (3, n) and test.values_b.shape == (3, n)
    assert test.result.exact and test.result.n_perm == math.comb(6, 3)
    np.testing.assert_allclose(test.result.observed,
                               test.values_a.mean(0) - test.values_b.mean(0))
    assert np.all((test.result.p > 0) & (test.result.p <= 1))
