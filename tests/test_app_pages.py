"""Every page of the Streamlit app, run headless with Streamlit's AppTest on tiny models."""

from __future__ import annotations

import base64
import json
import re
import sys

import apptest_util
import numpy as np
import pytest
from apptest_util import TIMEOUT, chart, page
from streamlit.testing.v1 import AppTest

from spyglass.app import state
from spyglass.hooks import Trace

TEXT = "the cat saw the dog and the"


def open_page(name: str, text: str = TEXT, **params: str) -> AppTest:
    return apptest_util.open_page(name, text, **params)


def plain(markdown: str) -> str:
    """Markdown text as shown: backslash escapes removed (see state.md)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def numbers(value: list | dict) -> np.ndarray:
    """A Plotly array from figure JSON: a plain list, or a typed array (dtype, bdata, shape)."""
    if not isinstance(value, dict):
        return np.asarray(value, dtype=float)
    flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    shape = value.get("shape")
    if isinstance(shape, str):
        shape = [int(x) for x in shape.split(",")]
    return flat.reshape(shape) if shape else flat


def html_bodies(at: AppTest) -> list[str]:
    return [h.proto.body for h in at.get("html")]


@pytest.fixture
def forwards(monkeypatch):
    """Counts forward passes of any model in this process, from a cold trace cache."""
    module = sys.modules["spyglass.hooks.capture"]
    real = module.forward
    count = {"n": 0}

    def counting(*args, **kwargs):
        count["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "forward", counting)
    state.TRACES.clear()
    return count


def test_home_shows_both_cuts_predictions_and_surprisal():
    at = open_page("Home")
    strips = html_bodies(at)
    assert "random:llama: 7 tokens" in strips[0]
    assert "GPT-2 BPE (50,257 tokens): 7 tokens" in strips[1]
    # Whitespace made visible, ids on hover.
    assert ">␣cat</span>" in strips[0] and 'title="position 1 · id 3797"' in strips[0]
    table = at.dataframe[0].value
    assert list(table["token"]) == ["the", "␣cat", "␣saw", "␣the", "␣dog", "␣and", "␣the"]
    assert np.isnan(table["surprisal (bits)"][0]) and table["surprisal (bits)"][1:].notna().all()
    top10 = chart(at, "top10")
    assert len(top10["layout"]["yaxis"]["ticktext"]) == 10


def test_home_bos_toggle_adds_a_position():
    at = open_page("Home")
    at.sidebar.toggle[0].set_value(True).run()
    assert at.query_params["bos"] == ["1"] or at.query_params["bos"] == "1"
    assert list(at.dataframe[0].value["token"])[:2] == ["<|endoftext|>", "the"]


def test_model_load_failure_is_a_message_not_a_traceback(tmp_path):
    at = AppTest.from_file(page("Home"), default_timeout=TIMEOUT)
    at.query_params.update({"model": str(tmp_path), "text": TEXT})
    at.run()
    assert not at.exception
    assert len(at.error) == 1
    assert f"{tmp_path} has no config.json" in plain(at.error[0].value)
    assert at.sidebar.text_input[0].value == str(tmp_path)


def test_attention_heatmap_overview_and_scores():
    at = open_page("1_Attention.py", layer="1", head="2")
    fig = chart(at, "heatmap")
    assert fig["layout"]["yaxis"]["ticktext"][3] == "3: ␣the"
    assert len(fig["data"][0]["y"]) == 7 and len(fig["data"][0]["x"]) == 7
    overview = chart(at, "overview")
    assert overview["layout"]["xaxis"]["ticktext"] == ["L0", "L1"]
    assert overview["layout"]["yaxis"]["ticktext"] == ["H0", "H1", "H2", "H3"]
    for key in ("score_entropy", "score_first", "score_previous"):
        assert chart(at, key)["data"][0]["type"] == "heatmap"
    assert "Layer 1, head 2 (shares key/value head 1)" in at.caption[0].value


def test_attention_switching_head_and_layer_never_runs_the_model(forwards):
    at = open_page("1_Attention.py")
    assert forwards["n"] == 1
    first = chart(at, "heatmap")["data"][0]["z"]
    at.sidebar.slider(key="sg:w:head").set_value(3).run()
    at.sidebar.slider(key="sg:w:layer").set_value(1).run()
    at.sidebar.radio(key="sg:w:first").set_value("rescale").run()
    assert forwards["n"] == 1
    assert chart(at, "heatmap")["data"][0]["z"] != first
    assert at.query_params["head"] in ("3", ["3"]) and at.query_params["layer"] in ("1", ["1"])


def test_attention_first_column_hidden_drops_key_zero():
    at = open_page("1_Attention.py", first="hide")
    fig = chart(at, "heatmap")
    assert len(fig["data"][0]["y"]) == 7
    assert len(fig["data"][0]["x"]) == 6 and fig["data"][0]["x"][0] == "1: ␣cat"


def test_attention_long_text_window_and_downsampling(monkeypatch):
    monkeypatch.setattr(state, "ATTENTION_MAX_SIDE", 8)
    text = " ".join(["word"] * 20)
    at = open_page("1_Attention.py", text=text)
    fig = chart(at, "heatmap")
    assert len(fig["data"][0]["y"]) == 8 and len(fig["data"][0]["x"]) == 8
    assert "window of 8 positions (0–7)" in at.info[0].value
    at.sidebar.slider(key="sg:w:start").set_value(5).run()
    assert chart(at, "heatmap")["data"][0]["y"][0] == "5: ␣word"
    at.sidebar.radio(key="sg:w:view").set_value("downsample").run()
    fig = chart(at, "heatmap")
    assert len(fig["data"][0]["y"]) == 8
    assert "downsampled on the server to 8×8 blocks" in at.info[0].value


def test_attention_clicking_a_tile_opens_that_head():
    at = open_page("1_Attention.py")
    # Send the selection event the browser sends for a click on the marker over tile
    # (layer 1, head 2): curve 1, point 1 * n_heads + 2. AppTest has no setter for chart
    # selections, so the widget state is added to the next run by hand.
    overview = next(c for c in at.get("plotly_chart") if c.proto.id.endswith("-overview"))
    event = {"selection": {"points": [{"curve_number": 1, "point_index": 6}],
                           "point_indices": [6], "box": [], "lasso": []}}
    states = at._tree.get_widget_states()
    clicked = states.widgets.add()
    clicked.id = overview.proto.id
    clicked.string_value = json.dumps(event)
    at._run(states)
    assert not at.exception
    assert at.sidebar.slider(key="sg:w:layer").value == 1
    assert at.sidebar.slider(key="sg:w:head").value == 2
    assert at.caption[0].value.startswith("Layer 1, head 2")


def test_qkv_steps_match_the_model(forwards):
    at = open_page("2_QKV.py", layer="1", head="3", query="5")
    assert forwards["n"] == 1
    assert "query head 3 reads key/value head 1, shared by query heads 2, 3" in at.info[0].value
    gaps = [c.value for c in at.caption if c.value.startswith("Largest difference")]
    assert len(gaps) == 3
    for text in gaps:
        assert float(text.rsplit(" ", 1)[1].rstrip(".")) < 1e-4
    assert len(chart(at, "q")["data"][0]["x"]) == 8  # d_head
    assert chart(at, "k")["data"][0]["y"][-1] == "5: ␣and"  # keys up to the query
    assert len(chart(at, "weights")["data"][0]["x"]) == 6
    assert any("after rotation" in c.value for c in at.caption)
    at.sidebar.slider(key="sg:w:query").set_value(2).run()
    assert len(chart(at, "weights")["data"][0]["x"]) == 3
    assert forwards["n"] == 1


def test_qkv_on_gpt2_has_no_rotation_or_sharing():
    at = open_page("2_QKV.py", model="random:gpt2")
    assert not at.info
    assert not any("after rotation" in c.value for c in at.caption)


def test_embeddings_templates_and_your_text():
    at = open_page("3_Embeddings.py", text="I saw SpongeBob underwater near a pineapple")
    sim = chart(at, "similarity")
    assert sim["data"][0]["x"] == ["SpongeBob", "underwater", "pineapple", "desert", "taxes"]
    z = numbers(sim["data"][0]["z"])
    np.testing.assert_allclose(np.diag(z), 1.0, atol=1e-6)
    lines = chart(at, "lines")
    assert len(lines["data"]) == 10  # 5 words -> 10 pairs
    assert lines["data"][0]["x"] == ["embedding", "block 0", "block 1"]
    assert len(chart(at, "pca")["data"][0]["text"]) == 5
    assert len(at.dataframe[0].value) == 10  # nearest neighbours
    at.radio(key="sg:w:source").set_value("your text").run()
    assert "desert, taxes" in plain(at.warning[0].value)
    assert chart(at, "similarity")["data"][0]["x"] == ["SpongeBob", "underwater", "pineapple"]


def test_neurons_table_text_and_export_notice():
    at = open_page("4_Neurons.py", layer="1", neuron="7")
    table = at.dataframe[0].value
    assert len(table) == 7 and list(table.columns[:3]) == ["position", "token", "#1"]
    body = html_bodies(at)[0]
    assert body.count("neuron 7 ·") == 7
    assert chart(at, "neuron_bar")["layout"]["title"]["text"] == "neuron 7 at each position"
    # Either the corpus section works or it says plainly why not.
    try:
        import spyglass.probes.neurons  # noqa: F401
    except ImportError:
        assert any("Corpus search is not available" in i.value for i in at.info)
    else:
        assert any(t.label.startswith("Export folder") for t in at.text_input)


def test_logit_lens_grid():
    at = open_page("5_Logit_lens.py")
    fig = chart(at, "lens")
    assert fig["data"][0]["y"] == ["L0", "L1"]
    assert len(fig["data"][0]["x"]) == 7 and fig["data"][0]["x"][6] == "6: ␣the"
    assert len(at.dataframe[0].value) == 2


def test_export_size_matches_the_file_it_would_write():
    at = open_page("6_Export.py", kinds="resid_post,pattern", layers="1")
    metric = at.metric[0].value
    ctx_model = state._load_cached("random:llama")
    trace = state.get_trace(ctx_model, TEXT, False).trace
    expected = trace.subset(["blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"])
    data = expected.to_bytes("safetensors")
    assert metric.startswith(f"{len(data):,} bytes")
    at.radio(key="sg:w:fmt").set_value("npz").run()
    npz = expected.to_bytes("npz")
    assert at.metric[0].value.startswith(f"{len(npz):,} bytes")
    assert at.get("download_button")[0].proto.label == "Download trace"


def test_export_written_file_loads_back(tmp_path):
    model = state._load_cached("random:llama")
    trace = state.get_trace(model, TEXT, False).trace
    path = tmp_path / "t.safetensors"
    path.write_bytes(trace.subset(["blocks.0.hook_resid_post"]).to_bytes("safetensors"))
    loaded = Trace.load(path)
    assert loaded.names == ["blocks.0.hook_resid_post"]
    assert loaded.tokens.labels == trace.tokens.labels


def test_url_reopens_the_same_view_and_pages_share_it(forwards):
    at = open_page("Home")
    at.switch_page("pages/1_Attention.py").run()
    at.sidebar.slider(key="sg:w:layer").set_value(1).run()
    at.sidebar.slider(key="sg:w:head").set_value(2).run()
    at.sidebar.radio(key="sg:w:first").set_value("hide").run()
    url = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert url == {"model": "random:llama", "text": TEXT, "bos": "0", "layer": "1",
                   "head": "2", "first": "hide"}

    # A new session opened from the copied URL shows the same view.
    again = AppTest.from_file(page("1_Attention.py"), default_timeout=TIMEOUT)
    again.query_params.update(url)
    again.run()
    assert again.sidebar.slider(key="sg:w:layer").value == 1
    assert again.sidebar.slider(key="sg:w:head").value == 2
    assert again.sidebar.radio(key="sg:w:first").value == "hide"
    assert chart(again, "heatmap") == chart(at, "heatmap")

    # Moving to another page keeps the layer and head and does not run the model.
    at.switch_page("pages/2_QKV.py").run()
    assert not at.exception
    assert at.sidebar.slider(key="sg:w:layer").value == 1
    assert at.sidebar.slider(key="sg:w:head").value == 2
    assert forwards["n"] == 1


def test_neurons_open_an_export_folder(tmp_path):
    store = pytest.importorskip("spyglass.hooks.store")
    corpus = pytest.importorskip("spyglass.hooks.corpus")
    from spyglass.probes.neurons import top_contexts

    text = tmp_path / "corpus.txt"
    text.write_text("the cat saw the dog\na dog saw a <b>cat</b>\nthe end\n", encoding="utf-8")
    model = state._load_cached("random:llama")
    job = store.prepare_export(model, corpus.CorpusSpec(text), tmp_path / "export",
                               store.ExportConfig(hooks=("blocks.*.mlp.hook_post",),
                                                  neuron_top_k=8))
    job.run()
    expected = top_contexts(tmp_path / "export", 1, 5, top=8)

    at = open_page("4_Neurons.py", layer="1", neuron="5", export=str(tmp_path / "export"))
    table = at.dataframe[-1].value  # the last table: the corpus contexts
    assert list(table["value"]) == [round(r["value"], 4) for r in expected]
    assert list(table["token"]) == [state.visible(r["token"]) for r in expected]

    at.text_input(key="sg:w:export").set_value(str(tmp_path / "missing")).run()
    assert "Could not read" in plain(at.error[0].value)


def test_default_model_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("SPYGLASS_MODEL", "random:gpt2")
    at = AppTest.from_file(page("Home"), default_timeout=TIMEOUT)
    at.query_params["text"] = TEXT
    at.run()
    assert not at.exception
    assert at.sidebar.selectbox(key="sg:w:model_pick").value == "random:gpt2"
    assert "random:gpt2: 7 tokens" in html_bodies(at)[0]
