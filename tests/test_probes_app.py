"""The Concepts page, run headless with Streamlit's AppTest on the tiny random Llama."""

from __future__ import annotations

import apptest_util
from apptest_util import chart, page
from streamlit.testing.v1 import AppTest

TEXT = "I watched SpongeBob underwater"


def open_page(**params: str) -> AppTest:
    return apptest_util.open_page("7_Concepts.py", TEXT, **params)


def test_concepts_page_from_a_shared_url():
    at = open_page(concept="SpongeBob", target="underwater", controls="30", layer="1",
                   read_in="your text", pool="last", measure="cosine")
    # The URL's view is the page's view.
    assert at.number_input[0].value == 30
    assert at.slider[0].value == 1

    similarity = chart(at, "similarity")
    xs = similarity["data"][3]["x"]
    assert xs == ["emb", "0", "1"]  # embedding rows, then each of the 2 blocks
    assert similarity["data"][3]["name"] == "underwater"
    # The rank shown counts the target among itself and 30 controls.
    assert at.metric[0].label == "Rank at layer 1"
    assert at.metric[0].value.endswith("of 31")
    assert "' Sponge'|'Bob', pooled by last token" in at.caption[0].value.replace("\\", "")

    words = list(at.dataframe[0].value["word"])
    assert len(words) == 10 and len(set(words)) == 10
    assert len(at.dataframe[1].value["token"]) == 10

    curve = chart(at, "probe_curve")
    assert curve["data"][0]["x"] == [0, 1]
    assert all(0 <= a <= 1 for a in curve["data"][0]["y"])
    assert all(0 <= a <= 1 for a in curve["data"][1]["y"])  # the shuffled baseline
    # Controls band: the 5th percentile never lies above the 95th.
    high, low = similarity["data"][0]["y"], similarity["data"][1]["y"]
    assert all(lo <= hi for lo, hi in zip(low, high, strict=True))


def test_concepts_page_reports_a_concept_missing_from_the_text():
    at = AppTest.from_file(page("7_Concepts.py"), default_timeout=120)
    at.query_params.update({"model": "random:llama", "text": TEXT, "concept": "Patrick",
                            "read_in": "your text", "controls": "20"})
    at.run()
    assert not at.exception
    assert "does not occur" in at.error[0].value


def test_concepts_page_with_an_emptied_set_says_what_to_type():
    at = AppTest.from_file(page("7_Concepts.py"), default_timeout=120)
    at.query_params.update({"model": "random:llama", "text": TEXT, "concept": "SpongeBob",
                            "target": "underwater", "read_in": "your text", "controls": "20",
                            "probe_a": "  \n"})
    at.run()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert any("Set A has 0 texts; give at least 5, one per line" in w for w in warnings)


def test_concepts_page_follows_the_bos_toggle_and_warns_about_the_sink():
    def run(bos: str) -> AppTest:
        at = AppTest.from_file(page("7_Concepts.py"), default_timeout=120)
        at.query_params.update({"model": "random:llama", "text": "SpongeBob swam underwater",
                                "concept": "SpongeBob", "target": "underwater",
                                "read_in": "your text", "controls": "20", "layer": "1",
                                "bos": bos})
        at.run()
        assert not at.exception
        return at

    without, with_bos = run("0"), run("1")
    # Without BOS the concept is position 0 of the text: the page says what that means.
    assert any("attention sink" in w.value for w in without.warning)
    assert not any("attention sink" in w.value for w in with_bos.warning)
    # And the probe really read the text both ways: the concept's curve differs.
    a = chart(without, "similarity")["data"][3]["y"]
    b = chart(with_bos, "similarity")["data"][3]["y"]
    assert a != b
