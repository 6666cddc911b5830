"""Shared fixtures: tiny random-weight models and, for tests marked ``embedded``, the real one.

Nothing here reaches the network: HF_HUB_OFFLINE is set for the whole session, and tests
that need the hub's error path point it at a closed loopback port.
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from spyglass.model import gpt2_bpe, load_model, wrap
from spyglass.model.tiny import build_hf


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    return gpt2_bpe.hf_tokenizer()


def tiny_pair(arch: str, seed: int = 0):
    """A tiny Model and an untouched Hugging Face copy of the same weights for parity checks."""
    hf = build_hf(arch, seed=seed)
    reference = copy.deepcopy(hf)
    model = wrap(hf, gpt2_bpe.hf_tokenizer(), f"random:{arch}",
                 {"kind": "random", "architecture": arch, "seed": seed})
    return model, reference


@pytest.fixture(scope="session")
def tiny_gpt2():
    return tiny_pair("gpt2")[0]


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_pair("llama")[0]


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny_model_and_ref(request):
    return tiny_pair(request.param)


@pytest.fixture(scope="session")
def embedded_model():
    return load_model()


@pytest.fixture
def interrupt_shard(monkeypatch):
    """``interrupt_shard(n)``: the export's n-th shard computation raises KeyboardInterrupt,
    as Ctrl-C would in the middle of a run. ``monkeypatch.undo()`` lifts it."""
    from spyglass.hooks import batch

    real = batch.compute_shard

    def install(n: int) -> None:
        calls = {"n": 0}

        def stop(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr("spyglass.hooks.store.compute_shard", stop)

    return install
