"""End to end: the app on the embedded model, driven in Debian's headless Chromium.

The server runs as a subprocess on a free loopback port and is stopped in the fixture's
teardown. Screenshots go to test-artifacts/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from spyglass.app.commands.app import command

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TEXT = "the cat saw the dog and the"
B3_TEXT = 'x<script>alert(1)</script> a<b<c say "hi"'
PLOTS = ".js-plotly-plot"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"The app exited early with code {server.returncode}.")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise TimeoutError(f"The app at {url} did not become healthy in {timeout} s.")


@pytest.fixture(scope="module")
def app_url():
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian's chromium is not installed (make browser)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SPYGLASS_MODEL"}  # embedded model
    env["HF_HUB_OFFLINE"] = "1"
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "app-server.log", "wb")  # noqa: SIM115 - closed in teardown
    server = subprocess.Popen(command(port, "127.0.0.1"), env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def settle(page, plots: int, timeout: float = 120_000) -> None:
    """Wait until the script finished and at least ``plots`` Plotly charts are drawn."""
    page.wait_for_function(
        f"""() => document.querySelectorAll('{PLOTS} .main-svg').length >= {plots}
              && !document.querySelector('[data-testid="stSpinner"]')
              && document.querySelector('[data-testid="stApp"]')
                     ?.getAttribute('data-test-script-state') !== 'running'""",
        timeout=timeout,
    )


def ticks(page, plot: int, axis: str) -> list[str]:
    return page.locator(PLOTS).nth(plot).locator(f".{axis}tick text").all_text_contents()


def test_type_text_see_attention_and_embeddings(app_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(app_url)
    settle(page, 1)

    # Type a text into the sidebar box, as a person would.
    box = page.locator('[data-testid="stSidebar"] textarea')
    box.fill(TEXT)
    box.press("Control+Enter")
    page.get_by_text("smollm2-135m: 7 tokens").wait_for(timeout=120_000)
    settle(page, 1)
    page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)

    # The attention page: 7 tokens -> 7 query rows and 7 key columns, one tick each.
    page.locator('[data-testid="stSidebarNav"] a', has_text="Attention").click()
    page.get_by_text("Layer 0, head 0 (shares key/value head 0)").wait_for(timeout=120_000)
    settle(page, 5)
    expected = ["0: the", "1: ␣cat", "2: ␣saw", "3: ␣the", "4: ␣dog", "5: ␣and", "6: ␣the"]
    assert ticks(page, 0, "y") == expected
    assert ticks(page, 0, "x") == expected
    assert "text=the+cat+saw" in page.url and "layer=0" in page.url
    page.screenshot(path=str(ARTIFACTS / "attention.png"), full_page=True)

    # Clicking a tile of the overview opens that head (layer 2, head 1 is marker 2 * 9 + 1).
    page.locator(PLOTS).nth(1).locator(".scatterlayer .point").nth(19).click(force=True)
    page.get_by_text("Layer 2, head 1 (shares key/value head 0)").wait_for(timeout=60_000)
    assert "layer=2" in page.url and "head=1" in page.url

    # The embeddings page: a 5 x 5 similarity table for the default words.
    page.locator('[data-testid="stSidebarNav"] a', has_text="Embeddings").click()
    page.get_by_text("cosine across layers").wait_for(timeout=120_000)
    settle(page, 3)
    words = ["SpongeBob", "underwater", "pineapple", "desert", "taxes"]
    assert ticks(page, 0, "x") == words
    assert ticks(page, 0, "y") == words
    page.screenshot(path=str(ARTIFACTS / "embeddings.png"), full_page=True)
    assert dialogs == []
    page.close()


def test_markup_in_text_is_shown_not_run(app_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{app_url}/Attention?text={quote(B3_TEXT)}")
    settle(page, 5)
    labels = ticks(page, 0, "y")
    assert labels[:4] == ["0: x", "1: <", "2: script", "3: >"]
    assert labels[-1] == '19: "' and labels[17] == '17: ␣"'
    page.locator('[data-testid="stSidebarNav"] a', has_text="Home").click()
    page.get_by_text("smollm2-135m: 20 tokens").wait_for(timeout=60_000)
    settle(page, 1)
    strip = page.locator('[data-testid="stHtml"]').first.inner_text()
    assert "<script>alert(1)</script>" in strip.replace("␣", " ")
    assert page.evaluate(
        "() => [...document.scripts].filter(s => s.textContent.includes('alert(1)')).length"
    ) == 0
    page.screenshot(path=str(ARTIFACTS / "escaping.png"), full_page=True)
    assert dialogs == []
    page.close()
