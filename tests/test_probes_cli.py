"""``spyglass probe`` on the tiny random GPT-2: table, JSON and errors."""

from __future__ import annotations

import json

from spyglass.app.cli import main


def test_probe_json(capsys):
    code = main(["probe", "SpongeBob", "underwater", "--model", "random:gpt2", "--controls",
                 "20", "--templates", "I like {x}.", "Then {x} came.", "--pool", "last",
                 "--sets", "sea,ocean,fish", "desert,sand,dune", "--neighbours", "3",
                 "--json"])
    out = capsys.readouterr()
    assert code == 0
    data = json.loads(out.out)
    assert [r["layer"] for r in data["rows"]] == ["emb", "0", "1"]
    assert all(r["out_of"] == 21 and 1 <= r["rank"] <= 21 for r in data["rows"])
    assert data["templates"] == ["I like {x}.", "Then {x} came."]
    assert data["concept_tokens"] == ("'SpongeBob' in 2 context(s): 2 tokens ' Sponge'|'Bob', "
                                      "pooled by last token's vector")
    assert len(data["control_words"]) == 20
    assert data["sets"]["exact"] and data["sets"]["n_perm"] == 20  # C(6, 3) splits
    assert len(data["sets"]["p"]) == 2
    assert len(data["neighbours"]["vocab"]) == 3 and len(data["neighbours"]["context"]) == 3
    assert "probe" in out.err  # the progress bar goes to stderr


def test_probe_table(capsys):
    code = main(["probe", "Paris", "France", "--model", "random:gpt2", "--controls", "20",
                 "--measure", "euclidean"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Euclidean distance (lower is nearer)" in out
    lines = out.splitlines()
    header = lines.index(next(x for x in lines if x.split()[:2] == ["layer", "value"]))
    assert [x.split()[0] for x in lines[header + 1:header + 4]] == ["emb", "0", "1"]
    assert lines[header + 1].split()[-1].endswith("/21")


def test_probe_bad_template_is_a_clear_error(capsys):
    code = main(["probe", "Paris", "France", "--model", "random:gpt2", "--templates",
                 "no placeholder here"])
    err = capsys.readouterr().err
    assert code == 2
    assert "has no {x}" in err


def test_too_few_controls_for_a_nearest_five_percent_claim(capsys):
    # With 5 controls first place is the nearest sixth of the words; the table must not call
    # that "the nearest 5%".
    code = main(["probe", "Paris", "France", "--model", "random:gpt2", "--controls", "5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Too few controls (5) to speak of the nearest 5%" in out
    assert "Within the nearest 5%" not in out
    assert main(["probe", "Paris", "France", "--model", "random:gpt2", "--controls", "5",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nearest_5_percent"] is None


def test_bos_option_changes_what_is_read(capsys):
    args = ["probe", "Paris", "France", "--model", "random:gpt2", "--controls", "20",
            "--context", "Paris is big.", "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*args, "--bos"]) == 0
    with_bos = json.loads(capsys.readouterr().out)
    # The concept leads its sentence: with BOS it is read off the sink, so its values move.
    assert [r["value"] for r in plain["rows"]] != [r["value"] for r in with_bos["rows"]]
