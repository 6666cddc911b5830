"""Tiny random-weight models, built from configs with no download.

They exist for tests and demos of the machinery (``random:gpt2``, ``random:llama``): every
hook fires and every shape is right, but their predictions mean nothing. Both use GPT-2's
real 50,257-token BPE, so the tokenizer path is the real one.
"""

from __future__ import annotations

from typing import Any

ARCHS = ("gpt2", "llama")


def build_hf(arch: str, seed: int = 0, n_layers: int = 2, n_ctx: int = 64) -> Any:
    """A randomly initialised Hugging Face causal LM with a handful of dimensions."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from spyglass.model.gpt2_bpe import hf_tokenizer

    vocab = len(hf_tokenizer())
    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=n_layers, n_head=4,
                         n_positions=n_ctx, bos_token_id=50256, eos_token_id=50256)
        model = GPT2LMHeadModel(cfg)
    elif arch == "llama":
        # Four query heads sharing two key/value heads: exercises grouped-query attention.
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=n_layers, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=n_ctx,
                          bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(f"Unknown tiny architecture {arch!r}; choose from {ARCHS}.")
    model.config._attn_implementation = "eager"
    return model.eval()


def load_tiny(arch: str, seed: int = 0, n_layers: int = 2, n_ctx: int = 64) -> Any:
    """A tiny random model wrapped like any other :class:`~spyglass.model.Model`."""
    from spyglass.model.gpt2_bpe import hf_tokenizer
    from spyglass.model.loader import wrap

    hf = build_hf(arch, seed=seed, n_layers=n_layers, n_ctx=n_ctx)
    source = {"kind": "random", "architecture": arch, "seed": seed, "n_layers": n_layers,
              "n_ctx": n_ctx}
    return wrap(hf, hf_tokenizer(), f"random:{arch}", source)
