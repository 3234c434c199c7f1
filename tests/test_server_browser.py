"""The web page in a real headless browser (Debian's chromium driven by Playwright): it loads the model's
layers and heads, runs fill-mask (or QA) and draws the attention heat-map of the chosen layer and head with
the same numbers as the /attention endpoint. Skipped with a reason when no browser is installed."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="pip install fastapi uvicorn (the 'serve' extra)")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (drives the system chromium)")

from test_server import Server  # noqa: E402

from bertforge.heads import BertForMaskedLM, BertForQuestionAnswering  # noqa: E402
from bertforge.inference import pipelines  # noqa: E402
from bertforge.inference.server import create_app  # noqa: E402
from bertforge.inference.tiny import build  # noqa: E402

CHROMIUM = os.environ.get("BERTFORGE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium found (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, timeout=60_000)
        yield browser
        browser.close()


def _run_page(browser, server: Server, layer: int, head: int, fill) -> tuple:
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#layer option").count() == 2 and page.locator("#head option").count() == 3
    fill(page)
    page.select_option("#layer", str(layer))
    page.select_option("#head", str(head))
    page.click("#run")
    page.wait_for_function("document.getElementById('status').textContent !== 'running…'")
    status = page.inner_text("#status")
    predictions = page.locator("#predictions li").all_inner_texts()
    rows = page.locator("#heatmap tbody tr")
    cells = [rows.nth(i).locator("td.cell").evaluate_all("tds => tds.map(td => Number(td.title))")
             for i in range(rows.count())]
    tokens = page.locator("#heatmap tbody th").all_inner_texts()
    which = page.inner_text("#which")
    page.close()
    return status, predictions, tokens, cells, which


def test_fill_mask_page_shows_predictions_and_heatmap(browser, tmp_path) -> None:
    build(BertForMaskedLM, tmp_path, seed=21)
    loaded = pipelines.load_pipeline(tmp_path)
    server = Server(create_app(loaded))
    try:
        text = "john [MASK] the guitar in paris ."
        status, predictions, tokens, cells, which = _run_page(
            browser, server, 1, 2, lambda page: page.fill("#text", text))
        assert status == "done"
        top = pipelines.fill_mask(loaded.predictor, [text], top_k=5)[0][0]
        assert predictions == ["[MASK] 1: " + ", ".join(f"{t['token']} {t['score']:.3f}" for t in top)]
        _, expected = server.request("POST", "/attention", {"text": text, "layer": 1, "head": 2})
        assert tokens == expected["tokens"]
        assert len(cells) == len(tokens) and all(len(row) == len(tokens) for row in cells)
        for row, want in zip(cells, expected["attention"], strict=True):
            assert row == pytest.approx([round(p, 3) for p in want], abs=1e-3)
        assert which == "(layer 1, head 2)"
    finally:
        server.stop()
        server.thread.join(10)


def test_qa_page_and_error_message(browser, tmp_path) -> None:
    build(BertForQuestionAnswering, tmp_path, seed=22)
    loaded = pipelines.load_pipeline(tmp_path)
    server = Server(create_app(loaded))
    question, passage = "who played ?", "john played the guitar in paris ."

    def fill(page) -> None:
        assert page.is_visible("#question") and not page.is_visible("#text")
        page.fill("#question", question)
        page.fill("#passage", passage)

    try:
        status, predictions, tokens, cells, _ = _run_page(browser, server, 0, 1, fill)
        assert status == "done"
        answer = pipelines.qa(loaded.predictor, [question], [passage])[0]
        assert predictions[0].startswith(f"{answer['answer']} (score {answer['score']:.3f}")
        assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2
        status, *_ = _run_page(browser, server, 0, 0, lambda page: page.fill("#passage", ""))
        assert status.startswith("422")  # the service's JSON error, shown to the user
    finally:
        server.stop()
        server.thread.join(10)
