"""The HTTP service on a real socket (127.0.0.1, uvicorn in a thread, stopped by the fixture): endpoint
results equal the Python pipelines, micro-batches form under concurrency, and a malformed-input sweep gets
4xx JSON (never 500) with the server healthy afterwards; and hostile clients (a 100 MB chunked body, trickled
headers, a stalled body, 130 idle connections, a client leaving mid-body) are cut off in bounded time and
memory, logged in one line, and counted under route-template metric labels. Each app has its own metrics
registry, which is what lets this module run several servers in one process."""

from __future__ import annotations

import http.client
import json
import logging
import re
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="pip install fastapi uvicorn (the 'serve' extra)")
uvicorn = pytest.importorskip("uvicorn", reason="pip install fastapi uvicorn (the 'serve' extra)")
pytest.importorskip("prometheus_client", reason="pip install prometheus-client (the 'serve' extra)")

from bertforge.checkpoint import save_model  # noqa: E402
from bertforge.heads import BertForMaskedLM, BertForQuestionAnswering  # noqa: E402
from bertforge.inference import pipelines  # noqa: E402
from bertforge.inference.server import BatchSettings, BindSettings, Limits, create_app, uvicorn_config  # noqa: E402
from bertforge.inference.tiny import build, plant_tokens, tiny_tokenizer  # noqa: E402
from bertforge.tasks import TASK_CONFIG_KEY, family  # noqa: E402


class Server:
    """uvicorn on a free localhost port in a daemon thread; `stop()` (or 60 s) ends it."""

    def __init__(self, app) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn_config(app, BindSettings("127.0.0.1", self.port), log_level="error"))
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
    server = Server(create_app(loaded, limits=Limits(max_texts=8, max_chars=200, max_body_bytes=20_000),
                               batching=BatchSettings(max_wait_ms=20)))
    yield server, loaded
    server.stop()
    server.thread.join(10)
    assert not server.thread.is_alive()


def test_health_info_openapi(mlm) -> None:
    server, _ = mlm
    assert server.request("GET", "/health") == (200, {"status": "ok", "queue": 0, "tasks": ["fill-mask", "embed"]})
    status, info = server.request("GET", "/info")
    assert status == 200 and (info["num_layers"], info["num_heads"]) == (2, 3)
    assert info["views"] == ["fill-mask", "embed", "attention"] and info["mask_token"] == "[MASK]"
    status, schema = server.request("GET", "/openapi.json")
    assert status == 200
    assert {"/fill-mask", "/embed", "/attention", "/health"} <= set(schema["paths"])
    assert "/qa" not in schema["paths"]  # only what this model supports
    assert server.request("POST", "/qa", {"questions": ["a"], "contexts": ["b"]})[0] == 404
    status, page = server.request("GET", "/")  # a file response, which also listens for the client leaving
    assert status == 200 and "<html" in page.lower()


@pytest.mark.parametrize("docs", ["/docs", "/redoc"])
def test_docs_pages_load_their_assets_from_the_service(mlm, docs: str) -> None:
    """Swagger UI and ReDoc come from the service itself (fastapi-offline's copies), so they work offline."""
    server, _ = mlm
    status, page = server.request("GET", docs)
    assert status == 200
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page)
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts and all(u.startswith("/docs-assets/") for u in urls), urls
    assert "://" not in page  # no absolute URL at all: nothing from a CDN
    for url in urls:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", url)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert response.status == 200 and len(body) > 1000, url
        if url.endswith(".js"):
            assert "javascript" in response.getheader("content-type", ""), url


def test_endpoints_equal_pipelines(mlm) -> None:
    server, loaded = mlm
    texts = ["john [MASK] the guitar .", "[MASK] is a city"]
    status, got = server.request("POST", "/fill-mask", {"texts": texts, "top_k": 3})
    assert status == 200
    expected = pipelines.fill_mask(loaded.predictor, texts, top_k=3)
    assert [[[t["token"] for t in m] for m in r] for r in got] == [[[t["token"] for t in m] for m in r]
                                                                    for r in expected]
    assert got[0][0][0]["score"] == pytest.approx(expected[0][0][0]["score"], abs=1e-6)
    status, vectors = server.request("POST", "/embed", {"texts": ["a day", "the night"], "normalize": True})
    assert status == 200 and len(vectors) == 2 and len(vectors[0]) == 96
    assert sum(v * v for v in vectors[0]) == pytest.approx(1.0, abs=1e-5)
    # by default as the folder says: this one has no modules.json, so mean pooling, not normalised
    status, plain = server.request("POST", "/embed", {"texts": ["a day"]})
    assert plain[0] == pytest.approx(pipelines.embed(loaded.predictor, ["a day"])[0].tolist(), abs=1e-5)
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
    count = lambda text, name: float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name)))  # noqa: E731
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
    server = Server(create_app(loaded, batching=BatchSettings(max_queue=1, max_wait_ms=200, max_batch_texts=1)))
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
        status, info = server.request("GET", "/info")
        assert info["views"] == ["qa", "embed", "attention"] and info["mask_token"] is None  # no MLM head
    finally:
        server.stop()
        server.thread.join(10)


def test_qa_server_answers_with_the_saved_settings(tmp_path: Path) -> None:
    """A model fine-tuned with answers of at most 2 tokens answers so over HTTP; a request's own limit wins."""
    model = build(BertForQuestionAnswering, tmp_path, seed=6)
    tok = tiny_tokenizer(tmp_path)
    plant_tokens(model, model.span, {0: [tok.token_to_id("paris")], 1: [tok.token_to_id("france")]})
    saved = {**family("squad", max_answer_length=2).settings(), "max_seq_length": 64}
    save_model(model, tmp_path, tokenizer=tok, extra_config={TASK_CONFIG_KEY: saved})
    server = Server(create_app(pipelines.load_pipeline(tmp_path)))
    body = {"questions": ["what is the capital ?"], "contexts": ["The capital is Paris of France , a city ."]}
    try:
        status, got = server.request("POST", "/qa", body)
        assert status == 200, got
        assert got[0]["answer"] and len(tok.tokenize(got[0]["answer"])) <= 2
        status, got = server.request("POST", "/qa", {**body, "max_answer_length": 30})
        assert (status, got[0]["answer"]) == (200, "Paris of France")
        status, got = server.request("POST", "/qa", {**body, "questions": [" ".join(["what"] * 62)]})
        assert status == 422 and "maximum length of 64 tokens" in got["error"]  # the saved window, not a 500
    finally:
        server.stop()
        server.thread.join(10)


# ----- hostile clients: big chunked bodies, slow headers and bodies, idle connections, disconnects ----------
HOSTILE = Limits(max_body_bytes=20_000, head_timeout_s=2.0, body_timeout_s=1.0, max_connections=128)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hostile")
    build(BertForMaskedLM, directory, seed=14)
    server = Server(create_app(pipelines.load_pipeline(directory), limits=HOSTILE,
                               batching=BatchSettings(max_wait_ms=300)))
    yield server
    server.stop()
    server.thread.join(10)


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def read_response(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of a response the server closes the connection after."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:  # the server closed with our unread body bytes in its buffer
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (an EOF or a reset)."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def test_chunked_body_is_refused_as_it_streams(hostile) -> None:
    """A chunked body announces no length: the server must count it and answer 413 after ~20 kB, long before
    the client's 100 MB are sent, without holding the body in memory (the server runs in this process)."""
    peak, done = [rss_bytes()], threading.Event()
    baseline = peak[0]

    def sample() -> None:
        while not done.is_set():
            peak.append(rss_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    total, sent = 100 * 2**20, 0
    with connect(hostile) as sock:
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            while sent < total and not select.select([sock], [], [], 0)[0]:  # until the answer arrives
                sock.sendall(chunk)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):  # the server hung up after answering
            pass
        status, answer = read_response(sock)
    done.set()
    sampler.join()
    assert status == 413 and "20000 bytes" in answer["error"]
    assert sent < total / 4, f"{sent} bytes sent before the 413"
    assert max(peak) - baseline < 40 * 2**20, f"RSS grew {(max(peak) - baseline) / 2**20:.0f} MiB"
    assert hostile.request("GET", "/health")[0] == 200


def test_content_length_body_over_the_limit_is_refused_before_it_is_read(hostile) -> None:
    with connect(hostile) as sock:
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 300000000\r\n\r\n")
        status, answer = read_response(sock)  # not a byte of the body was sent
    assert status == 413 and answer["error"] == "request body over 20000 bytes"


def test_oversize_headers_get_400(hostile) -> None:
    with connect(hostile) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"x" * (HOSTILE.max_header_bytes + 1))
        data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 400 ")


def test_slow_headers_are_cut_off(hostile) -> None:
    """A client trickling its headers one byte at a time is closed at the head deadline (2 s): uvicorn's
    keep-alive timer alone would restart at every byte and hold the connection forever."""
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"x" * 1000
    start = time.perf_counter()
    with connect(hostile) as sock:
        closed = False
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            if closed or closed_within(sock, 0.1):
                break
        elapsed = time.perf_counter() - start
    assert closed or elapsed < 10, "still open after the whole trickle"
    assert HOSTILE.head_timeout_s - 0.1 < elapsed < HOSTILE.head_timeout_s + 1.5, elapsed


def test_slow_body_gets_408(hostile) -> None:
    with connect(hostile) as sock:
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b'Content-Length: 1000\r\n\r\n{"texts": ["a')
        start = time.perf_counter()
        status, answer = read_response(sock)
        elapsed = time.perf_counter() - start
    assert status == 408 and "1 s" in answer["error"]
    assert HOSTILE.body_timeout_s - 0.1 < elapsed < HOSTILE.body_timeout_s + 1.5, elapsed


def test_idle_connections_neither_starve_health_nor_stay(hostile) -> None:
    """100 connections with half-sent heads: /health still answers 200 within 1 s; 30 more pass the cap of 128,
    so a request is answered 503 at once; at the head deadline the server closes them all and recovers."""
    idle = [connect(hostile) for _ in range(100)]
    try:
        for sock in idle:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        start = time.perf_counter()
        assert hostile.request("GET", "/health")[0] == 200
        assert time.perf_counter() - start < 1.0
        assert not select.select(idle, [], [], 0)[0], "the idle connections were already closed"
        idle += [connect(hostile) for _ in range(30)]
        time.sleep(0.1)  # let the server accept them
        start = time.perf_counter()
        assert hostile.request("GET", "/health")[0] == 503  # uvicorn's plain-text answer over the cap
        assert time.perf_counter() - start < 1.0
        deadline = time.perf_counter() + HOSTILE.head_timeout_s + 2
        assert all(closed_within(sock, max(0.01, deadline - time.perf_counter())) for sock in idle)
        assert hostile.request("GET", "/health")[0] == 200
    finally:
        for sock in idle:
            sock.close()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


LEAVING = [  # (what the client sends before it hangs up, the one line the server logs)
    (b'Content-Length: 1000\r\n\r\n{"texts": ', "left during POST /embed after 10 body bytes"),
    (b'Content-Length: 20\r\n\r\n{"texts": ["a day"]}', "left before the answer to POST /embed"),
]


@pytest.mark.parametrize(("sent", "line"), LEAVING, ids=["mid-body", "before the answer"])
def test_client_disconnect_logs_one_line(hostile, sent: bytes, line: str) -> None:
    """A client that leaves is one INFO line, no traceback, and a 499 in the metrics (uvicorn's loggers do not
    reach the root, so the handler listens on both trees). HOSTILE's 300 ms batching wait keeps the second
    client's answer from being ready before it leaves."""
    records = Records()
    loggers = [logging.getLogger("uvicorn"), logging.getLogger("bertforge")]
    level = loggers[1].level
    loggers[1].setLevel(logging.INFO)
    for logger in loggers:
        logger.addHandler(records)
    try:
        with connect(hostile) as sock:
            sock.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + sent)
            time.sleep(0.05)
        for _ in range(40):
            if records.records:
                break
            time.sleep(0.05)
        time.sleep(0.5)  # anything else it would log, the batch included
    finally:
        for logger in loggers:
            logger.removeHandler(records)
        loggers[1].setLevel(level)
    lines = [(r.name, r.levelname, r.getMessage()) for r in records.records]
    assert len(lines) == 1, lines
    assert records.records[0].exc_info is None and line in lines[0][2]
    assert 'bertforge_requests_total{path="/embed",status="499"}' in hostile.request("GET", "/metrics")[1]


def test_metrics_are_escaped_and_labelled_by_route(hostile) -> None:
    """Every path label is a route template or "unmatched" — also for a 413 on a path full of characters a
    hand-written exposition would have to escape — and prometheus_client's parser reads the whole page."""
    from prometheus_client.parser import text_string_to_metric_families

    def requests_by_label() -> dict[tuple[str, str], float]:
        status, text = hostile.request("GET", "/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        histogram = {s.labels["path"]: s.value for s in families["bertforge_request_seconds"].samples
                     if s.name.endswith("_count")}
        counts = {(s.labels["path"], s.labels["status"]): s.value for s in families["bertforge_requests"].samples
                  if s.name.endswith("_total")}
        for path in histogram:  # the histogram counts the same requests
            assert histogram[path] == sum(n for (p, _), n in counts.items() if p == path)
        return counts

    before = requests_by_label()
    hostile.request("GET", "/no/such/page")
    hostile.request("GET", f"/another-{time.time_ns()}")
    for path in ('/x"}\\%0A', "/embed"):  # 413 on an unknown path and on a known one
        try:
            hostile.request("POST", path, b"{}", {"Content-Length": "99999999"})
        except (ConnectionError, http.client.HTTPException):
            pass  # the server may hang up before the client reads its 413
    hostile.request("GET", "/embed")  # 405
    after = requests_by_label()
    grown = {label: n - before.get(label, 0) for label, n in after.items() if n != before.get(label, 0)}
    assert grown == {("unmatched", "404"): 2, ("unmatched", "413"): 1, ("/embed", "413"): 1,
                     ("/embed", "405"): 1, ("/metrics", "200"): 1}
    routes = {route.path for route in hostile.server.config.app.routes}
    assert {path for path, _ in after} <= routes | {"unmatched"}


def test_unexpected_error_is_one_traceback_and_a_500(caplog) -> None:
    """An exception escaping an endpoint is logged once, with its traceback, and answered as the service's JSON
    error; RequestGuard does not re-raise it, so uvicorn has nothing left to log (called here without a server)."""
    import asyncio

    from bertforge.inference.guards import RequestGuard

    async def broken_app(scope, receive, send):
        await receive()
        raise RuntimeError("boom")

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent, observed = [], []

    async def send(message):
        sent.append(message)

    guard = RequestGuard(broken_app, routes=[], max_body_bytes=100, body_timeout_s=1.0,
                         observe=lambda *args: observed.append(args[:2]))
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], "client": ("127.0.0.1", 1)}
    with caplog.at_level(logging.ERROR):
        asyncio.run(guard(scope, receive, send))
    assert [r.exc_info[0] for r in caplog.records] == [RuntimeError]
    assert sent[0]["status"] == 500 and json.loads(sent[1]["body"]) == {"error": "internal error",
                                                                        "detail": "RuntimeError"}
    assert observed == [("unmatched", 500)]
