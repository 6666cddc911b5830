"""``spyglass capture`` on the tiny random GPT-2: output, saving, and refusals in CLI terms."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from spyglass.app.cli import main
from spyglass.hooks import Trace

MODEL = ["--model", "random:gpt2"]


def test_json_summary_and_saved_trace(tmp_path, capsys):
    out = tmp_path / "t.safetensors"
    code = main(["capture", "The cat sat on the mat", *MODEL, "--out", str(out), "--json",
                 "--top", "3"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert "".join(summary["tokens"]) == "The cat sat on the mat"
    assert len(summary["next"]) == 3
    assert summary["estimated_bytes"] == summary["bytes"]
    back = Trace.load(out)
    assert list(back.labels) == summary["tokens"]
    assert back.provenance["model"] == "random:gpt2"
    last = back["logits"][-1].astype(np.float64)
    probs = np.exp(last - last.max()) / np.exp(last - last.max()).sum()
    assert summary["next"][0]["id"] == int(probs.argmax())
    assert summary["next"][0]["prob"] == pytest.approx(float(probs.max()), rel=1e-5)


def test_saved_file_gets_ordinary_permissions(tmp_path, capsys):
    # Temp-then-rename must not leave the 0600 mode that mkstemp gives: a shared results
    # folder would then hide every trace from colleagues.
    # safetensors' own writer makes 0600 files too.
    before = os.umask(0o022)
    try:
        for name in ("t.npz", "t.safetensors"):
            assert main(["capture", "Hello there", *MODEL, "--out", str(tmp_path / name)]) == 0
    finally:
        os.umask(before)
    for name in ("t.npz", "t.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


@pytest.mark.parametrize("name", ["t.pt", "t.pkl", "trace"])
def test_unknown_suffix_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch, name):
    def no_model(*args, **kwargs):
        raise AssertionError("model loaded for a capture that cannot be saved")

    monkeypatch.setattr("spyglass.app.commands.capture.load_model", no_model)
    code = main(["capture", "Hello", *MODEL, "--out", str(tmp_path / name)])
    err = capsys.readouterr().err
    assert code == 1
    assert "name it .safetensors or .npz" in err and "never pickled" in err
    assert list(tmp_path.iterdir()) == []


def test_long_text_prints_head_and_tail_of_the_labels(capsys):
    text = " ".join(f"w{i}" for i in range(30))
    assert main(["capture", text, *MODEL, "--kinds", "logits", "--show", "8"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "more ..." in first and first.count("|") < 12
    assert main(["capture", text, *MODEL, "--kinds", "logits", "--json"]) == 0
    assert "".join(json.loads(capsys.readouterr().out)["tokens"]) == text


def test_refusals_name_the_flags_that_fix_them(capsys):
    long_text = "word" + " word" * 80  # 81 tokens; the tiny model reads 64
    assert main(["capture", long_text, *MODEL]) == 1
    err = capsys.readouterr().err
    assert "81 tokens" in err and "--truncate" in err
    assert main(["capture", long_text, *MODEL, "--truncate", "--kinds", "logits"]) == 0
    capsys.readouterr()

    assert main(["capture", "Hello there", *MODEL, "--max-mib", "0.001"]) == 1
    err = capsys.readouterr().err
    assert "over the limit" in err
    assert "--kinds, --layers or --hooks" in err and "--max-mib" in err


def test_default_limit_refuses_instead_of_being_killed(capsys, monkeypatch):
    # A 9,000-word text once ran into the kernel's OOM killer: the full capture needs
    # ~145 GiB. The default limit comes from the memory available; here it is made small.
    monkeypatch.setattr("spyglass.app.commands.capture.default_limit", lambda: 2**20)
    assert main(["capture", "Hello there, how are you today?", *MODEL]) == 1
    err = capsys.readouterr().err
    assert "over the limit of 1.0 MiB" in err
    assert main(["capture", "Hello there, how are you today?", *MODEL, "--kinds",
                 "resid_post"]) == 0


def test_hooks_and_kinds_together_are_refused(capsys):
    code = main(["capture", "Hello", *MODEL, "--hooks", "blocks.0.hook_resid_post",
                 "--layers", "1"])
    assert code == 2
    assert "either --hooks or --kinds/--layers" in capsys.readouterr().err


def test_a_spec_that_keeps_nothing_is_refused(capsys):
    # Llama-style models have no positional embedding hook.
    assert main(["capture", "Hello", "--model", "random:llama", "--kinds", "pos_embed"]) == 1
    assert "Nothing to keep" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("spyglass.app.commands.capture.capture", interrupted)
    assert main(["capture", "Hello", *MODEL]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "spyglass capture: interrupted"


def test_a_failing_safetensors_write_is_an_os_error(tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    monkeypatch.setattr("safetensors.numpy.save_file", full_disk)
    assert main(["capture", "Hello", *MODEL, "--out", str(tmp_path / "t.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "free some space" in err
    assert list(tmp_path.iterdir()) == []  # no temp file left


def test_app_refuses_a_busy_port_before_printing_its_address(capsys, monkeypatch):
    import socket

    def no_exec(*args):
        raise AssertionError("tried to start Streamlit on a busy port")

    monkeypatch.setattr("os.execve", no_exec)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["app", "--port", str(port)]) == 1
    out = capsys.readouterr()
    assert f"127.0.0.1:{port} is already in use" in out.err and "--port" in out.err
    assert "http://" not in out.out
