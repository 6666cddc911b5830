"""Browser cases B1-B4 of HANDED.md, run with Streamlit's AppTest on tiny models."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psutil
import pytest
from streamlit.testing.v1 import AppTest

import spyglass.app
from spyglass.app import state

APP = Path(spyglass.app.__file__).resolve().parent
PAGES = ["Home.py", *(p.name for p in sorted((APP / "pages").glob("[1-6]_*.py")))]
TIMEOUT = 120
B2_TEXT = "the cat saw the dog and the"
B3_TEXT = 'x<script>alert(1)</script> a<b<c say "hi"'
# RSS may move by allocator noise between reruns; a second model or trace copy per rerun
# would add far more than this.
RSS_TOLERANCE = 25 * 2**20


def page_path(name: str) -> str:
    return str(APP / name) if name == "Home.py" else str(APP / "pages" / name)


def run(name: str, **params: str) -> AppTest:
    at = AppTest.from_file(page_path(name), default_timeout=TIMEOUT)
    at.query_params.update(params)
    at.run()
    assert not at.exception, at.exception
    return at


def specs(at: AppTest) -> dict[str, dict]:
    return {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec)
            for c in at.get("plotly_chart")}


@pytest.fixture
def cold_model_cache():
    """Start with no model loaded by the app, and count loads from zero."""
    state._load_cached.clear()
    state.TRACES.clear()
    state.TRACES.computed = 0
    state.LOADS.clear()
    yield
    state._load_cached.clear()


def test_b1_model_loaded_once_and_memory_flat_across_widget_changes(cold_model_cache):
    at = run("1_Attention.py", model="random:llama", text=B2_TEXT)
    at.sidebar.slider(key="sg:w:head").set_value(1).run()  # let first-use caches settle
    process = psutil.Process()
    before = process.memory_info().rss

    changes = [
        lambda: at.sidebar.slider(key="sg:w:head").set_value(3),
        lambda: at.sidebar.slider(key="sg:w:layer").set_value(1),
        lambda: at.sidebar.radio(key="sg:w:first").set_value("rescale"),
        lambda: at.sidebar.slider(key="sg:w:head").set_value(0),
        lambda: at.sidebar.radio(key="sg:w:first").set_value("hide"),
    ]
    for change in changes:
        change().run()
        assert not at.exception
    after = process.memory_info().rss

    assert state.LOADS == {"random:llama": 1}
    assert state.TRACES.computed == 1
    assert after - before < RSS_TOLERANCE, f"RSS grew by {(after - before) / 2**20:.1f} MiB"


@pytest.mark.parametrize(("bos", "expected"), [
    ("0", ["0: the", "1: ␣cat", "2: ␣saw", "3: ␣the", "4: ␣dog", "5: ␣and", "6: ␣the"]),
    ("1", ["0: &lt;|endoftext|&gt;", "1: the", "2: ␣cat", "3: ␣saw", "4: ␣the", "5: ␣dog",
           "6: ␣and", "7: ␣the"]),
])
def test_b2_heatmap_has_one_row_and_column_per_token(bos, expected):
    at = run("1_Attention.py", model="random:gpt2", text=B2_TEXT, bos=bos)
    fig = specs(at)["heatmap"]
    heat = fig["data"][0]
    assert heat["y"] == expected and heat["x"] == expected
    for axis in ("xaxis", "yaxis"):
        assert fig["layout"][axis]["tickvals"] == expected
        assert fig["layout"][axis]["ticktext"] == expected
        assert fig["layout"][axis]["type"] == "category"


@pytest.mark.parametrize("name", PAGES)
def test_b3_token_text_is_escaped_everywhere(name):
    at = run(name, model="random:gpt2", text=B3_TEXT, words='<b>x</b>, a<b<c, say "hi"',
             query="3")
    html = [h.proto.body for h in at.get("html")]
    figs = specs(at)
    blob = "\n".join(html + [json.dumps(f) for f in figs.values()])
    assert "<script" not in blob and "<b>x" not in blob and "a<b<c" not in blob
    assert '"hi"' not in "\n".join(html)
    if name == "Home.py":
        # Chips: "<" and ">" are tokens of their own here.
        assert ">&lt;</span>" in html[0] and ">&gt;</span>" in html[0]
        assert ">&#34;</span>" in html[0]
        assert 'title="position 1 · id 27"' in html[0]  # the "<" token, id shown on hover
        # Tables draw text literally: the label is the character itself.
        assert list(at.dataframe[0].value["token"])[1:4] == ["<", "script", ">"]
    if name == "1_Attention.py":
        ticks = figs["heatmap"]["layout"]["yaxis"]["ticktext"]
        assert ticks[1] == "1: &lt;" and "&#34;" in ticks[-1]
    if name == "3_Embeddings.py":
        assert figs["similarity"]["data"][0]["x"] == [
            "&lt;b&gt;x&lt;/b&gt;", "a&lt;b&lt;c", "say &#34;hi&#34;"]
    if name == "2_QKV.py":
        assert at.code[0].value == ">"  # the query token, shown literally by st.code


@pytest.fixture
def one_script_cache_lock(monkeypatch):
    """Compile scripts one at a time, as the real server does.

    The server shares one locked ScriptCache among sessions; each AppTest has its own, so ten
    threads compile the page at once, and CPython 3.11's parser is not safe for that (seen
    here: "SystemError: AST constructor recursion depth mismatch"). That is the harness's
    race, not the app's, so the test takes the server's lock back.
    """
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache

    lock = threading.Lock()
    real = ScriptCache.get_bytecode

    def get_bytecode(self, script_path):
        with lock:
            return real(self, script_path)

    monkeypatch.setattr(ScriptCache, "get_bytecode", get_bytecode)


def test_b4_ten_sessions_at_once_share_one_model(cold_model_cache, one_script_cache_lock):
    results: dict[int, AppTest] = {}
    errors: dict[int, BaseException] = {}

    def session(i: int) -> None:
        # Ten scripts on two cores: allow for a slow machine, and keep any thread's error.
        at = AppTest.from_file(page_path("1_Attention.py"), default_timeout=3 * TIMEOUT)
        at.query_params.update({"model": "random:gpt2", "text": f"session {i} says hi"})
        try:
            results[i] = at.run()
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=session, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors, errors
    assert sorted(results) == list(range(10))
    assert state.LOADS == {"random:gpt2": 1}
    for i, at in results.items():
        assert not at.exception
        # Each session sees its own text.
        assert specs(at)["heatmap"]["data"][0]["y"][1] == f"1: ␣{i}"
    assert state.TRACES.computed == 10
