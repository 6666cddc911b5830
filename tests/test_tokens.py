"""Tokens: byte-faithful labels, spans, BOS, special strings, empty and over-long text.

Expected cuts are written out: they are GPT-2's real 50,257-token BPE (tiktoken and the
Hugging Face tokenizer built from the same files must agree).
"""

from __future__ import annotations

import pytest

from spyglass.hooks import capture
from spyglass.model import ContextLengthError, gpt2_bpe, label_for
from spyglass.model.tokens import tokenize

T3_TEXTS = ["an example “sentence” here", "∩", "🌊 SpongeBob"]


def cut(tokenizer, text, **kw):
    kw.setdefault("prepend_bos", False)
    kw.setdefault("n_ctx", 1024)
    return tokenize(tokenizer, text, **kw)


def test_label_shows_split_bytes_as_hex():
    assert label_for(b" \xe2\x80") == " ⟨e2 80⟩"
    assert label_for(b"\x9c") == "⟨9c⟩"
    assert label_for("“".encode()) == "“"
    assert label_for(b"ab\xf0\x9fcd") == "ab⟨f0 9f⟩cd"


@pytest.mark.parametrize("text", T3_TEXTS)
def test_t3_labels_are_byte_faithful(gpt2_tokenizer, text):
    for tokens in (cut(gpt2_tokenizer, text), gpt2_bpe.tokenize(text)):
        assert all("\ufffd" not in label for label in tokens.labels)
        assert tokens.text_bytes() == text.encode("utf-8")
        assert tokens.faithful


def test_t3_expected_cut_of_curly_quotes(gpt2_tokenizer):
    tokens = cut(gpt2_tokenizer, "an example “sentence” here")
    assert tokens.labels == (
        "an", " example", " ⟨e2 80⟩", "⟨9c⟩", "sent", "ence", "⟨e2 80⟩", "⟨9d⟩", " here"
    )
    assert tokens.ids == (272, 1672, 564, 250, 34086, 594, 447, 251, 994)
    # The two halves of the opening quote both point at the quote character (index 11).
    assert tokens.spans[2] == (10, 12) and tokens.spans[3] == (11, 12)


def test_hf_and_tiktoken_gpt2_agree(gpt2_tokenizer):
    text = "I watched SpongeBob underwater 🌊, quote: <|endoftext|> done"
    assert cut(gpt2_tokenizer, text).ids == gpt2_bpe.tokenize(text).ids


def test_t2_word_start_and_after_space_cut_differently(gpt2_tokenizer):
    alone = cut(gpt2_tokenizer, "SpongeBob")
    inside = cut(gpt2_tokenizer, "I watched SpongeBob underwater")
    assert alone.labels == ("Sp", "onge", "Bob")
    assert inside.labels == ("I", " watched", " Sponge", "Bob", " underwater")
    assert alone.ids == (4561, 14220, 18861)
    assert inside.ids[2:4] == (42681, 18861)


def test_t1_bos_is_its_own_label(gpt2_tokenizer):
    tokens = cut(gpt2_tokenizer, "The cat sat on the mat", prepend_bos=True)
    assert tokens.labels == ("<|endoftext|>", "The", " cat", " sat", " on", " the", " mat")
    assert tokens.ids[0] == 50256 and tokens.pieces[0] == b""
    assert tokens.text_bytes() == b"The cat sat on the mat"


def test_t4_special_string_stays_text_by_default(gpt2_tokenizer):
    text = "quote: <|endoftext|> done"
    as_text = cut(gpt2_tokenizer, text)
    assert 50256 not in as_text.ids
    assert as_text.labels == ("quote", ":", " <", "|", "end", "of", "text", "|", ">", " done")
    assert as_text.special == "text" and as_text.special_found == ("<|endoftext|>",)

    as_special = cut(gpt2_tokenizer, text, special="special")
    assert as_special.ids == (22708, 25, 220, 50256, 1760)
    assert as_special.special == "special"
    assert as_special.text_bytes() == text.encode()

    tik = gpt2_bpe.tokenize(text)
    assert 50256 not in tik.ids and tik.special_found == ("<|endoftext|>",)
    assert 50256 in gpt2_bpe.tokenize(text, special="special").ids


def test_t4_recorded_in_trace(tiny_gpt2):
    trace = capture(tiny_gpt2, "quote: <|endoftext|> done")
    assert trace.provenance["special_tokens"] == "text"
    assert trace.provenance["special_found"] == ["<|endoftext|>"]
    assert 50256 not in trace.tokens.ids


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_t5_empty_text_refused_before_forward(tiny_gpt2, monkeypatch, text):
    def no_forward(*args, **kwargs):
        raise AssertionError("the model must not run on empty text")

    monkeypatch.setattr(tiny_gpt2.bridge, "forward", no_forward)
    with pytest.raises(ValueError, match=r"empty|whitespace"):
        capture(tiny_gpt2, text)


def test_t6_over_context_names_both_lengths(tiny_gpt2):
    n_ctx = tiny_gpt2.n_ctx
    assert n_ctx == 64
    text = "word" + " word" * (n_ctx + 9)  # one token per word: 74 tokens
    assert len(cut(tiny_gpt2.tokenizer, text, n_ctx=10_000)) == n_ctx + 10
    with pytest.raises(ContextLengthError, match=r"74 tokens.*at most 64"):
        capture(tiny_gpt2, text)


def test_t6_truncation_keeps_first_n_ctx_and_is_recorded(tiny_gpt2):
    text = "word" + " word" * 73
    trace = capture(tiny_gpt2, text, truncate=True)
    assert len(trace.tokens) == 64
    assert trace.tokens.truncated_from == 74
    assert trace.provenance["truncation"] == {"original_tokens": 74, "kept_tokens": 64}
    full = cut(tiny_gpt2.tokenizer, text, n_ctx=10_000)
    assert trace.tokens.ids == full.ids[:64]
    assert trace["logits"].shape[0] == 64
