"""The HTTP service on a real socket (127.0.0.1, uvicorn in a thread, stopped by the fixture): endpoint
results equal the Python pipelines, micro-batches form under concurrency, and a malformed-input sweep gets
4xx JSON (never 500) with the server healthy afterwards."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="pip install fastapi uvicorn (the 'serve' extra)")
uvicorn = pytest.importorskip("uvicorn", reason="pip install fastapi uvicorn (the 'serve' extra)")

from bertforge.heads import BertForMaskedLM, BertForQuestionAnswering  # noqa: E402
from bertforge.inference import pipelines  # noqa: E402
from bertforge.inference.server import Limits, create_app  # noqa: E402
from bertforge.inference.tiny import build  # noqa: E402


class Server:
    """uvicorn on a free localhost port in a daemon thread; `stop()` (or 60 s) ends it."""

    def __init__(self, app) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.watchdog = threading.Timer(60, self.stop)
        self.watchdog.daemon = True
        self.watchdog.start()
        for _ in range(200):
            if self.server.started:
                return
            time.sleep(0.05)
        raise RuntimeError("server did not start in 10 s")

    def stop(self) -> None:
        self.server.should_exit = True

    def request(self, method: str, path: str, body: bytes | str | dict | list | None = None,
                headers: dict | None = None) -> tuple[int, object]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        kind = response.getheader("content-type", "")
        return response.status, json.loads(raw) if "json" in kind else raw.decode()


@pytest.fixture(scope="module")
def mlm(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mlm")
    build(BertForMaskedLM, directory, seed=11)
    loaded = pipelines.load_pipeline(directory)
    server = Server(create_app(loaded, Limits(max_texts=8, max_chars=200, max_body_bytes=20_000, max_wait_ms=20)))
    yield server, loaded
    server.stop()
    server.thread.join(10)
    assert not server.thread.is_alive()


def test_health_info_openapi(mlm) -> None:
    server, _ = mlm
    assert server.request("GET", "/health") == (200, {"status": "ok", "queue": 0, "tasks": ["fill-mask", "embed"]})
    status, info = server.request("GET", "/info")
    assert status == 200 and (info["num_layers"], info["num_heads"]) == (2, 3)
    status, schema = server.request("GET", "/openapi.json")
    assert status == 200
    assert {"/fill-mask", "/embed", "/attention", "/health"} <= set(schema["paths"])
    assert "/qa" not in schema["paths"]  # only what this model supports
    assert server.request("POST", "/qa", {"questions": ["a"], "contexts": ["b"]})[0] == 404


def test_endpoints_equal_pipelines(mlm) -> None:
    server, loaded = mlm
    texts = ["john [MASK] the guitar .", "[MASK] is a city"]
    status, got = server.request("POST", "/fill-mask", {"texts": texts, "top_k": 3})
    assert status == 200
    expected = pipelines.fill_mask(loaded.predictor, texts, top_k=3)
    assert [[[t["token"] for t in m] for m in r] for r in got] == [[[t["token"] for t in m] for m in r]
                                                                    for r in expected]
    assert got[0][0][0]["score"] == pytest.approx(expected[0][0][0]["score"], abs=1e-6)
    status, vectors = server.request("POST", "/embed", {"texts": ["a day", "the night"]})
    assert status == 200 and len(vectors) == 2 and len(vectors[0]) == 96
    assert sum(v * v for v in vectors[0]) == pytest.approx(1.0, abs=1e-5)
    status, att = server.request("POST", "/attention", {"text": "john played", "layer": 1, "head": 2})
    assert status == 200 and att["tokens"] == ["[CLS]", "john", "played", "[SEP]"]
    assert all(abs(sum(row) - 1) < 1e-3 for row in att["attention"])


def test_concurrent_requests_are_batched(mlm) -> None:
    server, loaded = mlm
    texts = [f"the [MASK] {w}" for w in ("day", "night", "city", "river", "music", "film", "john", "paris")] * 4
    expected = pipelines.fill_mask(loaded.predictor, texts, top_k=1)
    _, before = server.request("GET", "/metrics")
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda t: server.request("POST", "/fill-mask", {"texts": [t], "top_k": 1}), texts))
    assert all(status == 200 for status, _ in answers)
    assert [a[0][0][0]["token"] for _, a in answers] == [e[0][0]["token"] for e in expected]
    _, after = server.request("GET", "/metrics")
    count = lambda text, name: int(next(line.split()[-1] for line in text.splitlines() if line.startswith(name)))  # noqa: E731
    batches = count(after, "bertforge_batches_total") - count(before, "bertforge_batches_total")
    items = count(after, "bertforge_batched_items_total") - count(before, "bertforge_batched_items_total")
    assert items == len(texts)
    assert batches < len(texts)  # requests were coalesced
    assert 'bertforge_requests_total{path="/fill-mask",status="200"}' in after


MALFORMED = [
    ("bad JSON", "/fill-mask", b'{"texts": ["a [MASK]"', {}, 422),
    ("not JSON at all", "/embed", b"hello", {}, 422),
    ("non-UTF-8 bytes", "/embed", b'{"texts": ["\xff\xfe\xfa"]}', {}, 422),
    ("wrong type", "/embed", {"texts": "a string"}, {}, 422),
    ("wrong item type", "/embed", {"texts": [1, 2]}, {}, 422),
    ("null", "/embed", b"null", {}, 422),
    ("empty list", "/embed", {"texts": []}, {}, 422),
    ("empty text", "/embed", {"texts": ["  "]}, {}, 422),
    ("unknown field", "/embed", {"texts": ["a"], "pooling": "max"}, {}, 422),
    ("top_k out of range", "/fill-mask", {"texts": ["a [MASK]"], "top_k": 10**9}, {}, 422),
    ("no [MASK]", "/fill-mask", {"texts": ["no mask"]}, {}, 422),
    ("too many texts", "/embed", {"texts": ["a"] * 9}, {}, 413),
    ("text too long", "/embed", {"texts": ["a" * 201]}, {}, 413),
    ("1 MB body", "/embed", {"texts": ["a" * 1_000_000]}, {}, 413),
    ("lying content-length", "/embed", b'{"texts": ["a"]}', {"Content-Length": "99999999"}, 413),
    ("bad layer", "/attention", {"text": "a", "layer": 7}, {}, 422),
    ("negative head", "/attention", {"text": "a", "head": -1}, {}, 422),
    ("deep nesting", "/embed", b"[" * 5000 + b"]" * 5000, {}, 422),
]


@pytest.mark.parametrize(("name", "path", "body", "headers", "status"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_gets_4xx_json(mlm, name, path, body, headers, status) -> None:
    server, _ = mlm
    try:
        got, answer = server.request("POST", path, body, headers)
    except (ConnectionError, http.client.HTTPException):
        got, answer = 413, {"error": "connection closed"}  # a server may hang up on a lying Content-Length
    assert got == status, answer
    assert isinstance(answer, dict) and answer["error"]
    assert server.request("GET", "/health")[0] == 200


def test_overload_answers_503(tmp_path: Path) -> None:
    build(BertForMaskedLM, tmp_path, seed=12)
    loaded = pipelines.load_pipeline(tmp_path)
    server = Server(create_app(loaded, Limits(max_queue=1, max_wait_ms=200, max_batch_texts=1)))
    try:
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda _: server.request("POST", "/embed", {"texts": ["a day"]})[0], range(12)))
        assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
        status, answer = server.request("GET", "/health")
        assert status == 200
    finally:
        server.stop()
        server.thread.join(10)


def test_qa_server(tmp_path: Path) -> None:
    build(BertForQuestionAnswering, tmp_path, seed=13)
    loaded = pipelines.load_pipeline(tmp_path)
    server = Server(create_app(loaded))
    try:
        body = {"questions": ["who ?", "what ?"], "contexts": ["john played in paris", "the city"]}
        status, got = server.request("POST", "/qa", body)
        assert status == 200
        assert got == pipelines.qa(loaded.predictor, body["questions"], body["contexts"])
        assert server.request("POST", "/qa", {"questions": ["a"], "contexts": []})[0] == 422
        assert server.request("POST", "/fill-mask", {"texts": ["a [MASK]"]})[0] == 404
    finally:
        server.stop()
        server.thread.join(10)
