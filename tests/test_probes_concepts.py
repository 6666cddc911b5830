"""Concept representations: which tokens are pooled, batching parity, similarity, neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from spyglass.hooks import CaptureSpec, capture
from spyglass.probes import concepts

RESID = CaptureSpec(kinds=("resid_post",))


def test_t2_probe_uses_the_form_in_the_context(tiny_gpt2):
    # HANDED T2 with GPT-2's BPE: the word alone and after a space are cut differently.
    assert tiny_gpt2.tokenize("SpongeBob").labels == ("Sp", "onge", "Bob")
    assert tiny_gpt2.tokenize("I watched SpongeBob underwater").labels == (
        "I", " watched", " Sponge", "Bob", " underwater")

    mid = concepts.context_vectors(tiny_gpt2, "SpongeBob", ["I watched SpongeBob underwater"])
    start = concepts.context_vectors(tiny_gpt2, "SpongeBob", ["SpongeBob lives in the sea."])
    assert mid.occurrences[0].labels == (" Sponge", "Bob")
    assert mid.occurrences[0].positions == (2, 3)
    assert start.occurrences[0].labels == ("Sp", "onge", "Bob")
    assert start.occurrences[0].positions == (0, 1, 2)
    assert mid.describe() == ("'SpongeBob' in 1 context(s): 2 tokens ' Sponge'|'Bob', "
                              "pooled by mean of their vectors")
    assert "3 tokens 'Sp'|'onge'|'Bob'" in start.describe()
    # Without context, the word is looked up in its mid-sentence form, and says so.
    alone = concepts.embedding_vectors(tiny_gpt2, ["SpongeBob"]).words[0]
    assert (alone.form, alone.labels) == (" SpongeBob", (" Sponge", "Bob"))
    bare = concepts.embedding_vectors(tiny_gpt2, ["SpongeBob"], leading_space=False).words[0]
    assert bare.labels == ("Sp", "onge", "Bob")


@pytest.mark.parametrize("pool", concepts.POOLS)
def test_context_vectors_equal_single_runs(tiny_llama, pool):
    # Contexts of different lengths share padded batches; each must equal its own run.
    contexts = ["A {x} here.", "We walked by the old {x} at night, twice.", "{x}!",
                "One {x}, and another {x} later."]
    word = "SpongeBob"
    for budget in (8, 4096):  # one text per batch, and everything in one batch
        got = concepts.context_vectors(tiny_llama, word, contexts, pool=pool,
                                       batch_tokens=budget)
        assert got.vectors.shape == (5, tiny_llama.n_layers, tiny_llama.d_model)
        assert len(got.occurrences) == 5  # the last context holds the word twice
        for occ, vec in zip(got.occurrences, got.vectors, strict=True):
            trace = capture(tiny_llama, occ.context, RESID)
            rows = np.stack([trace[f"blocks.{x}.hook_resid_post"][list(occ.positions)]
                             for x in range(tiny_llama.n_layers)], axis=1)  # (tok, layer, d)
            want = {"mean": rows.mean(0), "last": rows[-1], "first": rows[0]}[pool]
            # Same ops on padded vs unpadded input: tolerance 1e-5 for summation order.
            np.testing.assert_allclose(vec, want, atol=1e-5)


def test_context_vectors_layers_and_errors(tiny_gpt2):
    got = concepts.context_vectors(tiny_gpt2, "sea", ["The sea is calm."], layers=[1])
    assert got.layers == (1,) and got.vectors.shape == (1, 1, tiny_gpt2.d_model)
    with pytest.raises(ValueError, match="does not occur"):
        concepts.context_vectors(tiny_gpt2, "sea", ["The season is over."])
    with pytest.raises(ValueError, match="pool"):
        concepts.context_vectors(tiny_gpt2, "sea", pool="max")
    with pytest.raises(ValueError, match="Layers"):
        concepts.context_vectors(tiny_gpt2, "sea", layers=[7])


def test_default_templates_put_the_word_mid_sentence(tiny_gpt2):
    got = concepts.context_vectors(tiny_gpt2, "underwater")
    assert len(got.occurrences) == len(concepts.DEFAULT_TEMPLATES) == 5
    assert {o.labels for o in got.occurrences} == {(" underwater",)}
    assert all(o.exact for o in got.occurrences)


def test_find_occurrences_whole_words_only(gpt2_tokenizer, tiny_gpt2):
    tokens = tiny_gpt2.tokenize("sea, season, the sea.")
    found = concepts.find_occurrences(tokens, "sea")
    assert [(o.start, o.end) for o in found] == [(0, 3), (17, 20)]
    assert [o.labels for o in found] == [("sea",), (" sea",)]


def test_embedding_vectors_are_pooled_rows(tiny_gpt2):
    matrix = concepts.embedding_matrix(tiny_gpt2)
    got = concepts.embedding_vectors(tiny_gpt2, ["cat", "SpongeBob"], pool="last")
    ids = [w.ids for w in got.words]
    assert ids[0] == (3797,)  # ' cat'
    np.testing.assert_array_equal(got.vectors[0], matrix[3797])
    np.testing.assert_array_equal(got.vectors[1], matrix[ids[1][-1]])
    mean = concepts.embedding_vectors(tiny_gpt2, ["SpongeBob"]).vectors[0]
    np.testing.assert_allclose(mean, matrix[list(ids[1])].mean(0), rtol=1e-6)


def test_similarity_values():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])  # (layer, d)
    b = np.array([[0.0, 2.0], [2.0, 2.0]])
    np.testing.assert_allclose(concepts.similarity(a, b), [0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(concepts.similarity(a, b, metric="euclidean"),
                               [np.sqrt(5), np.sqrt(2)])
    # Centering on (1, 1): layer 0 becomes (0, -1) vs (-1, 1): cosine -1/sqrt(2).
    center = np.array([1.0, 1.0])
    np.testing.assert_allclose(concepts.similarity(a[:1], b[:1], center=center),
                               [-1 / np.sqrt(2)])
    # Distances ignore centering.
    np.testing.assert_allclose(concepts.similarity(a, b, center=center, metric="euclidean"),
                               [np.sqrt(5), np.sqrt(2)])
    with pytest.raises(ValueError, match="metric"):
        concepts.similarity(a, b, metric="dot")


def test_vocab_neighbours_find_the_row_itself(tiny_gpt2):
    matrix = concepts.embedding_matrix(tiny_gpt2)
    near = concepts.vocab_neighbours(tiny_gpt2, matrix[3797], k=3, center=False)
    assert near[0].token_id == 3797 and near[0].label == " cat"
    assert near[0].score == pytest.approx(1.0, abs=1e-6)
    assert near[0].score >= near[1].score >= near[2].score
    skipped = concepts.vocab_neighbours(tiny_gpt2, matrix[3797], k=3, exclude=[3797])
    assert 3797 not in [n.token_id for n in skipped]


def test_context_neighbours_order():
    reference = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    near = concepts.context_neighbours(np.array([1.0, 0.1]), reference, ["x", "y", "xy"], k=2)
    assert [n.label for n in near] == ["x", "xy"]
    far = concepts.context_neighbours(np.array([0.0, 0.9]), reference, ["x", "y", "xy"], k=1,
                                      metric="euclidean")
    assert far[0].label == "y" and far[0].score == pytest.approx(0.1)
