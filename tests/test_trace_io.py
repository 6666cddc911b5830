"""Saving and loading traces: exact round trips, no pickles, refusals that say why (E1, E2)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from safetensors.numpy import save_file

from spyglass.hooks import Trace, TraceFormatError, TraceMismatchError, capture
from spyglass.hooks.trace import META_PROVENANCE

TEXT = "The cat sat on the mat"


@pytest.fixture(scope="module")
def trace(tiny_llama):
    return capture(tiny_llama, TEXT, prepend_bos=True)


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_round_trip_is_exact(trace, tmp_path, suffix, no_unpickling):
    path = trace.save(tmp_path / f"t{suffix}")
    back = Trace.load(path)
    assert back.names == trace.names
    for name in trace.names:
        assert back[name].dtype == trace[name].dtype
        np.testing.assert_array_equal(back[name], trace[name])
    assert back.tokens == trace.tokens
    assert back.provenance == trace.provenance
    assert not list(tmp_path.glob(".*tmp")), "no temporary file is left behind"


def test_provenance_names_what_e2_needs(trace):
    prov = trace.provenance
    for key in ("model", "source", "hooks", "n_ctx", "prepend_bos", "dtype",
                "weight_processing", "versions", "time", "device", "truncation"):
        assert key in prov, key
    assert prov["prepend_bos"] is True and prov["n_ctx"] == 64
    assert prov["dtype"] == "float32" and prov["weight_processing"] == "none"
    assert set(prov["versions"]) == {"spyglass", "torch", "transformers", "transformer-lens"}


def test_e1_npz_is_written_without_pickles(trace, tmp_path):
    path = trace.save(tmp_path / "t.npz")
    with np.load(path, allow_pickle=False) as data:  # would raise on any object array
        assert all(data[n].dtype != object for n in data.files)


def test_e1_pickled_npz_is_refused_without_unpickling(tmp_path, no_unpickling):
    path = tmp_path / "evil.npz"
    np.savez(path, payload=np.array([{"a": 1}], dtype=object))
    with pytest.raises(TraceFormatError, match="pickled objects"):
        Trace.load(path)


def test_e1_foreign_safetensors_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"x": np.zeros(3, dtype=np.float32)}, str(path))
    with pytest.raises(TraceFormatError, match="lacks Spyglass metadata"):
        Trace.load(path)


def test_e1_not_a_trace_at_all(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00" * 20)
    with pytest.raises(TraceFormatError, match="not a readable safetensors"):
        Trace.load(path)


def test_e2_mismatch_is_reported_field_by_field(trace, tmp_path):
    path = trace.save(tmp_path / "t.safetensors")
    Trace.load(path, expect={"n_ctx": 64, "prepend_bos": True})  # matching: fine
    with pytest.raises(TraceMismatchError) as info:
        Trace.load(path, expect={"n_ctx": 1024, "prepend_bos": False, "dtype": "float32"})
    message = str(info.value)
    assert "n_ctx: file has 64, expected 1024" in message
    assert "prepend_bos: file has True, expected False" in message
    assert "dtype" not in message.split("—", 1)[1]


def test_inconsistent_metadata_is_refused(trace, tmp_path):
    prov = dict(trace.provenance)
    prov["hooks"] = prov["hooks"][1:]  # claims one array fewer than the file holds
    meta = trace._metadata()
    meta[META_PROVENANCE] = json.dumps(prov)
    path = tmp_path / "bad.safetensors"
    save_file({n: np.ascontiguousarray(a) for n, a in trace.arrays.items()}, str(path),
              metadata=meta)
    with pytest.raises(TraceFormatError, match="does not list"):
        Trace.load(path)

    prov = dict(trace.provenance)
    prov["n_tokens"] = 3
    meta[META_PROVENANCE] = json.dumps(prov)
    save_file({n: np.ascontiguousarray(a) for n, a in trace.arrays.items()}, str(path),
              metadata=meta)
    with pytest.raises(TraceFormatError, match="3 tokens"):
        Trace.load(path)


def test_subset_and_bytes(trace, tmp_path):
    small = trace.subset(["logits"])
    raw = small.to_bytes("npz")
    path = tmp_path / "s.npz"
    path.write_bytes(raw)
    back = Trace.load(path)
    assert back.names == ["logits"]
    np.testing.assert_array_equal(back["logits"], trace["logits"])
