"""Helpers shared by the AppTest-based page tests."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

import spyglass.app

APP = Path(spyglass.app.__file__).resolve().parent
TIMEOUT = 120


def page(name: str) -> str:
    """Path of a page script: ``"Home"`` or a file name under ``pages/``."""
    return str(APP / "Home.py") if name == "Home" else str(APP / "pages" / name)


def open_page(name: str, text: str, model: str = "random:llama", **params: str) -> AppTest:
    """Run a page once with its view given as URL query parameters; fail on any error."""
    at = AppTest.from_file(page(name), default_timeout=TIMEOUT)
    at.query_params.update({"model": model, "text": text, **params})
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def chart(at: AppTest, key: str) -> dict:
    """The Plotly figure spec of the one chart whose widget key is ``key``."""
    found = [c for c in at.get("plotly_chart") if c.proto.id.endswith(f"-{key}")]
    assert len(found) == 1, f"no single chart with key {key!r}"
    return json.loads(found[0].proto.spec)
