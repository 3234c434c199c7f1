"""The web page in a real headless browser (Debian's chromium driven by Playwright): it shows exactly the views
the loaded model supports (no [MASK] prompt without an MLM head), and each view shows what the service and the
Python pipelines answer: fill-mask predictions, classify's label bars, NER's highlighted entities, QA's
answer marked in the passage, embed's cosine-similarity matrix and the attention heat-map of the chosen layer
and head. /docs renders its operations with every request outside the service refused (no CDN). Skipped with a
reason when no browser is installed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="pip install fastapi uvicorn (the 'serve' extra)")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (drives the system chromium)")

from test_server import Server  # noqa: E402

from bertforge.checkpoint import save_model  # noqa: E402
from bertforge.heads import (  # noqa: E402
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from bertforge.inference import pipelines  # noqa: E402
from bertforge.inference.server import create_app  # noqa: E402
from bertforge.inference.tiny import build, plant_tokens, tiny_tokenizer  # noqa: E402
from bertforge.model import BertModel  # noqa: E402

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


@contextmanager
def serving(directory: Path) -> Iterator[tuple[Server, pipelines.Loaded]]:
    """The service for the model saved in `directory`, on a free localhost port, stopped on exit."""
    loaded = pipelines.load_pipeline(directory)
    server = Server(create_app(loaded))
    try:
        yield server, loaded
    finally:
        server.stop()
        server.thread.join(10)


@contextmanager
def page_of(browser, server: Server):
    """The page, loaded and ready (its views chosen from /info)."""
    page = browser.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(f"http://127.0.0.1:{server.port}/")
        page.wait_for_selector("body[data-ready=true]")
        yield page
    finally:
        page.close()


def run_view(page, view: str) -> str:
    """Press the view's button and wait for its status line to leave "running…"; the status it ends with."""
    page.click(f"#{view} button[type=submit]")
    page.wait_for_function(f"document.querySelector('#{view} .status').textContent.startsWith('running') === false"
                           f" && document.querySelector('#{view} .status').textContent !== ''")
    return page.inner_text(f"#{view} .status")


def visible_views(page) -> list[str]:
    return [s for s in page.locator("section.view").evaluate_all("ss => ss.map(s => s.id)")
            if page.is_visible(f"#{s}")]


# ----- which views ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("model_class", "kwargs", "views"), [
    (BertForMaskedLM, {}, ["fill-mask", "embed", "attention"]),
    (BertModel, {}, ["embed", "attention"]),
    (BertForSequenceClassification, {"labels": ["neg", "pos"]}, ["classify", "embed", "attention"]),
    (BertForTokenClassification, {"labels": ["O", "B-PER"]}, ["ner", "embed", "attention"]),
    (BertForQuestionAnswering, {}, ["qa", "embed", "attention"]),
], ids=lambda v: getattr(v, "__name__", None))
def test_page_shows_exactly_the_models_views(browser, tmp_path, model_class, kwargs, views) -> None:
    build(model_class, tmp_path, seed=20, **kwargs)
    with serving(tmp_path) as (server, _), page_of(browser, server) as page:
        assert sorted(visible_views(page)) == sorted(views)
        assert page.locator("section.view").count() == len(views)  # the others are gone, not just hidden


@pytest.mark.parametrize("model_class", [BertModel, BertForQuestionAnswering])
def test_no_mask_prompt_without_an_mlm_head(browser, tmp_path, model_class) -> None:
    build(model_class, tmp_path, seed=23)
    with serving(tmp_path) as (server, _), page_of(browser, server) as page:
        assert "[MASK]" not in page.inner_text("body")
        values = page.locator("textarea, input").evaluate_all("fields => fields.map(f => f.value)")
        assert values and not any("[MASK]" in v for v in values)
        assert page.locator("#fill-mask").count() == 0


# ----- one test per view ------------------------------------------------------------------------------------
def test_fill_mask_view_shows_the_pipelines_predictions(browser, tmp_path) -> None:
    build(BertForMaskedLM, tmp_path, seed=21)
    text = "john [MASK] the guitar in [MASK] ."
    with serving(tmp_path) as (server, loaded), page_of(browser, server) as page:
        page.fill("#fill-mask-text", text)
        assert run_view(page, "fill-mask") == "done"
        predictions = page.locator("#fill-mask-result li").all_inner_texts()
    expected = pipelines.fill_mask(loaded.predictor, [text], top_k=5)[0]
    assert predictions == [f"[MASK] {m + 1}: " + ", ".join(f"{t['token']} {t['score']:.3f}" for t in top)
                           for m, top in enumerate(expected)]


def test_attention_view_draws_the_endpoints_probabilities(browser, tmp_path) -> None:
    build(BertForMaskedLM, tmp_path, seed=21)
    text = "john played the guitar in paris ."
    with serving(tmp_path) as (server, _), page_of(browser, server) as page:
        assert page.locator("#layer option").count() == 2 and page.locator("#head option").count() == 3
        page.fill("#attention-text", text)
        page.select_option("#layer", "1")
        page.select_option("#head", "2")
        assert run_view(page, "attention") == "done"
        rows = page.locator("#heatmap tbody tr")
        cells = [rows.nth(i).locator("td.cell").evaluate_all("tds => tds.map(td => Number(td.title))")
                 for i in range(rows.count())]
        tokens = page.locator("#heatmap tbody th").all_inner_texts()
        which = page.inner_text("#which")
        _, expected = server.request("POST", "/attention", {"text": text, "layer": 1, "head": 2})
    assert tokens == expected["tokens"] and tokens[0] == "[CLS]"
    assert len(cells) == len(tokens) and all(len(row) == len(tokens) for row in cells)
    for row, want in zip(cells, expected["attention"], strict=True):
        assert row == pytest.approx([round(p, 3) for p in want], abs=1e-3)
    assert which == "(layer 1, head 2)"


def test_attention_view_of_a_question_and_passage(browser, tmp_path) -> None:
    build(BertForQuestionAnswering, tmp_path, seed=22)
    with serving(tmp_path) as (server, _), page_of(browser, server) as page:
        page.fill("#attention-text", "who played ?")
        page.fill("#attention-pair", "john played the guitar in paris .")
        assert run_view(page, "attention") == "done"
        tokens = page.locator("#heatmap tbody th").all_inner_texts()
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2


def test_classify_view_draws_a_bar_per_label(browser, tmp_path) -> None:
    labels = ["negative", "neutral", "positive"]
    model = build(BertForSequenceClassification, tmp_path, seed=24, labels=labels)
    with torch.no_grad():
        model.classifier.weight.mul_(50)  # sharper than a random head's near-uniform 1/3s, so a pair shows
    save_model(model, tmp_path, tokenizer=tiny_tokenizer(tmp_path))
    text, pair = "this movie was great !", "i love this film ."
    with serving(tmp_path) as (server, loaded), page_of(browser, server) as page:
        page.fill("#classify-text", text)
        assert run_view(page, "classify") == "done"
        bars = page.locator("#classify-result .bar")
        shown = [(bars.nth(i).locator(".bar-label").inner_text(), bars.nth(i).locator(".bar-value").inner_text(),
                  bars.nth(i).locator(".bar-fill").evaluate("e => e.style.width")) for i in range(bars.count())]
        widths = [float(w.removesuffix("%")) for *_, w in shown]
        best = page.inner_text("#classify-result .bar.best .bar-label")
        page.fill("#classify-pair", pair)
        assert run_view(page, "classify") == "done"
        pair_values = page.locator("#classify-result .bar-value").all_inner_texts()
    answer = pipelines.classify(loaded.predictor, [text])[0]
    ranked = sorted(answer["scores"].items(), key=lambda kv: -kv[1])
    assert [(label, value) for label, value, _ in shown] == [(label, f"{p:.3f}") for label, p in ranked]
    assert widths == pytest.approx([100 * p for _, p in ranked], abs=0.051)  # each bar as wide as its probability
    assert best == answer["label"] == ranked[0][0]
    paired = pipelines.classify(loaded.predictor, [text], [pair])[0]
    assert pair_values == [f"{p:.3f}" for p in sorted(paired["scores"].values(), reverse=True)]
    assert pair_values != [v for _, v, _ in shown]  # the second text reached the model


def test_classify_view_of_a_regression_model_shows_its_value(browser, tmp_path) -> None:
    build(BertForSequenceClassification, tmp_path, seed=27, num_labels=1)  # one output: a score, no labels
    with serving(tmp_path) as (server, loaded), page_of(browser, server) as page:
        assert run_view(page, "classify") == "done"
        shown = page.inner_text("#classify-result")
        bars = page.locator("#classify-result .bar").count()
        text = page.input_value("#classify-text")
    assert bars == 0 and shown == f"value {pipelines.classify(loaded.predictor, [text])[0]['value']:.3f}"


def test_ner_view_highlights_the_entities(browser, tmp_path) -> None:
    model = build(BertForTokenClassification, tmp_path, seed=5, labels=["O", "B-PER", "I-PER", "B-LOC"])
    tok = tiny_tokenizer(tmp_path)
    ids = tok.token_to_id
    plant_tokens(model, model.classifier, {1: [ids("john")], 2: [ids("smith")], 3: [ids("paris"), ids("london")]},
                 default_bias=40.0)
    save_model(model, tmp_path, tokenizer=tok)
    text = "John Smith played the guitar in Paris ."
    with serving(tmp_path) as (server, _), page_of(browser, server) as page:
        page.fill("#ner-text", text)
        assert run_view(page, "ner") == "done"
        marks = page.locator("#ner-result mark")
        shown = [(marks.nth(i).inner_text(), marks.nth(i).get_attribute("data-entity")) for i in range(marks.count())]
        whole = page.locator("#ner-result").evaluate("e => e.textContent")
    assert shown == [("John Smith", "PER"), ("Paris", "LOC")]
    assert whole == text  # the marks sit in the text as written


def test_qa_view_marks_the_answer_and_shows_errors(browser, tmp_path) -> None:
    model = build(BertForQuestionAnswering, tmp_path, seed=6)
    tok = tiny_tokenizer(tmp_path)
    plant_tokens(model, model.span, {0: [tok.token_to_id("paris")], 1: [tok.token_to_id("france")]})
    save_model(model, tmp_path, tokenizer=tok)
    question, passage = "what is the capital ?", "The capital is Paris of France , a city ."
    with serving(tmp_path) as (server, loaded), page_of(browser, server) as page:
        assert page.is_visible("#qa-question") and not page.is_visible("#fill-mask-text")
        page.fill("#qa-question", question)
        page.fill("#qa-passage", passage)
        assert run_view(page, "qa") == "done"
        answer_line = page.inner_text("#qa-answer")
        marked = page.locator("#qa-passage-marked mark").all_inner_texts()
        page.fill("#qa-passage", "")
        error = run_view(page, "qa")
        error_class = page.get_attribute("#qa .status", "class")
    answer = pipelines.qa(loaded.predictor, [question], [passage])[0]
    assert answer["answer"] == "Paris of France"
    assert answer_line == (f"Paris of France (score {answer['score']:.3f}, characters {answer['start']}–"
                           f"{answer['end']})")
    assert marked == ["Paris of France"]
    assert error.startswith("422") and "error" in error_class  # the service's JSON error, shown to the user


def test_embed_view_shows_the_cosine_similarity_matrix(browser, tmp_path) -> None:
    build(BertModel, tmp_path, seed=25)
    texts = ["a man is playing a guitar .", "a man plays music .", "the new movie is great ."]
    with serving(tmp_path) as (server, loaded), page_of(browser, server) as page:
        page.fill("#embed-texts", "\n".join(texts) + "\n\n")  # blank lines are not texts
        assert run_view(page, "embed") == "done"
        rows = page.locator("#embed-result tbody tr")
        shown = [rows.nth(i).locator("td").all_inner_texts() for i in range(rows.count())]
        row_names = page.locator("#embed-result tbody th").all_inner_texts()
        page.fill("#embed-texts", "only one text")
        error = run_view(page, "embed")
    vectors = pipelines.embed(loaded.predictor, texts, pooling=loaded.sentence.pooling)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = unit @ unit.T
    assert shown == [[f"{c:.3f}" for c in row] for row in cosines]
    assert [row[i] for i, row in enumerate(shown)] == ["1.000"] * 3
    assert len({c for row in shown for c in row}) > 2  # the texts differ: not a constant matrix
    assert row_names == [f"{i + 1}. {t}" for i, t in enumerate(texts)]
    assert error == "write at least two texts, one per line"


# ----- /docs without a network ------------------------------------------------------------------------------
def test_docs_render_with_every_outside_request_refused(browser, tmp_path) -> None:
    build(BertForMaskedLM, tmp_path, seed=26)
    with serving(tmp_path) as (server, _):
        page = browser.new_page()
        page.set_default_timeout(30_000)
        local = f"http://127.0.0.1:{server.port}/"
        outside: list[str] = []

        def refuse_outside(route) -> None:
            if route.request.url.startswith(local):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        try:
            page.route("**/*", refuse_outside)
            page.goto(local + "docs")
            page.wait_for_selector(".opblock-summary-path")
            paths = page.locator(".opblock-summary-path").all_inner_texts()
        finally:
            page.close()
    assert {"/fill-mask", "/embed", "/attention", "/info"} <= {p.strip() for p in paths}
    assert outside == []
