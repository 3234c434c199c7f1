"""Load test and malformed-input sweep against `bertforge serve` on localhost.

    python benchmarks/load_test.py --model all-minilm-l6-v2 [--clients 32] [--seconds 60] [--threads 2]

Starts the server as a subprocess on a free 127.0.0.1 port (or uses --port of a running one), then:
1. `--clients` threads, each with its own keep-alive connection, POST /embed with 1-4 real SST-2 dev
   sentences per request, back to back, for `--seconds`; prints requests/s, texts/s, p50/p90/p99 latency,
   status counts and the server's micro-batch sizes from /metrics;
2. a sweep of malformed requests (bad JSON, wrong types, empty lists, 1 MB texts, non-UTF-8 bytes, ...),
   printing each status; then /health must still answer 200.
Bounded: at most 64 clients and 300 seconds; only 127.0.0.1 is ever contacted. Exit status 1 on any error.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HOST = "127.0.0.1"


def post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    return response.status, response.read()


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    status, body = response.status, response.read().decode()
    conn.close()
    return status, body


def start_server(model: str, threads: int) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "bertforge", "serve", "--model", model, "--host", HOST, "--port", str(port),
               "--threads", str(threads), "--max_queue", "1024"]
    process = subprocess.Popen(command)
    for _ in range(600):
        try:
            if get(port, "/health")[0] == 200:
                return process, port
        except OSError:
            pass
        if process.poll() is not None:
            sys.exit(f"server exited with {process.returncode}")
        time.sleep(0.1)
    process.terminate()
    sys.exit("server did not answer /health within 60 s")


def load(port: int, clients: int, seconds: float, sentences: list[str]) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    texts_done = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        while time.perf_counter() < stop_at:
            texts = rng.sample(sentences, rng.randint(1, 4))
            start = time.perf_counter()
            try:
                status, _ = post(conn, "/embed", json.dumps({"texts": texts}).encode())
            except (OSError, http.client.HTTPException):
                status = -1
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=60)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    texts_done[0] += len(texts)
        conn.close()

    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    began = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 120)
    wall = time.perf_counter() - began
    latencies.sort()
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {"requests": len(latencies), "wall_s": wall, "req_per_s": len(latencies) / wall,
            "texts_per_s": texts_done[0] / wall, "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": latencies[-1] * 1000, "statuses": statuses}


MALFORMED: list[tuple[str, str, bytes, dict]] = [
    ("bad JSON", "/embed", b'{"texts": ["a"', {}),
    ("not JSON", "/embed", b"hello world", {}),
    ("non-UTF-8 bytes", "/embed", b'{"texts": ["\xff\xfe\xfa\x80"]}', {}),
    ("latin-1 declared", "/embed", '{"texts": ["café"]}'.encode("latin-1"),
     {"Content-Type": "application/json; charset=latin-1"}),
    ("wrong type (string)", "/embed", b'{"texts": "a string"}', {}),
    ("wrong item type", "/embed", b'{"texts": [1, {"a": 2}, null]}', {}),
    ("JSON null", "/embed", b"null", {}),
    ("JSON array", "/embed", b'["a", "b"]', {}),
    ("empty list", "/embed", b'{"texts": []}', {}),
    ("empty text", "/embed", b'{"texts": [""]}', {}),
    ("missing field", "/embed", b"{}", {}),
    ("unknown field", "/embed", b'{"texts": ["a"], "pooling": "max"}', {}),
    ("1 MB text", "/embed", json.dumps({"texts": ["a" * 1_000_000]}).encode(), {}),
    ("20k-char text", "/embed", json.dumps({"texts": ["word " * 4000]}).encode(), {}),
    ("1000 texts", "/embed", json.dumps({"texts": ["a"] * 1000}).encode(), {}),
    ("lying Content-Length", "/embed", b'{"texts": ["a"]}', {"Content-Length": "50000000"}),
    ("deep nesting", "/embed", b"[" * 100_000 + b"]" * 100_000, {}),
    ("attention bad layer", "/attention", b'{"text": "a", "layer": 99}', {}),
    ("attention bad type", "/attention", b'{"text": ["a"], "head": "x"}', {}),
    ("unknown path", "/nope", b"{}", {}),
]


def sweep(port: int) -> list[tuple[str, int | str]]:
    results = []
    for name, path, body, headers in MALFORMED:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        try:
            status, answer = post(conn, path, body, headers)
            ok_json = isinstance(json.loads(answer), dict)
            results.append((name, status if ok_json else f"{status} (not JSON)"))
        except (OSError, http.client.HTTPException) as exc:
            results.append((name, f"connection closed ({type(exc).__name__})"))
        finally:
            conn.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--port", type=int, help="use a server already running on this localhost port")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server it starts")
    args = parser.parse_args()
    clients, seconds = min(args.clients, 64), min(args.seconds, 300)
    lines = (DATA / "glue" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    sentences = [line.split("\t")[0] for line in lines]
    process = None
    if args.port is None:
        process, port = start_server(args.model, args.threads)
    else:
        port = args.port
    failed = False
    try:
        print(f"load: {clients} clients × {seconds:.0f} s, POST /embed with 1-4 SST-2 sentences, server on "
              f"{HOST}:{port}")
        result = load(port, clients, seconds, sentences)
        print(json.dumps(result, indent=1))
        errors = sum(n for status, n in result["statuses"].items() if status != 200)
        print(f"errors: {errors}")
        failed |= errors > 0
        metrics = get(port, "/metrics")[1]
        batches = next(float(x.split()[-1]) for x in metrics.splitlines() if x.startswith("bertforge_batches_total"))
        items = next(float(x.split()[-1]) for x in metrics.splitlines()
                     if x.startswith("bertforge_batched_items_total"))
        print(f"micro-batches: {batches:.0f}, mean {items / max(batches, 1):.1f} texts per model call")
        print("\nmalformed-input sweep:")
        for name, status in sweep(port):
            bad = not (isinstance(status, int) and 400 <= status < 500)
            failed |= bad and not str(status).startswith("connection closed")
            print(f"  {name:24s} -> {status}")
        health = get(port, "/health")
        print(f"/health after the sweep: {health[0]} {health[1]}")
        failed |= health[0] != 200
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
